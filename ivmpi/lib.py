"""The MPI library underneath: the real ``mpi4py.MPI`` module.

Every ivmpi module reaches mpi4py through ``from .lib import MPI``, never
``from mpi4py import MPI``: once a program runs with ivmpi substituted
(ivmpi.substitute), the latter names ivmpi's own module.
"""
import importlib
import sys


def _real_mpi4py():
    module = sys.modules.get("mpi4py.MPI")
    if module is not None and getattr(module, "__name__", "") == "ivmpi.MPI":
        return module._mpi
    return importlib.import_module("mpi4py.MPI")


MPI = _real_mpi4py()
