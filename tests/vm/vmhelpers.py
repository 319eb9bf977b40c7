"""Helpers for the tests under tests/vm (imported by them; not a test module)."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
# Guests boot in a few seconds, but guests on emulated cores share two real
# cores with everything else: generous limits, still bounded.
GUEST_TIMEOUT = float(os.environ.get("IVMPI_VM_TIMEOUT", "240"))


def guest_script(name):
    """Path of a script under tests/vm/ that runs inside a guest."""
    return os.path.join(HERE, name)


def describe(results):
    """All guests' consoles, for assertion messages."""
    return "\n".join(f"--- {r.name}: exit {r.returncode} ---\n{r.console[-5000:]}"
                     for r in results)
