"""Hierarchical collectives for communicators that span several regions.

A communicator whose members sit in several node groups (docs/routing.md)
runs a blocking collective in two levels, as Open MPI's HAN and MVAPICH2
do: inside each group through the region, with ivmpi's own collectives on a
node communicator (the members of this process's group, in the
communicator's rank order), and between groups through the MPI library, on
a communicator of one leader per group (the group's lowest rank; leaders
ordered by rank).  Bcast, for instance, is a Bcast in the root's group, a
Bcast among the leaders, then a Bcast in every other group; Allreduce a
Reduce to each leader, an Allreduce among leaders, a Bcast in each group.
Only the leaders call the library, once per collective, with one group's
worth of data.

The two communicators are made once per communicator, in its first
collective that has a two-level form (every member makes that call, in the
same order as the others), and freed with it (LibraryCollectives.free).

Each collective decides between the two levels and the library's call on
the whole communicator (flat) from what is the same on every member: the
communicator's groups, the root, the op and (for reductions, whose
datatype MPI requires to be the same everywhere) the datatype.  Flat:
  - groups of one rank each, or the two levels off for the communicator
    (then no sub-communicator is made): by default where all of its ranks
    run on one kernel (default_for), with IVMPI_HIERARCHY=0, or after
    hierarchy.enable(comm, False);
  - a non-commutative op (user op, callable of an object reduction) when
    some group's ranks are not consecutive: the two levels keep rank order
    only when every group is a run of consecutive ranks;
  - reductions over a derived datatype with holes; Allgather when some
    group's ranks are not consecutive;
  - a root out of range, arguments that do not bind, or buffer specs that
    do not parse or agree (mpi4py's checks, made before either level): the
    library reports the error on every rank;
  - every other collective (nonblocking, persistent, v-forms, alltoall,
    scans, neighbourhood ones).
"""
import os

import numpy as np

from .lib import MPI as _MPI
from .buffers import (_TYPEDICT, is_in_place, parse_send, parse_recv, _split_simple,
                      _as_datatype, has_holes)

_IN_PLACE = _MPI.IN_PLACE
_SUM = _MPI.SUM
_UNDEFINED = _MPI.UNDEFINED
_Op = _MPI.Op

# Returned by a two-level collective that leaves the call to the library.
FLAT = object()

# Tag of the node communicator's own point-to-point messages (a reduction's
# or gather's result handed from a group's leader to a root that is not
# it); nothing else uses that communicator's point-to-point.
_TAG_TO_ROOT = 1


def _setting(text):
    """IVMPI_HIERARCHY: 1 (on), 0 (off), or unset/auto (None: by kernels)."""
    text = (text or "").strip().lower()
    if text in ("1", "yes", "on", "true"):
        return True
    if text in ("0", "no", "off", "false"):
        return False
    return None


# True or False: forced on or off for every communicator; None: on where
# the groups do not all run on one kernel (default_for).
ENABLED = _setting(os.environ.get("IVMPI_HIERARCHY"))


def default_for(comm):
    """Do comm's collectives take two levels unless told otherwise?  Where
    all of its ranks run on one kernel (simulated hosts: regions of one
    machine), the library reaches every rank through its own shared memory
    and its flat call is quicker than splitting it (docs/routing.md);
    where they run on several (other machines, VMs), the library's path
    between groups is a network, and one leader per group crossing it pays.
    The same on every member: the kernels were exchanged at start-up."""
    if ENABLED is not None:
        return ENABLED
    from . import world
    kernels = world._kernels
    if not kernels:
        return False
    known = {kernels[w] for w in comm._ranks if 0 <= w < len(kernels)} - {None}
    return len(known) > 1


