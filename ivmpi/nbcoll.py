"""Nonblocking and persistent collectives through the region.

``NonblockingCollectives`` is a base of ``ivmpi.Intracomm``: each method it
defines replaces the MPI library's call on the communicator's handle; a
call it does not define stays mpi4py's (the library's transport).

Each call checks and parses its arguments at once (so errors are raised
by the call, as mpi4py raises them) and describes the collective on this
rank as a list of steps (ivmpi._fastcopy.Schedule): sends and receives of
byte ranges grouped into rounds, and the local copies and combines between
rounds.  The steps follow the algorithm of the blocking collective
(ivmpi.collectives: same partners, same operand order, so results are bit
for bit the same).  A Schedule runs them in C: a message that fits the
ring goes out or comes in by the fast path, with no Python object per
message, and anything else through the engine.  A persistent collective
describes its steps once, at _init, and each Start runs them again; a
nonblocking one describes them at the call and runs them once.  Every
Wait/Test completes them, and the engine advances every schedule in
progress on each of its rounds of progress (Engine.schedules), so a rank
waiting on something else still plays its part in a collective its peers
are waiting for, as MPI's progress rule asks.

The step lists repeat the algorithms of ivmpi.collectives, which loops
over point-to-point calls instead: describing the blocking collectives by
the same steps (and running them with the same Schedule) would let both
share one description of each algorithm.

Messages travel on the communicator's hidden twin (the blocking
collectives' context), each collective with its own tag: NB_TAG_BASE plus
the number of nonblocking, persistent and neighbourhood collectives the
communicator has started.  All ranks start collectives in the same order,
so they agree on it; it never meets the blocking collectives' tags (below
100) nor those of another outstanding collective.  A persistent collective
draws its tag at _init and reuses it at every Start: one round of it always
ends on this rank before the next starts, and messages between two ranks
keep their order, so rounds cannot mix.

Derived datatypes with holes are packed into a contiguous staging buffer
of their basic elements at each start and unpacked from it when the
collective completes (the prologue and epilogue of its Schedule).
"""
import functools

from .lib import MPI as _MPI

from ._fastcopy import (SCHED_CALL, SCHED_COMBINE, SCHED_COPY, SCHED_FENCE, SCHED_RECV,
                        SCHED_SEND, SMALL_OPS, Channel, Combine, buffer_span, op_applies,
                        pair_segment, prefix_chained, prefix_segment, set_collective_request_types,
                        set_schedule_errors,
                        single_copy_from, single_copy_to, small_type_codes, stream_segment)
from .buffers import (BOTTOM, _as_datatype, _memory, datatype_extent, has_holes, is_in_place,
                      packed_simple, packed_vector, parse_recv, parse_send, parse_vbuf)
from .collectives import _HOLE_ROLES as _BLOCKING_HOLE_ROLES
from .collectives import (PIPELINE_MIN_BYTES, Collectives, check_op, reduce_blocks,
                          streams_reduction)
from .datatypes import layout
from .errors import BufferSpecError
from .request import MPIError, Prequest, Request
from .staging import interleaved, staged

NB_TAG_BASE = 1 << 25
_NB_TAG_MASK = (1 << 30) - 1     # the largest tag stays below 2**31 - 1

SEND, RECV, FENCE, COPY, COMBINE, CALL = (SCHED_SEND, SCHED_RECV, SCHED_FENCE, SCHED_COPY,
                                          SCHED_COMBINE, SCHED_CALL)
_F = (FENCE,)

_SUM = _MPI.SUM
_INFO_NULL = _MPI.INFO_NULL
_IN_PLACE = _MPI.IN_PLACE
_Op = _MPI.Op
_BYTE = _MPI.BYTE
_EMPTY = memoryview(bytearray(0))

set_schedule_errors(MPIError, _MPI.ERR_TRUNCATE)

# The predefined ops and datatypes a schedule combines in C.
_OP_CODES = {getattr(_MPI, name).handle: code for name, code in SMALL_OPS.items()}
_TYPE_CODES = small_type_codes(_MPI)


def combiner(op, datatype):
    """step(inmem, inoutmem, count): the step that makes inout = in (op) inout,
    MPI's Reduce_local order."""
    code = _OP_CODES.get(op.handle)
    typ = _TYPE_CODES.get(datatype.handle)
    if code is not None and typ is not None and op_applies(code, typ):
        return lambda inmem, inoutmem, count: (COMBINE, code, typ, inoutmem, inmem, count)
    reduce_local = op.Reduce_local
    return lambda inmem, inoutmem, count: (
        CALL, functools.partial(reduce_local, [inmem, count, datatype],
                                [inoutmem, count, datatype]))


def fast_combiner(op, datatype):
    """combiner's step, as a CALL of the vectorized loops of ivmpi._prefix
    for the ops and types they know (the prefix and reduce-scatter steps)."""
    code = _OP_CODES.get(op.handle)
    typ = _TYPE_CODES.get(datatype.handle)
    if code is not None and typ is not None and op_applies(code, typ):
        return lambda inmem, inoutmem, count: (CALL, Combine(code, typ, inmem, inoutmem, count))
    return combiner(op, datatype)


def _scratch(nbytes):
    return memoryview(bytearray(nbytes))


# Calls whose buffers are all numpy arrays, bytearrays or bytes of at most
# this many bytes (bare or in list specs) reuse the schedule of the
# previous call of their kind with the same arguments (Channel.restart).
# Describing a schedule anew costs 10-30 us of Python, as much as moving
# 64 KiB blocks, and a staged schedule allocates its heap buffer anew: the
# limit covers 64 KiB blocks up to 64 ranks and 1 MiB blocks up to 4.  The
# cache keeps one call's buffers (and heap buffer) per kind alive, no more.
CACHE_MAX_BYTES = 4 << 20


def channel_of(comm):
    """The Channel of a communicator's collectives (shared by its copies)."""
    coll = comm._coll
    if coll is not None and not comm._freed:
        channel = coll.__dict__.get("nb_channel")
        if channel is not None:
            return channel
    comm._check_live()
    coll = comm._collectives
    channel = getattr(coll, "nb_channel", None)
    if channel is None:
        channel = coll.nb_channel = Channel(coll.p2p, NB_TAG_BASE, _NB_TAG_MASK, CACHE_MAX_BYTES,
                                            _IN_PLACE, _Op, _MPI.Datatype, CollectiveRequest)
    return channel


