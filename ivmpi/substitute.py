"""Make ``mpi4py.MPI`` mean ``ivmpi.MPI`` for an unmodified program.

``install()`` is what ``python -m ivmpi prog.py`` and ``IVMPI_MPI4PY=1``
(through the ``ivmpi-mpi4py.pth`` start-up hook) use.  Nothing is imported
eagerly: a finder waits for the first ``import mpi4py.MPI`` in the process,
loads the real extension module first (ivmpi reaches the MPI library
through it, whatever ``mpi4py.MPI`` names afterwards), then ivmpi's module,
and hands the latter to the importer under the name ``mpi4py.MPI``.  So
``import mpi4py.MPI``, ``from mpi4py import MPI``, ``from mpi4py.MPI import
COMM_WORLD`` and mpi4py's own ``mpi4py.util`` modules all see ivmpi.
"""
import importlib
import importlib.abc
import importlib.machinery
import os
import sys

ENV = "IVMPI_MPI4PY"


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the import of ``mpi4py.MPI`` (once) with ``ivmpi.MPI``."""

    def find_spec(self, name, path=None, target=None):
        if name != "mpi4py.MPI":
            return None
        sys.meta_path.remove(self)
        self.module = _load_ivmpi()
        # The real module is loaded and known to ivmpi; the importer now
        # records ivmpi's under the name being imported.
        sys.modules.pop("mpi4py.MPI", None)
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        pass


def _load_ivmpi():
    importlib.import_module("mpi4py.MPI")     # the real extension, first
    return importlib.import_module("ivmpi.MPI")


def installed():
    mod = sys.modules.get("mpi4py.MPI")
    return mod is not None and getattr(mod, "__name__", "") == "ivmpi.MPI"


def install():
    """From now on ``mpi4py.MPI`` is ivmpi's module in this process."""
    if installed() or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    if "mpi4py.MPI" in sys.modules:
        # Already imported (real): swap now.
        module = _load_ivmpi()
        sys.modules["mpi4py.MPI"] = module
        sys.modules["mpi4py"].MPI = module
        return
    sys.meta_path.insert(0, _Finder())


def install_if_requested():
    """The start-up hook: does nothing unless IVMPI_MPI4PY=1."""
    if os.environ.get(ENV, "") not in ("", "0"):
        install()