class Hierarchy:
    """The two levels of one communicator spanning groups.

    groups        the communicator's ranks by group, each in rank order;
                  groups ordered by their lowest rank (= leader order)
    group_of      communicator rank -> index of its group
    node_rank_of  communicator rank -> its rank in its group
    mine          this process's group
    node          ivmpi communicator over this process's group (region)
    node_size     its size
    leaders       the library's communicator of the groups' lowest ranks
                  (a plain mpi4py one); None on the other ranks
    consecutive   every group is a run of consecutive ranks
    """

    def __init__(self, comm, groups):
        from .comm import Intracomm
        self.groups = groups
        self.group_of, self.node_rank_of = {}, {}
        for g, members in enumerate(groups):
            for i, r in enumerate(members):
                self.group_of[r] = g
                self.node_rank_of[r] = i
        rank = comm.Get_rank()
        self.rank = rank
        self.size = comm.Get_size()
        self.mine = self.group_of[rank]
        self.consecutive = all(m == list(range(m[0], m[0] + len(m))) for m in groups)
        leader = self.node_rank_of[rank] == 0
        # Split is collective over comm (its agreement goes through the
        # library on comm's handle, never through these collectives).
        self.node = Intracomm.Split(comm, self.mine, rank)
        self.node_size = self.node.Get_size()
        handle = _MPI.Intracomm.fromhandle(comm.handle)
        leaders = _MPI.Intracomm.Split(handle, 0 if leader else _UNDEFINED, rank)
        self.leaders = leaders if leader else None
        self._runs_key = self._runs = None

    def runs(self, count, base):
        """(counts, displs) of the groups' runs of blocks of count elements
        from element base, as the leaders' Allgatherv takes them (the last
        layout kept: a program repeats its calls)."""
        key = (count, base)
        if self._runs_key != key:
            self._runs = ([len(m) * count for m in self.groups],
                          [base + m[0] * count for m in self.groups])
            self._runs_key = key
        return self._runs

    def free(self):
        if self.node is not None:
            self.node.Free()
            self.node = None
        if self.leaders is not None:
            self.leaders.Free()
            self.leaders = None


def groups_of(comm):
    """comm's ranks by node group (each in rank order, groups by lowest rank)."""
    from . import world
    group_of_world = {w: g for g, members in enumerate(world._groups) for w in members}
    by_group = {}
    for r, w in enumerate(comm._ranks):
        by_group.setdefault(group_of_world[w], []).append(r)
    return sorted(by_group.values(), key=lambda m: m[0])


def worth_it(groups):
    """Two levels pay only when some group has several ranks and there are
    several groups (one group: the communicator takes the region anyway)."""
    return 1 < len(groups) < sum(len(m) for m in groups)


def enable(comm, on=True):
    """Turn the two levels on or off for comm (and its copies); call it on
    every member alike, between collectives.  The sub-communicators, if
    made, stay until comm is freed."""
    from .routing import LibraryCollectives
    coll = comm._coll
    if isinstance(coll, LibraryCollectives):
        coll.enabled = bool(on)


def stats(comm):
    """What this process's collectives on comm did: ``{"groups": [...],
    "leader": bool or None, "two_level": {name: calls}, "flat": {name: calls},
    "leader_calls": calls made on the leaders' library communicator,
    "node_calls": calls made on the node communicator}``.  None for a
    communicator that does not span groups."""
    from .routing import LibraryCollectives
    coll = comm._coll
    if not isinstance(coll, LibraryCollectives):
        return None
    h = coll.built if isinstance(coll.built, Hierarchy) else None
    return {"groups": groups_of(comm),
            "leader": None if h is None else h.leaders is not None,
            "two_level": dict(coll.two_level), "flat": dict(coll.flat),
            "leader_calls": coll.leader_calls, "node_calls": coll.node_calls}


# --- helpers -----------------------------------------------------------------------------

def _root_ok(h, root):
    return type(root) is int and 0 <= root < h.size or (
        hasattr(root, "__index__") and 0 <= root.__index__() < h.size)


def _commutes(op):
    return isinstance(op, _Op) and op.Is_commutative()


def _order_ok(h, op):
    """Can the two levels combine with op and give the flat result?"""
    return h.consecutive or _commutes(op)


