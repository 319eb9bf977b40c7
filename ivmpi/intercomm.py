"""Intercommunicators of ivmpi: point-to-point between two groups through the region.

An ``Intercomm`` is mpi4py's Intercomm carrying the library's
intercommunicator over the same processes, as every ivmpi communicator
carries a library handle.  Its point-to-point calls (all modes, probes,
matched probes, requests) travel through the region: peers are the ranks of
the *remote* group, and a message's source is its sender's rank there, as
MPI defines.  Collectives on an intercommunicator (rooted with ``MPI.ROOT``
and ``PROC_NULL``, or all-to-all between the groups) and its nonblocking
collectives are the library's calls on the handle.  ``Merge`` gives an
ivmpi intracommunicator, through the region again.

The library makes every new intercommunicator (``Create_intercomm``,
``Create_from_groups``, ``Dup``, ``Split``, ``Create``): it knows both
groups and their order.  ivmpi reads the groups from it and has the members
of both agree a context id, so nothing is decided twice.  In standalone mode
no library spans the job, so intercommunicators are refused there.
"""
from .lib import MPI as _MPI

from . import comm as _comm
from .request import MPIError

COMM_NULL = _MPI.COMM_NULL


def _refuse_standalone(what):
    if _comm._standalone():
        raise MPIError(_MPI.ERR_UNSUPPORTED_OPERATION,
                       f"{what}: intercommunicators are not available in standalone mode "
                       f"(IVMPI_RANK/IVMPI_SIZE, no MPI launcher): ivmpi takes their groups "
                       f"and collectives from the MPI library, which does not span this job; "
                       f"start the job with mpirun to use them")


def _world_ranks(group):
    try:
        return _comm._world_ranks_of(group)
    finally:
        group.Free()


def from_library(engine, handle):
    """ivmpi's intercommunicator over the library's intercommunicator handle
    (an mpi4py Intercomm, or COMM_NULL), collective over both groups."""
    if handle == COMM_NULL:
        return COMM_NULL
    local = _world_ranks(_MPI.Comm.Get_group(handle))
    remote = _world_ranks(_MPI.Intercomm.Get_remote_group(handle))
    # Every member of both groups agrees the context among them all; the
    # temporary communicator's own context depends on the member set only.
    members = sorted(local + remote)
    if not engine.shares_region(members):
        # Members in several regions (docs/routing.md) agree through the
        # handle: the first allreduce gives each side the other side's
        # largest value, the second the largest of all.
        other = _MPI.Intercomm.allreduce(handle, engine.next_context, op=_MPI.MAX)
        context = _MPI.Intercomm.allreduce(handle, max(other, engine.next_context), op=_MPI.MAX)
        engine.next_context = context + 2
        return Intercomm._create(engine, remote, context, handle, local_ranks=local)
    temp = _comm.Intracomm._create(engine, members, _comm.Comm._reserved_context(None, members),
                                   hidden=True)
    context = temp._agree_context()
    temp.Free()
    return Intercomm._create(engine, remote, context, handle, local_ranks=local)


def create_intercomm(comm, local_leader, peer_comm, remote_leader, tag):
    _refuse_standalone("Create_intercomm")
    comm._check_live()
    handle = _MPI.Intracomm.Create_intercomm(comm, local_leader, peer_comm, remote_leader, tag)
    return from_library(comm._engine, handle)


def _library_call(name):
    method = getattr(_MPI.Comm, name)

    def call(self, *args, **kwargs):
        return method(self, *args, **kwargs)
    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"mpi4py's {name}: the library's call on the intercommunicator's handle."
    return call


def _new_intercomm(name):
    method = getattr(_MPI.Comm, name)

    def call(self, *args, **kwargs):
        self._check_live()
        return from_library(self._engine, method(self, *args, **kwargs))
    call.__name__ = call.__qualname__ = name
    return call


class Intercomm(_comm.Comm, _MPI.Intercomm):
    """An intercommunicator: point-to-point through the region between the
    local and the remote group; collectives are the library's."""

    @classmethod
    def Create_from_groups(cls, local_group, local_leader, remote_group, remote_leader,
                           stringtag="org.mpi4py", info=None, errhandler=None):
        from . import world
        _refuse_standalone("Create_from_groups")
        handle = _MPI.Intercomm.Create_from_groups(
            local_group, local_leader, remote_group, remote_leader, stringtag,
            _MPI.INFO_NULL if info is None else info, errhandler)
        return from_library(world.get_world()._engine, handle)

    def Merge(self, high=False):
        self._check_live()
        handle = _MPI.Intercomm.Merge(self, high)
        # The library orders the union (high decides which group comes first);
        # ivmpi's ranks follow its order.
        members = _world_ranks(_MPI.Comm.Get_group(handle))
        return self._new_comm_among(members, handle)

    Dup = _new_intercomm("Dup")
    Clone = Dup
    Split = _new_intercomm("Split")
    Create = _new_intercomm("Create")

    def Dup_with_info(self, info):
        return self.Dup(info)

    def Idup(self, info=None):
        # Completes at once: the context agreement is a blocking collective.
        return self.Dup(info), _comm.Request(self, None, what="Idup")

    def Idup_with_info(self, info):
        return self.Idup(info)

    def Split_type(self, split_type, key=0, info=None):
        return from_library(self._engine, _MPI.Comm.Split_type(
            self, split_type, key, _MPI.INFO_NULL if info is None else info))

    def Create_group(self, group, tag=0):
        return from_library(self._engine, _MPI.Comm.Create_group(self, group, tag))


class _Absent:
    """An attribute mpi4py's Intercomm does not have (the scans are
    intracommunicator calls): hasattr() is False, as there."""

    def __init__(self, name):
        self.name = name

    def __get__(self, obj, cls=None):
        raise AttributeError(f"type object 'Intercomm' has no attribute {self.name!r}")


# Collectives on an intercommunicator are the library's (ivmpi's region
# algorithms are for one group).
for _name in ("Barrier", "Bcast", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather",
              "Allgatherv", "Alltoall", "Alltoallv", "Reduce", "Allreduce",
              "Reduce_scatter_block", "Reduce_scatter", "Scan", "Exscan",
              "barrier", "bcast", "gather", "scatter", "allgather", "alltoall", "reduce",
              "allreduce", "scan", "exscan"):
    setattr(Intercomm, _name,
            _library_call(_name) if hasattr(_MPI.Intercomm, _name) else _Absent(_name))
del _name

_comm._FAST_CLASSES.add(Intercomm)