class CollectiveRequest(Request):
    """The request of a nonblocking collective: Wait runs the schedule's own
    wait (fast paths first, see Schedule.wait); everything else is Request's."""
    __slots__ = ()

    def Wait(self, status=None):
        op = self._op
        if op is not None:
            if not op._finished:
                op.wait(self)
            if status is None and op.error is None:
                self._op = None
                return True
        self._finish(status, decode=False)
        return True

    def wait(self, status=None):
        self.Wait(status)


class CollectivePrequest(Prequest):
    """The request of a persistent collective: each Start runs the schedule again."""
    __slots__ = ()

    def __init__(self, comm, schedule, what):
        Prequest.__init__(self, comm, schedule.start, what)

    def Start(self):
        start = self._start
        if start is None or self._op is not None:
            Prequest.Start(self)        # raises the error
        self._op = start()

    Wait = CollectiveRequest.Wait
    wait = CollectiveRequest.wait


# Their tests are Request's, which the C tests take for these types too.
set_collective_request_types(CollectiveRequest, CollectivePrequest)


def operator_index(value):
    import operator
    try:
        value = operator.index(value)
    except TypeError:
        raise BufferSpecError(f"expected an integer, got {type(value).__name__}") from None
    if value < 0:
        raise BufferSpecError(f"negative count or displacement {value}")
    return value


def wblocks(spec, n, recv, fill=False):
    """The n blocks of an Alltoallw-style spec: [buf, counts, displs,
    datatypes] with displacements in bytes (MPI.BOTTOM: absolute addresses),
    [buf, (counts, displs), datatypes], or [buf, datatypes].  Returns
    (blocks, packs, unpacks): a block whose datatype has holes is a staging
    buffer, packed (for a send, or a receive buffer also read: fill) and
    unpacked (for a receive) by the calls listed."""
    from ._interop import _host_memory
    from .topocomm import _ints
    items = len(spec)
    if items == 2:
        buf, types = spec
        counts, displs = [1] * n, [0] * n
    elif items == 3:
        buf, (counts, displs), types = spec
    elif items == 4:
        buf, counts, displs, types = spec
    else:
        raise ValueError("message: expecting 2 to 4 items")
    if buf is _MPI.BOTTOM and (counts is None or displs is None):
        raise ValueError(f"message: BOTTOM requires {'counts' if counts is None else 'displs'}")
    if counts is None and displs is None:     # mpi4py's rule: one element of each type
        counts, displs = [1] * n, [0] * n
    counts, displs = _ints(counts, n), _ints(displs, n)
    if len(types) != n:
        raise ValueError(f"expecting {n} items, got {len(types)}")
    blocks, packs, unpacks = [], [], []
    if n == 0:
        return blocks, packs, unpacks
    bottom = buf is None or buf is BOTTOM
    whole = None if bottom else _memory(buf, recv, False)[0]
    for count, displ, datatype in zip(counts, displs, types):
        datatype = _as_datatype(datatype)
        if count and has_holes(datatype):
            lay = layout(datatype)
            if bottom:
                # Absolute addresses (a struct built from Get_address): the
                # bytes the elements reach, with the origin at address displ.
                first, end = lay.span(count)
                memory = _host_memory(displ + first, end - first, not recv, None)
                origin = -first
            else:
                memory, origin = whole, displ
            lay.check(count, len(memory), origin)
            staging = memoryview(bytearray(lay.size * count))
            if recv:
                unpacks.append(functools.partial(lay.scatter, staging, memory, origin, count))
            if not recv or fill:
                packs.append(functools.partial(lay.gather, memory, origin, count, staging))
            blocks.append(staging)
            continue
        nbytes = count * datatype_extent(datatype, holes_ok=True) if count else 0
        if bottom:
            blocks.append(_host_memory(displ, nbytes, not recv, None) if nbytes else _EMPTY)
            continue
        if displ < 0 or displ + nbytes > len(whole):
            raise BufferSpecError(f"block at byte {displ} of {nbytes} bytes runs past the "
                                  f"buffer ({len(whole)} bytes)")
        blocks.append(whole[displ:displ + nbytes])
    return blocks, packs, unpacks


# The roles of each collective's buffers are the blocking collectives' (see
# ivmpi.collectives), and Bcast's one buffer, which the blocking Bcast packs
# itself.
_HOLE_ROLES = {"Bcast": (None, "plain", None), **_BLOCKING_HOLE_ROLES}


def _pack_role(spec, role, n, writable, fill):
    if role == "vector":
        return packed_vector(spec, n, writable, fill)
    return packed_simple(spec, writable, n if role == "blocks" else 1, fill)


def unholed(name, sendbuf, recvbuf, n, is_root=True):
    """(sendbuf, recvbuf, prologue, epilogue): the buffer specs of collective
    `name` over n blocks, with datatypes with holes replaced by staging
    buffers packed by the prologue and unpacked by the epilogue."""
    if (type(sendbuf) is not list and type(sendbuf) is not tuple
            and type(recvbuf) is not list and type(recvbuf) is not tuple):
        return sendbuf, recvbuf, (), ()
    send_role, recv_role, at_root = _HOLE_ROLES[name]
    prologue, epilogue = [], []
    in_place = is_in_place(sendbuf)
    if send_role is not None and not in_place and (at_root != "send" or is_root):
        sendbuf, pack, _ = _pack_role(sendbuf, send_role, n, False, False)
        if pack is not None:
            prologue.append(pack)
    if recvbuf is not None and (at_root != "recv" or is_root):
        # In place, the receive buffer is read too (and holds every rank's
        # block for Reduce_scatter_block).  A Bcast root sends from it.
        role = "blocks" if in_place and name == "Reduce_scatter_block" else recv_role
        writable = not (name == "Bcast" and is_root)
        recvbuf, pack, unpack = _pack_role(recvbuf, role, n, writable, in_place or not writable)
        if pack is not None:
            prologue.append(pack)
        if unpack is not None:
            epilogue.append(unpack)
    return sendbuf, recvbuf, prologue, epilogue