def _plain_datatype(spec):
    """False for a spec whose datatype is derived with holes (reductions
    over those stay flat: the library refuses some, orders others its way)."""
    if is_in_place(spec):
        return True
    try:
        datatype = _split_simple(spec)[3]
        if datatype is None:
            return True
        datatype = _as_datatype(datatype)
        return datatype.is_predefined or not has_holes(datatype)
    except Exception:
        return False


def _pair_ok(sendbuf, recvbuf):
    """Do a reduction's send and receive specs parse and agree (mpi4py's
    checks: same datatype, same count)?  Checked before any step, so that
    arguments the library refuses on every rank go flat on every rank and
    get the library's error there, instead of failing in one level on some
    ranks only."""
    try:
        recv = parse_recv(recvbuf)
        if is_in_place(sendbuf):
            return True
        send = parse_send(sendbuf)
        return send.datatype == recv.datatype and send.count == recv.count
    except Exception:
        return False


def _send_ok(sendbuf):
    try:
        parse_send(sendbuf)
        return True
    except Exception:
        return False


def _array_of(spec):
    """The library datatype of a spec that is a bare C-contiguous numpy
    array of a predefined type in native byte order (the usual argument),
    read from its dtype; None for anything else.  Such a spec needs none
    of the parsing below, which costs microseconds a call, and with more
    ranks than cores every rank's microseconds add up in turn."""
    if type(spec) is not np.ndarray or not spec.flags.c_contiguous:
        return None
    dtype = spec.dtype
    return _TYPEDICT.get(dtype.char) if dtype.isnative else None


def _same_arrays(sendbuf, recvbuf, in_place):
    """Are a reduction's send and receive specs bare arrays (_array_of) of
    one datatype and size (IN_PLACE: the receive one is)?"""
    datatype = _array_of(recvbuf)
    if datatype is None:
        return False
    if in_place:
        return True
    return _array_of(sendbuf) is datatype and sendbuf.size == recvbuf.size


def _scratch_like(spec):
    """[buffer, count, datatype] of the same shape as the data of spec."""
    buf = parse_send(spec)
    return [np.empty(buf.nbytes, np.uint8), buf.count, buf.datatype]


# --- the collectives (each one: h, comm, then mpi4py's arguments) ----------------------------

def Bcast(c, h, buf, root=0):
    if not _root_ok(h, root):
        return FLAT
    if _array_of(buf) is None:
        try:
            (parse_send if h.rank == root else parse_recv)(buf, holes=True)
        except Exception:
            return FLAT     # the library reports it
    root_group = h.group_of[root]
    if root_group == h.mine:
        if h.node_size > 1:
            c.node_calls += 1
            h.node.Bcast(buf, h.node_rank_of[root])
        if h.leaders is not None:
            c.leader_calls += 1
            h.leaders.Bcast(buf, root_group)
    else:
        if h.leaders is not None:
            c.leader_calls += 1
            h.leaders.Bcast(buf, root_group)
        if h.node_size > 1:
            c.node_calls += 1
            h.node.Bcast(buf, 0)


def bcast(c, h, obj, root=0):
    if not _root_ok(h, root):
        return FLAT
    root_group = h.group_of[root]
    if root_group == h.mine:
        if h.node_size > 1:
            c.node_calls += 1
            obj = h.node.bcast(obj, h.node_rank_of[root])
        if h.leaders is not None:
            c.leader_calls += 1
            obj = h.leaders.bcast(obj, root_group)
    else:
        if h.leaders is not None:
            c.leader_calls += 1
            obj = h.leaders.bcast(None, root_group)
        if h.node_size > 1:
            c.node_calls += 1
            obj = h.node.bcast(obj, 0)
    return obj


