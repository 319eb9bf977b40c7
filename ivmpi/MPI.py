"""Drop-in replacement for ``mpi4py.MPI``.

``from ivmpi import MPI`` gives every name of mpi4py's MPI module
(datatypes, ops, constants, Status, Wtime, ...) with COMM_WORLD and
COMM_SELF replaced by ivmpi communicators and Comm/Intracomm/Topocomm/
Cartcomm/Graphcomm/Distgraphcomm/Request/Prequest/Message by ivmpi's classes, so a program written for mpi4py runs unchanged.

COMM_WORLD starts the job the first time it is used, not at import.
"""
from .lib import MPI as _mpi

from . import world as _world

# Everything mpi4py exports, first; ivmpi's own classes then take over.
for _name in dir(_mpi):
    if not _name.startswith("__"):
        globals()[_name] = getattr(_mpi, _name)

# Imported after the loop above, which would otherwise overwrite them with
# mpi4py's classes of the same names.
from .comm import TAG_UB as _TAG_UB, Comm, Group, Intracomm  # noqa: E402
from .request import (MESSAGE_NO_PROC, MESSAGE_NULL, REQUEST_NULL, Message,  # noqa: E402
                      MPIError, Prequest, Request)
from .topocomm import Cartcomm, Distgraphcomm, Graphcomm, Topocomm  # noqa: E402
from .intercomm import Intercomm  # noqa: E402
from .io import File  # noqa: E402
Exception = _mpi.Exception
IvmpiMPIError = MPIError

_LAZY = {"COMM_WORLD": _world.get_world, "COMM_SELF": _world.get_self}
del globals()["COMM_WORLD"], globals()["COMM_SELF"]


def __getattr__(name):
    # COMM_WORLD/COMM_SELF are built on first use, so that importing this
    # module never starts a job by itself.
    factory = _LAZY.get(name)
    if factory is None:
        raise AttributeError(f"module 'ivmpi.MPI' has no attribute {name!r}")
    value = factory()
    globals()[name] = value
    return value


def Alloc_mem(size, info=None):
    """A buffer inside the region: large sends from it skip the sender's copy."""
    return _world.get_world().Alloc_mem(size, info)


def Free_mem(mem):
    _world.get_world().Free_mem(mem)


def Get_processor_name():
    return _mpi.Get_processor_name()


_COMMCTX = {}   # context id -> [private duplicate, next tag]


def _commctx_intra(comm):
    """mpi4py's private duplicate of an intracommunicator and a fresh tag on
    it (mpi4py.util.pkl5 moves its collectives there): the duplicate is made
    once per communicator, collectively, and tags follow the same sequence
    on every rank."""
    if not isinstance(comm, Comm):
        return _mpi._commctx_intra(comm)
    comm._check_live()
    entry = _COMMCTX.get(comm._ctx)
    if entry is None:
        entry = _COMMCTX[comm._ctx] = [comm.Dup(), 0]
    tag = entry[1]
    entry[1] = (tag + 1) % (_TAG_UB + 1)
    return entry[0], tag


# Thread support: ivmpi's engine takes a lock around its own work (see
# docs/api.md, "Threads"), so it supports MPI_THREAD_MULTIPLE, and provides
# the level the library underneath was initialized with (mpi4py asks for
# MULTIPLE unless mpi4py.rc.thread_level says otherwise).
_IVMPI_THREAD_LEVEL = _mpi.THREAD_MULTIPLE


def Query_thread():
    return min(_mpi.Query_thread(), _IVMPI_THREAD_LEVEL)


def Init_thread(required=_mpi.THREAD_MULTIPLE):
    return min(_mpi.Init_thread(required), _IVMPI_THREAD_LEVEL)


def Is_thread_main():
    return _mpi.Is_thread_main()


# One-sided communication through the region (imported last: it builds on
# the communicator classes above).
from .win import Win  # noqa: E402