# --- the steps of each collective ---------------------------------------------------
# Each returns the list of steps of this rank (ch: its Channel); the
# comments name the blocking algorithm (ivmpi.collectives) it follows.

def barrier_steps(ch):
    # Dissemination: round k talks to rank +/- 2**k.
    size, rank = ch.size, ch.rank
    steps = []
    distance = 1
    while distance < size:
        steps += [(RECV, (rank - distance) % size, _EMPTY),
                  (SEND, (rank + distance) % size, _EMPTY), _F]
        distance <<= 1
    return steps


def own_send(peer, mem):
    """A send of the caller's own bytes (not of bytes this schedule
    receives): a large one goes in one copy to a peer that copies from our
    memory (Schedule in ivmpi/_schedule.pxi)."""
    return (SEND, peer, mem, 0, True)


def bcast_steps(ch, mem, root):
    size, rank = ch.size, ch.rank
    if size == 1:
        return []
    vrank = (rank - root) % size
    steps = []
    if len(mem) >= PIPELINE_MIN_BYTES and size > 2:
        # As the blocking Bcast (Collectives._bcast_region): the root sends
        # every segment to every rank, out of its heap (each staged just
        # before it goes), so all copy it out at once; a chain through the
        # ranks would wait for each of them to be scheduled in turn.
        # A rank that copies from the root's memory takes all of it in one
        # message (Collectives._send_staged).
        segments = [mem[start:end] for start, end in _bcast_segments(len(mem))]
        if rank != root:
            if single_copy_from(ch.world[root]):
                return [(RECV, root, mem)]
            return [(RECV, root, seg) for seg in segments]
        readers = [j for j in range(size) if j != root and single_copy_to(ch.world[j])]
        steps += [(SEND, j, mem) for j in readers]
        dests = [None if j == root or j in readers else j for j in range(size)]
        for seg in segments:
            sending = staged(ch, [seg] * size, dests, steps)
            steps += [(SEND, j, sending[j]) for j in range(size) if dests[j] is not None]
        return steps
    # Binomial tree.
    mask = 1
    while mask < size:
        if vrank & mask:
            steps += [(RECV, (vrank - mask + root) % size, mem), _F]
            break
        mask <<= 1
    mask >>= 1
    while mask > 0:
        if vrank + mask < size:
            dest = (vrank + mask + root) % size
            steps.append(own_send(dest, mem) if rank == root else (SEND, dest, mem))
        mask >>= 1
    return steps


_bcast_segments = Collectives._segments


def scatter_steps(ch, blocks, recvmem, root):
    if ch.rank != root:
        return [(RECV, root, recvmem)]
    streams = []
    sending = staged(ch, blocks, list(range(ch.size)), streams)
    # Each large block staged just before it goes (ivmpi.staging); our own
    # block copied after the sends, while the ranks that copy theirs from
    # our memory do so.
    return interleaved(streams, [
        own_send(i, blocks[i]) if sending[i] is blocks[i] else (SEND, i, sending[i])
        for i in range(ch.size) if i != root]) + (
        [(COPY, recvmem, blocks[root])] if recvmem is not None else [])


def gather_steps(ch, sendmem, blocks, root):
    if ch.rank != root:
        return [own_send(root, sendmem)]
    steps = [(COPY, blocks[root], sendmem)] if sendmem is not None else []
    steps += [(RECV, i, blocks[i]) for i in range(ch.size) if i != root]
    return steps


def allgather_steps(ch, sendmem, blocks):
    # Every rank sends its block straight to every other: one round (the
    # blocking ring takes p-1; the result is the same bytes).
    size, rank = ch.size, ch.rank
    steps = [(COPY, blocks[rank], sendmem)] if sendmem is not None else []
    # Staged once (after the copy into place), read by every other rank.
    sending = staged(ch, [blocks[rank]] * size, list(range(size)), steps)
    for step in range(1, size):
        source, dest = (rank - step) % size, (rank + step) % size
        steps.append((RECV, source, blocks[source]))
        if sending[dest] is not blocks[rank]:
            steps.append((SEND, dest, sending[dest]))
        else:       # (the send buffer itself, when there is one: not just written)
            mine = sendmem if sendmem is not None and len(sendmem) == len(blocks[rank]) \
                else blocks[rank]
            steps.append(own_send(dest, mine))
    return steps


def alltoall_steps(ch, send_blocks, recv_blocks):
    # Every pair exchanges its blocks at once, in the pairwise order.
    size, rank = ch.size, ch.rank
    in_place = send_blocks is None
    steps, streams = [], []
    if not in_place:
        steps.append((COPY, recv_blocks[rank], send_blocks[rank]))
    # Large blocks go out of this rank's heap, each staged just before it
    # goes (ivmpi.staging); every send of the round precedes its receives.
    sending = staged(ch, recv_blocks if in_place else send_blocks, list(range(size)), streams)
    if in_place:
        # What was there is sent: all of it staged, and the blocks not
        # staged copied aside, before anything arrives.
        steps += streams
        streams = []
        send_blocks = list(sending)
        for k, block in enumerate(sending):
            if k != rank and block is recv_blocks[k]:
                copy = _scratch(len(block))
                steps.append((COPY, copy, block))
                send_blocks[k] = copy
    else:
        send_blocks = sending
    transfers = []
    for step in range(1, size):
        dest, source = (rank + step) % size, (rank - step) % size
        transfers += [(RECV, source, recv_blocks[source]), (SEND, dest, send_blocks[dest])]
    return steps + interleaved(streams, transfers)


def reduce_steps(ch, steps, data, count, datatype, op, root):
    """Binomial tree (Collectives._reduce_bytes): appends the steps, returns
    the buffer that holds the result at root (None elsewhere)."""
    size, rank = ch.size, ch.rank
    combine = combiner(op, datatype)
    acc, tmp = _scratch(len(data)), _scratch(len(data))
    steps.append((COPY, acc, data))
    base = root if op.Is_commutative() else 0
    vrank = (rank - base) % size
    mask = 1
    while mask < size:
        if vrank & mask:
            steps += [(SEND, (vrank - mask + base) % size, acc), _F]
            break
        if vrank + mask < size:
            steps += [(RECV, (vrank + mask + base) % size, tmp), _F,
                      combine(acc, tmp, count)]              # tmp = acc op tmp
            acc, tmp = tmp, acc
        mask <<= 1
    if base != root:
        if rank == base:
            steps += [(SEND, root, acc), _F]
        elif rank == root:
            steps += [(RECV, base, acc), _F]
    return acc if rank == root else None


