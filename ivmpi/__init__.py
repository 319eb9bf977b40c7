"""ivmpi: an mpi4py-compatible MPI transport over QEMU ivshmem shared memory."""
from ._version import __version__
from .errors import (IvmpiError, RegionError, BoundsError, CorruptRegionError,
                     PeerError, IvmpiTimeoutError)

__all__ = ["__version__", "IvmpiError", "RegionError", "BoundsError",
           "CorruptRegionError", "PeerError", "IvmpiTimeoutError", "Region"]


def __getattr__(name):
    # Imported lazily so that `import ivmpi` stays cheap and does not start MPI.
    if name == "Region":
        from .region import Region
        return Region
    if name == "MPI":
        import importlib
        return importlib.import_module(".MPI", __name__)
    if name == "Comm":
        from .comm import Comm
        return Comm
    raise AttributeError(f"module 'ivmpi' has no attribute {name!r}")
