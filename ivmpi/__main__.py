"""`python -m ivmpi` runs the `ivmpi` command."""
import sys

from .cli import main

sys.exit(main())