def allreduce_steps(ch, data, recvmem, count, datatype, op):
    # Recursive doubling with the ranks beyond the largest power of two
    # folded into their even neighbours (Collectives.Allreduce).
    size, rank = ch.size, ch.rank
    if streams_reduction(ch.size, data, count, datatype, ch.engine.eager_limit):
        return region_allreduce_steps(ch, data, recvmem, count, datatype, op)
    combine = combiner(op, datatype)
    acc, tmp = _scratch(len(data)), _scratch(len(data))
    steps = [(COPY, acc, data)]
    pof2 = 1
    while pof2 * 2 <= size:
        pof2 *= 2
    extra = size - pof2
    if rank < 2 * extra:
        if rank % 2 == 0:
            steps += [(SEND, rank + 1, acc), _F]
            newrank = -1
        else:
            steps += [(RECV, rank - 1, tmp), _F, combine(tmp, acc, count)]   # acc = left op acc
            newrank = rank // 2
    else:
        newrank = rank - extra
    if newrank >= 0:
        mask = 1
        while mask < pof2:
            newpartner = newrank ^ mask
            partner = newpartner * 2 + 1 if newpartner < extra else newpartner + extra
            steps += [(SEND, partner, acc), (RECV, partner, tmp), _F]
            if newpartner < newrank:
                steps.append(combine(tmp, acc, count))     # acc = theirs op acc
            else:
                steps.append(combine(acc, tmp, count))     # tmp = acc op theirs
                acc, tmp = tmp, acc
            mask <<= 1
    if rank < 2 * extra:
        if rank % 2:
            steps += [(SEND, rank - 1, acc), _F]
        else:
            steps += [(RECV, rank + 1, acc), _F]
    steps.append((COPY, recvmem, acc))
    return steps