def Allreduce(c, h, sendbuf, recvbuf, op=_SUM):
    in_place = is_in_place(sendbuf)
    if not _order_ok(h, op) or not _same_arrays(sendbuf, recvbuf, in_place) and (
            not _plain_datatype(recvbuf if in_place else sendbuf)
            or not _pair_ok(sendbuf, recvbuf)):
        return FLAT
    alone = h.node_size == 1
    if not alone:
        # Each group's partial result into its leader's receive buffer.
        c.node_calls += 2
        if h.leaders is not None:
            h.node.Reduce(_IN_PLACE if in_place else sendbuf, recvbuf, op, 0)
        else:
            h.node.Reduce(recvbuf if in_place else sendbuf, None, op, 0)
    if h.leaders is not None:
        c.leader_calls += 1
        h.leaders.Allreduce(_IN_PLACE if in_place or not alone else sendbuf, recvbuf, op)
    if not alone:
        h.node.Bcast(recvbuf, 0)


def Reduce(c, h, sendbuf, recvbuf, op=_SUM, root=0):
    if not _root_ok(h, root):
        return FLAT
    am_root = h.rank == root
    in_place = am_root and is_in_place(sendbuf)
    mine = recvbuf if in_place else sendbuf      # this rank's contribution
    if not _order_ok(h, op):
        return FLAT
    # (The receive spec counts at the root only, as in the library.)
    if not (_same_arrays(sendbuf, recvbuf, in_place) if am_root else _array_of(sendbuf)) and (
            not _plain_datatype(mine)
            or not (_pair_ok(sendbuf, recvbuf) if am_root else _send_ok(sendbuf))):
        return FLAT
    root_group = h.group_of[root]
    root_leads = h.node_rank_of[root] == 0
    leader = h.leaders is not None
    alone = h.node_size == 1
    # Where the leader keeps its group's partial result.
    partial = mine
    if leader and not alone:
        partial = recvbuf if am_root else _scratch_like(mine)
    if not alone:
        c.node_calls += 1
        if leader:
            h.node.Reduce(_IN_PLACE if in_place else sendbuf, partial, op, 0)
        else:
            h.node.Reduce(mine, None, op, 0)
    if leader:
        c.leader_calls += 1
        if h.mine == root_group:
            # Into the root's buffer if the root leads; else into the
            # leader's partial buffer, handed to the root below.
            if am_root:
                h.leaders.Reduce(_IN_PLACE if in_place or not alone else sendbuf, recvbuf, op,
                                 root_group)
            else:
                h.leaders.Reduce(_IN_PLACE, partial, op, root_group)
        else:
            h.leaders.Reduce(partial, None, op, root_group)
    if h.mine == root_group and not root_leads:
        c.node_calls += 1
        if leader:
            h.node.Send(partial, h.node_rank_of[root], _TAG_TO_ROOT)
        elif am_root:
            h.node.Recv(recvbuf, 0, _TAG_TO_ROOT)


def _object_order_ok(h, op):
    return h.consecutive or _commutes(op)


def allreduce(c, h, sendobj, op=_SUM):
    if not _object_order_ok(h, op):
        return FLAT
    partial = sendobj
    if h.node_size > 1:
        c.node_calls += 2
        partial = h.node.reduce(sendobj, op, 0)
    if h.leaders is not None:
        c.leader_calls += 1
        partial = h.leaders.allreduce(partial, op)
    if h.node_size > 1:
        partial = h.node.bcast(partial, 0)
    return partial


def reduce(c, h, sendobj, op=_SUM, root=0):
    if not _root_ok(h, root) or not _object_order_ok(h, op):
        return FLAT
    root_group = h.group_of[root]
    partial = sendobj
    if h.node_size > 1:
        c.node_calls += 1
        partial = h.node.reduce(sendobj, op, 0)
    if h.leaders is not None:
        c.leader_calls += 1
        partial = h.leaders.reduce(partial, op, root_group)
    return _hand_to_root(c, h, partial, root)


def _hand_to_root(c, h, value, root):
    """An object result, at the root group's leader, to the root (the
    root's value; None on every other rank)."""
    if h.mine == h.group_of[root] and h.node_rank_of[root] != 0:
        c.node_calls += 1
        if h.leaders is not None:
            h.node.send(value, h.node_rank_of[root], _TAG_TO_ROOT)
        elif h.rank == root:
            value = h.node.recv(None, 0, _TAG_TO_ROOT)
    return value if h.rank == root else None


