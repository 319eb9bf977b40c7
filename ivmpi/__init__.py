"""ivmpi: an mpi4py-compatible MPI transport over QEMU ivshmem shared memory."""
from ._version import __version__
from .errors import (IvmpiError, RegionError, BoundsError, CorruptRegionError,
                     PeerError, IvmpiTimeoutError)

__all__ = ["__version__", "IvmpiError", "RegionError", "BoundsError",
           "CorruptRegionError", "PeerError", "IvmpiTimeoutError", "Region", "alloc", "free",
           "path_to", "node_groups"]


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
    if name in ("path_to", "node_groups"):
        from . import routing
        return getattr(routing, name)
    raise AttributeError(f"module 'ivmpi' has no attribute {name!r}")


def alloc(shape, dtype="u1"):
    """A numpy array whose memory is inside the region (this rank's heap).

    Sends of large messages from it skip the sender's copy: the receiver
    copies straight out of the region.  Free it with ivmpi.free(array).
    """
    import numpy as np
    from .world import get_world
    dtype = np.dtype(dtype)
    count = int(np.prod(shape)) if np.ndim(shape) else int(shape)
    mem = get_world().Alloc_mem(count * dtype.itemsize)
    return np.frombuffer(mem, dtype=dtype, count=count).reshape(shape)


def free(array):
    """Give an array from ivmpi.alloc back to the region heap."""
    from .world import get_world
    get_world().Free_mem(array)