def region_allreduce_steps(ch, data, recvmem, count, datatype, op):
    """Large messages (Collectives._region_allreduce): the reduce-scatter of
    reduce_scatter_steps (each rank reduces one block of every input in
    rank order), then every rank's result block to every other rank in
    eager segments, segment k to all before segment k from all."""
    size, rank = ch.size, ch.rank
    extent, bounds, counts = reduce_blocks(len(data), count, size)
    data, out = memoryview(data), memoryview(recvmem)
    if len(out) != len(data):
        raise BufferSpecError(f"receive buffer of {len(out)} bytes for a result of "
                              f"{len(data)}")
    lo, hi = bounds[rank], bounds[rank + 1]
    # In place, the input is still read while the result block is written.
    target = _scratch(hi - lo) if _overlap(data, out) else out[lo:hi]
    steps = reduce_scatter_steps(ch, data, counts, datatype, extent, op, target)
    steps.append(_F)
    if not _same_start(target, out[lo:hi]):
        steps.append((COPY, out[lo:hi], target))
    eager = ch.engine.eager_limit
    segments = [stream_segment(bounds[j + 1] - bounds[j], extent, eager) for j in range(size)]
    rounds = max(-(-(bounds[j + 1] - bounds[j]) // segments[j]) for j in range(size))
    for k in range(rounds):
        start = lo + k * segments[rank]
        if start < hi:
            piece = out[start:min(start + segments[rank], hi)]
            steps += [(SEND, (rank + step) % size, piece) for step in range(1, size)]
        for step in range(1, size):
            j = (rank - step) % size
            start = bounds[j] + k * segments[j]
            if start < bounds[j + 1]:
                steps.append((RECV, j, out[start:min(start + segments[j], bounds[j + 1])]))
        # Round by round, as the blocking call: sends of all rounds at once
        # would overflow the rings into the engine's queue, and every poll
        # of one long round looks at all of its steps.
        steps.append(_F)
    return steps


def _same_start(a, b):
    return not len(a) or not len(b) or buffer_span(a)[0] == buffer_span(b)[0]


def _overlap(a, b):
    (x, n), (y, m) = buffer_span(a), buffer_span(b)
    return n and m and x < y + m and y < x + n


def prefix_steps(ch, data, recvmem, count, datatype, op, inclusive):
    # Collectives._prefix: a chain streamed in segments for two ranks or
    # more than one segment, else recursive doubling.
    size = ch.size
    n = len(data)
    if size == 1:
        return [(COPY, recvmem, data)] if inclusive else []
    extent = n // count if count else 1
    segment = prefix_segment(size, ch.rank, ch.world, n, extent, ch.engine.eager_limit)
    if prefix_chained(size, n, segment):
        return _prefix_chain_steps(ch, data, recvmem, extent, segment, datatype, op, inclusive)
    return _prefix_doubling_steps(ch, data, recvmem, count, datatype, op, inclusive)


def _prefix_chain_steps(ch, data, recvmem, extent, segment, datatype, op, inclusive):
    # Collectives._prefix_chain: rank r takes the prefix of 0..r-1 from r-1
    # and sends that of 0..r on to r+1, segment by segment.
    size, rank = ch.size, ch.rank
    n = len(data)
    bounds = [(start, min(start + segment, n)) for start in range(0, n, segment)]
    if rank == 0:
        steps = [own_send(1, data[a:b]) for a, b in bounds]
        if inclusive and not _same_start(data, recvmem):
            steps.append((COPY, recvmem, data))
        return steps
    combine = fast_combiner(op, datatype)
    last = rank == size - 1
    steps = []
    if inclusive:
        if not _same_start(data, recvmem):
            steps.append((COPY, recvmem, data))
        theirs = _scratch(min(segment, n))
        for a, b in bounds:
            m = b - a
            steps += [(RECV, rank - 1, theirs[:m]), _F,
                      combine(theirs[:m], recvmem[a:b], m // extent)]    # theirs op mine
            if not last:
                steps.append((SEND, rank + 1, recvmem[a:b]))
        return steps
    own = data
    if not last and _overlap(data, recvmem):
        own = _scratch(n)         # IN_PLACE: the prefix received overwrites mine
        steps.append((COPY, own, data))
    onward = None if last else _scratch(n)
    for a, b in bounds:
        steps += [(RECV, rank - 1, recvmem[a:b]), _F]
        if not last:
            steps += [(COPY, onward[a:b], own[a:b]),
                      combine(recvmem[a:b], onward[a:b], (b - a) // extent),   # theirs op mine
                      (SEND, rank + 1, onward[a:b])]
    return steps


def _prefix_doubling_steps(ch, data, recvmem, count, datatype, op, inclusive):
    # Recursive doubling prefix (Collectives._prefix_doubling).
    size, rank = ch.size, ch.rank
    combine = fast_combiner(op, datatype)
    partial, tmp = _scratch(len(data)), _scratch(len(data))
    steps = [(COPY, partial, data)]
    result = None
    if inclusive:
        result = _scratch(len(data))
        steps.append((COPY, result, data))
    mask = 1
    while mask < size:
        partner = rank ^ mask
        if partner < size:
            # In the last round only the upper partner still needs what the
            # other has: the lower one's partial sum is not used again.
            last = mask << 1 >= size
            if not last or partner > rank:
                steps.append((SEND, partner, partial))
            if not last or partner < rank:
                steps.append((RECV, partner, tmp))
            steps.append(_F)
            if partner < rank:
                if not last:
                    steps.append(combine(tmp, partial, count))
                if result is None:
                    result = _scratch(len(data))
                    steps.append((COPY, result, tmp))
                else:
                    steps.append(combine(tmp, result, count))
            elif not last:
                steps.append(combine(partial, tmp, count))
                partial, tmp = tmp, partial
        mask <<= 1
    if result is not None:      # Exscan leaves rank 0's buffer untouched
        steps.append((COPY, recvmem, result))
    return steps


def reduce_scatter_steps(ch, data, counts, datatype, extent, op, target):
    # Collectives._reduce_then_scatter: block j of every input to rank j,
    # segment by segment, each rank reducing its own block in rank order.
    size, rank = ch.size, ch.rank
    if len(target) != counts[rank] * extent:
        raise BufferSpecError(f"receive buffer of {len(target)} bytes for a block of "
                              f"{counts[rank] * extent}")
    steps = []
    if _overlap(data, target):
        copy = _scratch(len(data))        # IN_PLACE: the result overwrites the input
        steps.append((COPY, copy, data))
        data = copy
    combine = fast_combiner(op, datatype)
    eager = ch.engine.eager_limit
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c * extent)
    lengths = [c * extent for c in counts]
    segments = [pair_segment(size, rank, ch.world, length, extent, eager) for length in lengths]
    rounds = max(-(-length // seg) for length, seg in zip(lengths, segments))
    mine, seg = lengths[rank], segments[rank]
    own = data[bounds[rank]:bounds[rank + 1]]
    pieces = {j: _scratch(min(seg, mine)) for j in range(size) if j != rank}
    for k in range(rounds):
        for step in range(1, size):
            j = (rank + step) % size
            start = k * segments[j]
            if start < lengths[j]:
                end = min(start + segments[j], lengths[j])
                steps.append(own_send(j, data[bounds[j] + start:bounds[j] + end]))
        start = k * seg
        if start >= mine:
            continue
        m = min(seg, mine - start)
        out = target[start:start + m]
        steps += [(RECV, j, pieces[j][:m]) for j in range(size - 1, -1, -1) if j != rank]
        steps.append(_F)
        for j in range(size - 1, -1, -1):
            theirs = own[start:start + m] if j == rank else pieces[j][:m]
            if j == size - 1:
                steps.append((COPY, out, theirs))
            else:
                steps.append(combine(theirs, out, m // extent))    # x_j op (x_j+1 op ...)
    return steps


def streamed_reduce_steps(ch, data, recvmem, count, datatype, op, root):
    """Large messages (Collectives._region_reduce): the reduce-scatter of
    reduce_scatter_steps (each rank reduces one block of every input in
    rank order), then every block to the root in eager segments."""
    size, rank = ch.size, ch.rank
    extent, bounds, counts = reduce_blocks(len(data), count, size)
    mine = bounds[rank + 1] - bounds[rank]
    if rank == root:
        recvmem = memoryview(recvmem)
        if len(recvmem) != len(data):
            raise BufferSpecError(f"receive buffer of {len(recvmem)} bytes for a result of "
                                  f"{len(data)}")
        target = recvmem[bounds[rank]:bounds[rank + 1]]
    else:
        target = _scratch(mine)
    steps = reduce_scatter_steps(ch, memoryview(data), counts, datatype, extent, op, target)
    steps.append(_F)
    eager = ch.engine.eager_limit
    if rank != root:
        seg = stream_segment(mine, extent, eager)
        return steps + [(SEND, root, target[at:at + seg]) for at in range(0, mine, seg)]
    for j in range(size):
        if j != rank:
            lo, hi = bounds[j], bounds[j + 1]
            seg = stream_segment(hi - lo, extent, eager)
            steps += [(RECV, j, recvmem[at:min(at + seg, hi)]) for at in range(lo, hi, seg)]
    return steps


# --- the communicator's calls ------------------------------------------------------

def _same_type_and_count(send, recv):
    if send.datatype != recv.datatype:
        raise BufferSpecError("mismatch in send and receive MPI datatypes")
    if send.count != recv.count:
        raise BufferSpecError(
            f"mismatch in send count {send.count} and receive count {recv.count}")


def _even_blocks(mem, n):
    block = len(mem) // n
    return [mem[i * block:(i + 1) * block] for i in range(n)]


# The nonblocking collectives a communicator binds as its own attributes
# (ivmpi.comm, Comm._bind_fast; ivmpi._fastcopy.BoundCollective): name,
# plan method, parameter names, defaults of the last ones, and the constant
# arguments the plan takes after them, as the methods below pass them.
NONBLOCKING_STARTERS = (
    ("Ibarrier", "_barrier_plan", (), (), ()),
    ("Ibcast", "_bcast_plan", ("buf", "root"), (0,), ()),
    ("Iscatter", "_scatter_plan", ("sendbuf", "recvbuf", "root"), (0,), (False,)),
    ("Iscatterv", "_scatter_plan", ("sendbuf", "recvbuf", "root"), (0,), (True,)),
    ("Igather", "_gather_plan", ("sendbuf", "recvbuf", "root"), (0,), (False,)),
    ("Igatherv", "_gather_plan", ("sendbuf", "recvbuf", "root"), (0,), (True,)),
    ("Iallgather", "_allgather_plan", ("sendbuf", "recvbuf"), (), (False,)),
    ("Iallgatherv", "_allgather_plan", ("sendbuf", "recvbuf"), (), (True,)),
    ("Ialltoall", "_alltoall_plan", ("sendbuf", "recvbuf"), (), (False,)),
    ("Ialltoallv", "_alltoall_plan", ("sendbuf", "recvbuf"), (), (True,)),
    ("Ialltoallw", "_alltoallw_plan", ("sendbuf", "recvbuf"), (), ()),
    ("Ireduce", "_reduce_plan", ("sendbuf", "recvbuf", "op", "root"), (_SUM, 0), ()),
    ("Iallreduce", "_allreduce_plan", ("sendbuf", "recvbuf", "op"), (_SUM,), ()),
    ("Ireduce_scatter_block", "_reduce_scatter_block_plan", ("sendbuf", "recvbuf", "op"),
     (_SUM,), ()),
    ("Ireduce_scatter", "_reduce_scatter_plan", ("sendbuf", "recvbuf", "recvcounts", "op"),
     (None, _SUM), ()),
    ("Iscan", "_scan_plan", ("sendbuf", "recvbuf", "op"), (_SUM,), (True,)),
    ("Iexscan", "_scan_plan", ("sendbuf", "recvbuf", "op"), (_SUM,), (False,)),
)

# A blocking collective that runs one of these schedules to completion,
# bound the same way (its BoundCollective calls Channel.run).
BLOCKING_SCHEDULED = (
    ("Alltoallw", "_alltoallw_plan", ("sendbuf", "recvbuf"), (), ()),
)


class NonblockingCollectives:
    """The I* and *_init collectives of an ivmpi communicator."""

    def _nonblocking(self, what, make_plan, *args):
        """A Request over one run of the steps make_plan(*args)(ch) describes
        (plan(ch) returns (steps, prologue, epilogue))."""
        return channel_of(self).request(self, what, make_plan, args)

    def _persistent(self, what, plan):
        """A Prequest whose every Start runs the steps again, on one tag."""
        ch = channel_of(self)
        steps, prologue, epilogue = plan(ch)
        return CollectivePrequest(self, ch.schedule(ch.next_tag(), steps, what, prologue,
                                                    epilogue), what)

    def _check_root(self, root):
        if not 0 <= root < self.size:
            raise MPIError(_MPI.ERR_ROOT, f"root {root} is not in 0..{self.size - 1}")

    # --- argument parsing: each returns plan(ch) -> (steps, prologue, epilogue) ----

    def _barrier_plan(self):
        return lambda ch: (barrier_steps(ch), (), ())

    def _bcast_plan(self, buf, root):
        self._check_root(root)
        is_root = self.rank == root
        _, buf, prologue, epilogue = unholed("Bcast", None, buf, 1, is_root)
        mem = parse_send(buf).mem if is_root else parse_recv(buf).mem
        return lambda ch: (bcast_steps(ch, mem, root), prologue, epilogue)

    def _scatter_plan(self, sendbuf, recvbuf, root, vector):
        self._check_root(root)
        size, is_root = self.size, self.rank == root
        sendbuf, recvbuf, prologue, epilogue = unholed(
            "Scatterv" if vector else "Scatter", sendbuf, recvbuf, size, is_root)
        if not is_root:
            recvmem = parse_recv(recvbuf).mem
            return lambda ch: (scatter_steps(ch, None, recvmem, root), prologue, epilogue)
        if vector:
            send = parse_vbuf(sendbuf, size, recv=False)
            blocks = [send.block(i) for i in range(size)]
        else:
            blocks = _even_blocks(parse_send(sendbuf, blocks=size).mem, size)
        recvmem = None if is_in_place(recvbuf) else parse_recv(recvbuf).mem
        return lambda ch: (scatter_steps(ch, blocks, recvmem, root), prologue, epilogue)

    def _gather_plan(self, sendbuf, recvbuf, root, vector):
        self._check_root(root)
        size, is_root = self.size, self.rank == root
        sendbuf, recvbuf, prologue, epilogue = unholed(
            "Gatherv" if vector else "Gather", sendbuf, recvbuf, size, is_root)
        if not is_root:
            sendmem = parse_send(sendbuf).mem
            return lambda ch: (gather_steps(ch, sendmem, None, root), prologue, epilogue)
        blocks = self._recv_blocks(recvbuf, vector)
        sendmem = None if is_in_place(sendbuf) else parse_send(sendbuf).mem
        return lambda ch: (gather_steps(ch, sendmem, blocks, root), prologue, epilogue)

    def _recv_blocks(self, recvbuf, vector):
        size = self.size
        if vector:
            recv = parse_vbuf(recvbuf, size, recv=True)
            return [recv.block(i) for i in range(size)]
        return _even_blocks(parse_recv(recvbuf, blocks=size).mem, size)

    def _allgather_plan(self, sendbuf, recvbuf, vector):
        sendbuf, recvbuf, prologue, epilogue = unholed(
            "Allgatherv" if vector else "Allgather", sendbuf, recvbuf, self.size)
        blocks = self._recv_blocks(recvbuf, vector)
        sendmem = None if is_in_place(sendbuf) else parse_send(sendbuf).mem
        return lambda ch: (allgather_steps(ch, sendmem, blocks), prologue, epilogue)

    def _alltoall_plan(self, sendbuf, recvbuf, vector):
        size = self.size
        sendbuf, recvbuf, prologue, epilogue = unholed(
            "Alltoallv" if vector else "Alltoall", sendbuf, recvbuf, size)
        recv_blocks = self._recv_blocks(recvbuf, vector)
        send_blocks = None
        if not is_in_place(sendbuf):
            if vector:
                send = parse_vbuf(sendbuf, size, recv=False)
                send_blocks = [send.block(i) for i in range(size)]
            else:
                send_blocks = _even_blocks(parse_send(sendbuf, blocks=size).mem, size)
        return lambda ch: (alltoall_steps(ch, send_blocks, recv_blocks), prologue, epilogue)

    def _alltoallw_plan(self, sendbuf, recvbuf):
        size = self.size
        in_place = is_in_place(sendbuf)
        recv_blocks, packs, unpacks = wblocks(recvbuf, size, True, fill=in_place)
        send_blocks = None
        if not in_place:
            send_blocks, packs, _ = wblocks(sendbuf, size, False)
        return lambda ch: (alltoall_steps(ch, send_blocks, recv_blocks), packs, unpacks)

    def _reduction_args(self, name, sendbuf, recvbuf, at_root=True):
        sendbuf, recvbuf, prologue, epilogue = unholed(name, sendbuf, recvbuf, 1, at_root)
        data, recv, count, datatype = self._collectives._reduction_args(sendbuf, recvbuf, at_root)
        return data, recv, count, datatype, prologue, epilogue

    def _reduce_plan(self, sendbuf, recvbuf, op, root):
        self._check_root(root)
        data, recv, count, datatype, prologue, epilogue = self._reduction_args(
            "Reduce", sendbuf, recvbuf, at_root=self.rank == root)
        check_op(op, datatype)

        def plan(ch):
            if streams_reduction(ch.size, data, count, datatype, ch.engine.eager_limit):
                return (streamed_reduce_steps(ch, data, recv.mem if recv is not None else None,
                                              count, datatype, op, root), prologue, epilogue)
            steps = []
            result = reduce_steps(ch, steps, data, count, datatype, op, root)
            if recv is not None:
                if len(recv.mem) != len(result):
                    raise BufferSpecError(f"receive buffer of {len(recv.mem)} bytes for a "
                                          f"result of {len(result)}")
                steps.append((COPY, recv.mem, result))
            return steps, prologue, epilogue
        return plan

    def _allreduce_plan(self, sendbuf, recvbuf, op):
        data, recv, count, datatype, prologue, epilogue = self._reduction_args(
            "Allreduce", sendbuf, recvbuf)
        check_op(op, datatype)
        recvmem = recv.mem
        return lambda ch: (allreduce_steps(ch, data, recvmem, count, datatype, op), prologue,
                           epilogue)

    def _scan_plan(self, sendbuf, recvbuf, op, inclusive):
        data, recv, count, datatype, prologue, epilogue = self._reduction_args(
            "Scan" if inclusive else "Exscan", sendbuf, recvbuf)
        check_op(op, datatype)
        recvmem = recv.mem
        return lambda ch: (prefix_steps(ch, data, recvmem, count, datatype, op, inclusive),
                           prologue, epilogue)

    def _reduce_scatter_block_plan(self, sendbuf, recvbuf, op):
        size = self.size
        sendbuf, recvbuf, prologue, epilogue = unholed("Reduce_scatter_block", sendbuf, recvbuf,
                                                       size)
        if is_in_place(sendbuf):
            recv = parse_recv(recvbuf, blocks=size)
            data, count, datatype = recv.mem, recv.count, recv.datatype
            target = recv.mem[:recv.nbytes // size]
        else:
            recv = parse_recv(recvbuf)
            send = parse_send(sendbuf, blocks=size)
            _same_type_and_count(send, recv)
            data, count, datatype, target = send.mem, send.count, send.datatype, recv.mem
        check_op(op, datatype)
        extent = datatype_extent(datatype)
        counts = [count] * size
        return lambda ch: (reduce_scatter_steps(ch, data, counts, datatype, extent, op, target),
                           prologue, epilogue)

    def _reduce_scatter_plan(self, sendbuf, recvbuf, recvcounts, op):
        size, rank = self.size, self.rank
        sendbuf, recvbuf, prologue, epilogue = unholed("Reduce_scatter", sendbuf, recvbuf, 1)
        recv = parse_recv(recvbuf)
        check_op(op, recv.datatype)
        in_place = is_in_place(sendbuf)
        if recvcounts is None:
            if in_place:
                raise BufferSpecError("Reduce_scatter with IN_PLACE needs recvcounts")
            # As mpi4py does: the counts are gathered by a blocking call now.
            recvcounts = self._collectives.allgather(recv.count)
        counts = [int(c) for c in recvcounts]
        if len(counts) != size or min(counts) < 0:
            raise BufferSpecError(f"recvcounts must be {size} non-negative counts, got {counts}")
        total = sum(counts)
        datatype = recv.datatype
        extent = datatype_extent(datatype)
        if in_place:
            if recv.count != total:
                raise BufferSpecError(
                    f"mismatch in receive count {recv.count} and sum(counts) {total}")
            data, target = recv.mem, recv.mem[:counts[rank] * extent]
        else:
            send = parse_send(sendbuf)
            if send.datatype != datatype:
                raise BufferSpecError("mismatch in send and receive MPI datatypes")
            if send.count != total:
                raise BufferSpecError(
                    f"mismatch in send count {send.count} and sum(counts) {total}")
            if recv.count != counts[rank]:
                raise BufferSpecError(
                    f"mismatch in receive count {recv.count} and counts[{rank}] {counts[rank]}")
            data, target = send.mem, recv.mem
        return lambda ch: (reduce_scatter_steps(ch, data, counts, datatype, extent, op, target),
                           prologue, epilogue)

    # --- nonblocking ------------------------------------------------------------

    def Ibarrier(self):
        return self._nonblocking("Ibarrier", self._barrier_plan)

    def Ibcast(self, buf, root=0):
        return self._nonblocking("Ibcast", self._bcast_plan, buf, root)

    def Iscatter(self, sendbuf, recvbuf, root=0):
        return self._nonblocking("Iscatter", self._scatter_plan, sendbuf, recvbuf, root, False)

    def Iscatterv(self, sendbuf, recvbuf, root=0):
        return self._nonblocking("Iscatterv", self._scatter_plan, sendbuf, recvbuf, root, True)

    def Igather(self, sendbuf, recvbuf, root=0):
        return self._nonblocking("Igather", self._gather_plan, sendbuf, recvbuf, root, False)

    def Igatherv(self, sendbuf, recvbuf, root=0):
        return self._nonblocking("Igatherv", self._gather_plan, sendbuf, recvbuf, root, True)

    def Iallgather(self, sendbuf, recvbuf):
        return self._nonblocking("Iallgather", self._allgather_plan, sendbuf, recvbuf, False)

    def Iallgatherv(self, sendbuf, recvbuf):
        return self._nonblocking("Iallgatherv", self._allgather_plan, sendbuf, recvbuf, True)

    def Ialltoall(self, sendbuf, recvbuf):
        return self._nonblocking("Ialltoall", self._alltoall_plan, sendbuf, recvbuf, False)

    def Ialltoallv(self, sendbuf, recvbuf):
        return self._nonblocking("Ialltoallv", self._alltoall_plan, sendbuf, recvbuf, True)

    def Ialltoallw(self, sendbuf, recvbuf):
        return self._nonblocking("Ialltoallw", self._alltoallw_plan, sendbuf, recvbuf)

    def Alltoallw(self, sendbuf, recvbuf):
        # The blocking form is the nonblocking schedule run to completion
        # (the same messages and tags), without a request in between.
        channel_of(self).run("Alltoallw", self._alltoallw_plan, (sendbuf, recvbuf))

    def Ireduce(self, sendbuf, recvbuf, op=_SUM, root=0):
        return self._nonblocking("Ireduce", self._reduce_plan, sendbuf, recvbuf, op, root)

    def Iallreduce(self, sendbuf, recvbuf, op=_SUM):
        return self._nonblocking("Iallreduce", self._allreduce_plan, sendbuf, recvbuf, op)

    def Ireduce_scatter_block(self, sendbuf, recvbuf, op=_SUM):
        return self._nonblocking("Ireduce_scatter_block", self._reduce_scatter_block_plan,
                                 sendbuf, recvbuf, op)

    def Ireduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=_SUM):
        return self._nonblocking("Ireduce_scatter", self._reduce_scatter_plan, sendbuf, recvbuf,
                                 recvcounts, op)

    def Iscan(self, sendbuf, recvbuf, op=_SUM):
        return self._nonblocking("Iscan", self._scan_plan, sendbuf, recvbuf, op, True)

    def Iexscan(self, sendbuf, recvbuf, op=_SUM):
        return self._nonblocking("Iexscan", self._scan_plan, sendbuf, recvbuf, op, False)

    # --- persistent (info is accepted and ignored) ---------------------------------

    def Barrier_init(self, info=_INFO_NULL):
        return self._persistent("Barrier_init", self._barrier_plan())

    def Bcast_init(self, buf, root=0, info=_INFO_NULL):
        return self._persistent("Bcast_init", self._bcast_plan(buf, root))

    def Scatter_init(self, sendbuf, recvbuf, root=0, info=_INFO_NULL):
        return self._persistent("Scatter_init",
                                self._scatter_plan(sendbuf, recvbuf, root, False))

    def Scatterv_init(self, sendbuf, recvbuf, root=0, info=_INFO_NULL):
        return self._persistent("Scatterv_init", self._scatter_plan(sendbuf, recvbuf, root, True))

    def Gather_init(self, sendbuf, recvbuf, root=0, info=_INFO_NULL):
        return self._persistent("Gather_init", self._gather_plan(sendbuf, recvbuf, root, False))

    def Gatherv_init(self, sendbuf, recvbuf, root=0, info=_INFO_NULL):
        return self._persistent("Gatherv_init", self._gather_plan(sendbuf, recvbuf, root, True))

    def Allgather_init(self, sendbuf, recvbuf, info=_INFO_NULL):
        return self._persistent("Allgather_init", self._allgather_plan(sendbuf, recvbuf, False))

    def Allgatherv_init(self, sendbuf, recvbuf, info=_INFO_NULL):
        return self._persistent("Allgatherv_init", self._allgather_plan(sendbuf, recvbuf, True))

    def Alltoall_init(self, sendbuf, recvbuf, info=_INFO_NULL):
        return self._persistent("Alltoall_init", self._alltoall_plan(sendbuf, recvbuf, False))

    def Alltoallv_init(self, sendbuf, recvbuf, info=_INFO_NULL):
        return self._persistent("Alltoallv_init", self._alltoall_plan(sendbuf, recvbuf, True))

    def Alltoallw_init(self, sendbuf, recvbuf, info=_INFO_NULL):
        return self._persistent("Alltoallw_init", self._alltoallw_plan(sendbuf, recvbuf))

    def Reduce_init(self, sendbuf, recvbuf, op=_SUM, root=0, info=_INFO_NULL):
        return self._persistent("Reduce_init", self._reduce_plan(sendbuf, recvbuf, op, root))

    def Allreduce_init(self, sendbuf, recvbuf, op=_SUM, info=_INFO_NULL):
        return self._persistent("Allreduce_init", self._allreduce_plan(sendbuf, recvbuf, op))

    def Reduce_scatter_block_init(self, sendbuf, recvbuf, op=_SUM, info=_INFO_NULL):
        return self._persistent("Reduce_scatter_block_init",
                                self._reduce_scatter_block_plan(sendbuf, recvbuf, op))

    def Reduce_scatter_init(self, sendbuf, recvbuf, recvcounts=None, op=_SUM, info=_INFO_NULL):
        return self._persistent("Reduce_scatter_init",
                                self._reduce_scatter_plan(sendbuf, recvbuf, recvcounts, op))

    def Scan_init(self, sendbuf, recvbuf, op=_SUM, info=_INFO_NULL):
        return self._persistent("Scan_init", self._scan_plan(sendbuf, recvbuf, op, True))

    def Exscan_init(self, sendbuf, recvbuf, op=_SUM, info=_INFO_NULL):
        return self._persistent("Exscan_init", self._scan_plan(sendbuf, recvbuf, op, False))