def _in_rank_order(h, parts):
    """The list by communicator rank from one list per group."""
    out = [None] * h.size
    for members, values in zip(h.groups, parts):
        for r, value in zip(members, values):
            out[r] = value
    return out


def allgather(c, h, sendobj):
    part = [sendobj]
    if h.node_size > 1:
        c.node_calls += 2
        part = h.node.gather(sendobj, 0)
    full = None
    if h.leaders is not None:
        c.leader_calls += 1
        full = _in_rank_order(h, h.leaders.allgather(part))
    if h.node_size > 1:
        full = h.node.bcast(full, 0)
    return full


def gather(c, h, sendobj, root=0):
    if not _root_ok(h, root):
        return FLAT
    root_group = h.group_of[root]
    part = [sendobj]
    if h.node_size > 1:
        c.node_calls += 1
        part = h.node.gather(sendobj, 0)
    full = None
    if h.leaders is not None:
        c.leader_calls += 1
        parts = h.leaders.gather(part, root_group)
        if parts is not None:
            full = _in_rank_order(h, parts)
    return _hand_to_root(c, h, full, root)


def _recv_layout(h, recvbuf):
    """(buffer, count per rank, first element, datatype) of an Allgather
    receive spec, to name parts of it in the sub-collectives' specs."""
    buf, count, displ, datatype = _split_simple(recvbuf)
    if count is None or datatype is None:
        parsed = parse_recv(recvbuf, blocks=h.size, holes=True)
        count, datatype = parsed.count, parsed.datatype
    return buf, count, 0 if displ is None else displ, _as_datatype(datatype)


def Allgather(c, h, sendbuf, recvbuf):
    if not h.consecutive:
        return FLAT
    in_place = is_in_place(sendbuf)
    datatype = _array_of(recvbuf)
    if datatype is not None and recvbuf.size % h.size == 0 \
            and (in_place or _array_of(sendbuf) is not None):
        # Bare arrays: the layout read off them.
        buf, count, base = recvbuf, recvbuf.size // h.size, 0
        if not in_place and sendbuf.nbytes > count * recvbuf.itemsize:
            return FLAT
    else:
        try:
            recv = parse_recv(recvbuf, blocks=h.size)
            if not in_place and parse_send(sendbuf).nbytes > recv.nbytes // h.size:
                return FLAT
            buf, count, base, datatype = _recv_layout(h, recvbuf)
        except Exception:
            return FLAT     # the library reports it
    first = h.groups[h.mine][0]
    alone = h.node_size == 1
    if not alone:
        # The group's blocks to all of its members, where they belong.
        c.node_calls += 1
        h.node.Allgather(_IN_PLACE if in_place else sendbuf,
                         [buf, (count, base + first * count), datatype])
    if h.leaders is not None:
        # Each group's run of blocks to the other leaders.
        c.leader_calls += 1
        counts, displs = h.runs(count, base)
        h.leaders.Allgatherv(_IN_PLACE if in_place or not alone else sendbuf,
                             [buf, counts, displs, datatype])
    if not alone:
        # The other groups' blocks (before and after this group's run).
        end = first + h.node_size
        if first:
            c.node_calls += 1
            h.node.Bcast([buf, (first * count, base), datatype], 0)
        if end < h.size:
            c.node_calls += 1
            h.node.Bcast([buf, ((h.size - end) * count, base + end * count), datatype], 0)


# Barrier stays the library's call on the whole communicator: its messages
# go the same way as the point-to-point messages sent before it, so one
# sent to any rank before the barrier is there when the barrier ends, which
# programs count on (a probe right after a barrier).  Two levels would let a
# group's ranks go through the region while a library message to them was
# still on its way.
RUNS = {f.__name__: f for f in (Bcast, bcast, Allreduce, Reduce, allreduce, reduce, allgather,
                                gather, Allgather)}
