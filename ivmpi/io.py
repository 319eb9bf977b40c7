"""MPI-IO on ivmpi communicators: the MPI library's own, over the same processes.

``File.Open(comm, ...)`` is mpi4py's call on the communicator's library
handle, which under a launcher spans the same processes in the same order
(docs/api.md), so collective file access, file views and shared file
pointers are the library's real MPI-IO.  In standalone mode the handle
spans this process only: opening a file collectively over several ranks
would silently give each rank a file of its own, so it is refused with an
error that says why.  A one-rank communicator needs no other process and
opens as usual.
"""
from .lib import MPI as _MPI

from .request import MPIError


def _check(comm, what):
    from .comm import Comm, _standalone
    if isinstance(comm, Comm) and "_engine" in comm.__dict__ and _standalone() \
            and comm.Get_size() > 1:
        raise MPIError(_MPI.ERR_UNSUPPORTED_OPERATION,
                       f"{what}: MPI-IO over a communicator of {comm.Get_size()} ranks is not "
                       f"available in standalone mode (IVMPI_RANK/IVMPI_SIZE, no MPI "
                       f"launcher): ivmpi leaves file access to the MPI library, which does "
                       f"not span this job; start the job with mpirun to use it")


class File(_MPI.File):
    """mpi4py's File; ``Open`` checks that the library spans the communicator."""

    @classmethod
    def Open(cls, comm, filename, amode=_MPI.MODE_RDONLY, info=_MPI.INFO_NULL):
        _check(comm, "File.Open")
        return cls(_MPI.File.Open(comm, filename, amode, info))
