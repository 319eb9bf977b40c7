"""Nonblocking and persistent collectives through the region.

``NonblockingCollectives`` is a base of ``ivmpi.Intracomm``: each method it
defines replaces the MPI library's call on the communicator's handle; a
call it does not define stays mpi4py's (the library's transport).

Each call checks and parses its arguments at once (so errors are raised
by the call, as mpi4py raises them) and returns a Request over a
CollectiveOp.  The op runs a schedule: a generator that follows the
algorithm of the blocking collective (ivmpi.collectives: same partners,
same operand order, so results are bit for bit the same) but, instead of
waiting for each round's sends and receives, yields them.  Reading the
op's ``done`` (what every Wait/Test does) resumes the generator once all
of them have completed.  The engine also reads it for every schedule in
progress on each of its rounds of progress (Engine.schedules), so a rank
waiting on something else still plays its part in a collective its peers
are waiting for, as MPI's progress rule asks.

Messages travel on the communicator's hidden twin (the blocking
collectives' context), each collective with its own tag: NB_TAG_BASE plus
the number of nonblocking and persistent collectives the communicator has
started.  All ranks start collectives in the same order, so they agree on
it; it never meets the blocking collectives' tags (below 100), the
neighbourhood collectives' (ivmpi.topocomm: 2**24 and a few above) nor those
of another outstanding collective.  A persistent collective draws its tag at
_init and reuses it at every Start: one round of it always ends on this
rank before the next starts, and messages between two ranks keep their
order, so rounds cannot mix.
"""
from .lib import MPI as _MPI

from .buffers import (datatype_extent, has_holes, is_in_place, parse_recv, parse_send,
                      parse_vbuf)
from .collectives import PIPELINE_MIN_BYTES, PIPELINE_SEGMENT_BYTES, Collectives, _check_block
from .engine import RecvOp, SendOp
from .errors import BufferSpecError
from .request import MPIError, Prequest, Request

NB_TAG_BASE = 1 << 25
_NB_TAG_MASK = (1 << 30) - 1     # the largest tag stays below 2**31 - 1

_SUM = _MPI.SUM
_INFO_NULL = _MPI.INFO_NULL
_combine = Collectives._combine     # inoutmem = inmem (op) inoutmem
_EMPTY = bytearray(0)

# What a send that the fast path published on the spot leaves to wait for.
_SENT = SendOp(-1, b"", 0, 0, False)
_SENT.done = True


class _Channel:
    """What the collectives of one communicator share: the hidden twin's
    engine, world ranks, context and members, and the count of collectives
    started (it lives on the communicator's Collectives object, which every
    copy of the communicator shares)."""
    __slots__ = ("engine", "fast", "world", "ctx", "scope", "rank", "size", "started")

    def __init__(self, twin):
        self.engine = twin._engine
        self.fast = twin._fast
        self.world = twin._ranks
        self.ctx = twin._ctx
        self.scope = twin._scope      # any member's death ends a wait on them
        self.rank = twin.rank
        self.size = twin.size
        self.started = 0

    def next_tag(self):
        with self.engine.lock:
            seq = self.started
            self.started = seq + 1
        return NB_TAG_BASE + (seq & _NB_TAG_MASK)


class CollectiveOp:
    """One run of a collective's schedule, as the engine's operations look
    to a Request: ``done``, ``error`` (an exception raised by Wait), ``peer``
    and ``state`` (for timeout and dead-peer messages), ``scope``."""

    __slots__ = ("rank", "size", "scope", "error", "what", "_ch", "_tag", "_steps", "_waiting",
                 "_finished", "_round")

    def __init__(self, channel, tag, what):
        self.rank = channel.rank
        self.size = channel.size
        self.scope = channel.scope
        self.error = None
        self.what = what
        self._ch = channel
        self._tag = tag
        self._steps = None
        self._waiting = ()
        self._finished = False
        self._round = 0

    # --- the steps a schedule yields ----------------------------------------------

    def send(self, mem, peer):
        ch = self._ch
        if ch.fast.send(mem, peer, self._tag):     # a small message, out at once
            return _SENT
        op = ch.engine.isend(ch.world[peer], mem, self._tag, ch.ctx)
        op.scope = ch.scope
        return op

    def recv(self, mem, peer):
        ch = self._ch
        op = ch.engine.irecv(ch.world[peer], self._tag, ch.ctx, mem)
        op.scope = ch.scope
        return op

    def sendrecv(self, sendmem, recvmem, peer):
        return (self.recv(recvmem, peer), self.send(sendmem, peer))

    # --- running -------------------------------------------------------------

    def begin(self, steps):
        """Run the schedule up to its first wait; the engine polls it from then on."""
        self._steps = steps
        if not self._advance():
            engine = self._ch.engine
            with engine.lock:
                engine.schedules.append(self)
        return self

    @property
    def done(self):
        if self._finished:
            return True
        for op in self._waiting:
            if not op.done:
                return False
        return self._advance()

    def _advance(self):
        """Resume the schedule while its current round has completed."""
        with self._ch.engine.lock:      # one thread at a time runs a generator
            if self._finished:
                return True
            try:
                while True:
                    for op in self._waiting:
                        if not op.done:
                            return False
                        if op.error is not None:
                            self._truncated(op)
                    self._waiting = next(self._steps)
                    self._round += 1
            except StopIteration:
                pass
            except Exception as exc:      # reported by the Wait/Test that completes it
                self.error = exc
            self._finished = True
            self._waiting = ()
            self._steps = None
            return True

    def wait(self, what):
        """Wait until done.  While the schedule waits for one receive, the
        engine's wait for a receive from a known peer serves (its fastest);
        otherwise the general wait, which polls the whole schedule."""
        engine = self._ch.engine
        while not self.done:
            op = self._pending()
            if type(op) is RecvOp:
                engine.wait(op, what)
            else:
                engine.wait(self, what)

    def _truncated(self, op):
        world = self._ch.world
        source = world.index(op.status_source) if op.status_source in world else -1
        raise MPIError(_MPI.ERR_TRUNCATE, f"{self.what}: message of {op.total} bytes from rank "
                                          f"{source} does not fit the receive buffer")

    def _pending(self):
        for op in self._waiting:
            if not op.done:
                return op
        return None

    @property
    def peer(self):
        op = self._pending()
        return None if op is None else op.peer

    @property
    def state(self):
        # Read now and then by a wait: it changes whenever the schedule or
        # one of its messages advances, which restarts IVMPI_TIMEOUT.
        op = self._pending()
        if op is None:
            return f"{self.what}: round {self._round}"
        moved = getattr(op, "received", None) or getattr(op, "offset", None) or 0
        kind = "a receive from" if type(op) is RecvOp else "a send to"
        world = self._ch.world
        who = world.index(op.peer) if op.peer in world else op.peer
        return f"{self.what}: round {self._round}, {kind} rank {who} ({moved} bytes moved)"


class CollectiveRequest(Request):
    """The request of a nonblocking collective: Wait waits with the op's own
    loop (see CollectiveOp.wait); everything else is Request's."""
    __slots__ = ()

    def Wait(self, status=None):
        op = self._op
        if op is not None and not op._finished:
            op.wait(self)
        self._finish(status, decode=False)
        return True

    def wait(self, status=None):
        self.Wait(status)


class CollectivePrequest(Prequest):
    """The request of a persistent collective (Wait as CollectiveRequest's)."""
    __slots__ = ()

    Wait = CollectiveRequest.Wait
    wait = CollectiveRequest.wait


# --- schedules ------------------------------------------------------------------
# Each is a generator over a CollectiveOp `s`, yielding the operations of a
# round; the comments name the blocking algorithm (ivmpi.collectives) it follows.

def _barrier(s):
    # Dissemination: round k talks to rank +/- 2**k.
    size, rank = s.size, s.rank
    distance = 1
    while distance < size:
        yield (s.recv(_EMPTY, (rank - distance) % size),
               s.send(_EMPTY, (rank + distance) % size))
        distance <<= 1


def _bcast(s, mem, root):
    if s.size == 1:
        return
    if len(mem) >= PIPELINE_MIN_BYTES and s.size > 2:
        yield from _bcast_pipeline(s, mem, root)
    else:
        yield from _bcast_binomial(s, mem, root)


def _bcast_binomial(s, mem, root):
    size = s.size
    vrank = (s.rank - root) % size
    mask = 1
    while mask < size:
        if vrank & mask:
            yield (s.recv(mem, (vrank - mask + root) % size),)
            break
        mask <<= 1
    sends = []
    mask >>= 1
    while mask > 0:
        if vrank + mask < size:
            sends.append(s.send(mem, (vrank + mask + root) % size))
        mask >>= 1
    yield sends


def _bcast_pipeline(s, mem, root):
    # A chain root -> root+1 -> ...: segment k goes on as soon as it is in.
    size = s.size
    vrank = (s.rank - root) % size
    prev, nxt = (s.rank - 1) % size, (s.rank + 1) % size
    last = vrank + 1 == size
    segments = [mem[i:i + PIPELINE_SEGMENT_BYTES]
                for i in range(0, len(mem), PIPELINE_SEGMENT_BYTES)]
    receives = [s.recv(seg, prev) for seg in segments] if vrank else None
    sends = []
    for k, seg in enumerate(segments):
        if receives is not None:
            yield (receives[k],)
        if not last:
            sends.append(s.send(seg, nxt))
    yield sends


def _bcast_holes(s, buf, root, received):
    """Bcast of a derived datatype with holes: packed at the root (at each
    start), unpacked into the user's memory elsewhere."""
    mem = parse_send(buf, holes=True).mem if received is None else received.mem
    yield from _bcast(s, mem, root)
    if received is not None:
        received.unpack()


def _scatter(s, blocks, recvmem, root, what):
    if s.rank != root:
        yield (s.recv(recvmem, root),)
        return
    sends = [s.send(blocks[i], i) for i in range(s.size) if i != root]
    if recvmem is not None:
        _check_block(recvmem, blocks[root], what)
    yield sends


def _gather(s, sendmem, blocks, root, what):
    if s.rank != root:
        yield (s.send(sendmem, root),)
        return
    receives = [s.recv(blocks[i], i) for i in range(s.size) if i != root]
    if sendmem is not None:
        _check_block(blocks[root], sendmem, what)
    yield receives


def _allgather(s, sendmem, blocks, what):
    # Every rank sends its block straight to every other: one round (the
    # blocking ring takes p-1; the result is the same bytes).
    size, rank = s.size, s.rank
    if sendmem is not None:
        _check_block(blocks[rank], sendmem, what)
    mine = blocks[rank]
    ops = []
    for step in range(1, size):
        ops.append(s.recv(blocks[(rank - step) % size], (rank - step) % size))
        ops.append(s.send(mine, (rank + step) % size))
    yield ops


def _alltoall(s, send_blocks, recv_blocks, what):
    # Every pair exchanges its blocks at once, in the pairwise order.
    size, rank = s.size, s.rank
    if send_blocks is None:           # IN_PLACE: what was there is sent
        send_blocks = [bytes(b) for b in recv_blocks]
    _check_block(recv_blocks[rank], send_blocks[rank], what)
    ops = []
    for step in range(1, size):
        dest, source = (rank + step) % size, (rank - step) % size
        ops.append(s.recv(recv_blocks[source], source))
        ops.append(s.send(send_blocks[dest], dest))
    yield ops


def _reduce_bytes(s, data, count, datatype, op, root):
    """Binomial tree (Collectives._reduce_bytes); returns the result at root."""
    size, rank = s.size, s.rank
    acc = bytearray(data)
    tmp = bytearray(len(acc))
    commutative = op.Is_commutative()
    base = root if commutative else 0
    vrank = (rank - base) % size
    mask = 1
    while mask < size:
        if vrank & mask:
            yield (s.send(acc, (vrank - mask + base) % size),)
            break
        if vrank + mask < size:
            yield (s.recv(tmp, (vrank + mask + base) % size),)
            _combine(op, acc, tmp, count, datatype)     # tmp = acc op tmp
            acc, tmp = tmp, acc
        mask <<= 1
    if base != root:
        if rank == base:
            yield (s.send(acc, root),)
        elif rank == root:
            yield (s.recv(acc, base),)
    return acc if rank == root else None


def _reduce(s, data, recv, count, datatype, op, root):
    result = yield from _reduce_bytes(s, data, count, datatype, op, root)
    if recv is not None:
        recv.mem[:] = result


def _allreduce(s, data, recvmem, count, datatype, op):
    # Recursive doubling with the ranks beyond the largest power of two
    # folded into their even neighbours (Collectives.Allreduce).
    size, rank = s.size, s.rank
    acc = bytearray(data)
    tmp = bytearray(len(acc))
    pof2 = 1
    while pof2 * 2 <= size:
        pof2 *= 2
    extra = size - pof2
    if rank < 2 * extra:
        if rank % 2 == 0:
            yield (s.send(acc, rank + 1),)
            newrank = -1
        else:
            yield (s.recv(tmp, rank - 1),)
            _combine(op, tmp, acc, count, datatype)     # acc = left op acc
            newrank = rank // 2
    else:
        newrank = rank - extra
    if newrank >= 0:
        mask = 1
        while mask < pof2:
            newpartner = newrank ^ mask
            partner = newpartner * 2 + 1 if newpartner < extra else newpartner + extra
            yield s.sendrecv(acc, tmp, partner)
            if newpartner < newrank:
                _combine(op, tmp, acc, count, datatype)  # acc = theirs op acc
            else:
                _combine(op, acc, tmp, count, datatype)  # tmp = acc op theirs
                acc, tmp = tmp, acc
            mask <<= 1
    if rank < 2 * extra:
        if rank % 2:
            yield (s.send(acc, rank - 1),)
        else:
            yield (s.recv(acc, rank + 1),)
    recvmem[:] = acc


def _prefix(s, data, recvmem, count, datatype, op, inclusive):
    # Recursive doubling prefix (Collectives._prefix).
    size, rank = s.size, s.rank
    partial = bytearray(data)
    result = bytearray(data) if inclusive else None
    tmp = bytearray(len(partial))
    mask = 1
    while mask < size:
        partner = rank ^ mask
        if partner < size:
            yield s.sendrecv(partial, tmp, partner)
            if partner < rank:
                _combine(op, tmp, partial, count, datatype)
                if result is None:
                    result = bytearray(tmp)
                else:
                    _combine(op, tmp, result, count, datatype)
            else:
                _combine(op, partial, tmp, count, datatype)
                partial, tmp = tmp, partial
        mask <<= 1
    if result is not None:      # Exscan leaves rank 0's buffer untouched
        recvmem[:] = result


def _reduce_scatter(s, data, counts, datatype, extent, op, target):
    # Reduce to rank 0, then scatter the blocks (Collectives._reduce_then_scatter).
    size, rank = s.size, s.rank
    result = yield from _reduce_bytes(s, data, sum(counts), datatype, op, 0)
    if rank != 0:
        yield (s.recv(target, 0),)
        return
    result = memoryview(result)
    blocks, start = [], 0
    for i in range(size):
        blocks.append(result[start:start + counts[i] * extent])
        start += counts[i] * extent
    sends = [s.send(blocks[i], i) for i in range(1, size)]
    target[:] = blocks[0]
    yield sends


# --- the communicator's calls ------------------------------------------------------

class NonblockingCollectives:
    """The I* and *_init collectives of an ivmpi communicator."""

    def _channel(self):
        self._check_live()
        coll = self._collectives
        channel = getattr(coll, "nb_channel", None)
        if channel is None:
            channel = coll.nb_channel = _Channel(coll.p2p)
        return channel

    def _nonblocking(self, what, schedule):
        """A Request over one run of schedule(op) (a generator function)."""
        channel = self._channel()
        op = CollectiveOp(channel, channel.next_tag(), what)
        return CollectiveRequest(self, op.begin(schedule(op)), what=what)

    def _persistent(self, what, schedule):
        """A Prequest whose every Start runs schedule(op) anew, on one tag."""
        channel = self._channel()
        tag = channel.next_tag()

        def start():
            self._check_live()
            op = CollectiveOp(channel, tag, what)
            return op.begin(schedule(op)), None
        return CollectivePrequest(self, start, what)

    # --- argument parsing: each returns a schedule function -----------------------

    def _barrier_plan(self):
        return _barrier

    def _bcast_plan(self, buf, root):
        self._check_root(root)
        if self.rank == root:
            sent = parse_send(buf, holes=True)
            if has_holes(sent.datatype):
                return lambda s: _bcast_holes(s, buf, root, None)
            return lambda s: _bcast(s, sent.mem, root)
        received = parse_recv(buf, holes=True)
        if received.unpack is not None:
            return lambda s: _bcast_holes(s, buf, root, received)
        return lambda s: _bcast(s, received.mem, root)

    def _scatter_plan(self, sendbuf, recvbuf, root, vector, what):
        self._check_root(root)
        size = self.size
        if self.rank != root:
            recvmem = parse_recv(recvbuf).mem
            return lambda s: _scatter(s, None, recvmem, root, what)
        if vector:
            send = parse_vbuf(sendbuf, size, recv=False)
            blocks = [send.block(i) for i in range(size)]
        else:
            send = parse_send(sendbuf, blocks=size)
            block = send.nbytes // size
            blocks = [send.mem[i * block:(i + 1) * block] for i in range(size)]
        recvmem = None if is_in_place(recvbuf) else parse_recv(recvbuf).mem
        return lambda s: _scatter(s, blocks, recvmem, root, what)

    def _gather_plan(self, sendbuf, recvbuf, root, vector, what):
        self._check_root(root)
        size = self.size
        if self.rank != root:
            sendmem = parse_send(sendbuf).mem
            return lambda s: _gather(s, sendmem, None, root, what)
        blocks = self._recv_blocks(recvbuf, vector)
        sendmem = None if is_in_place(sendbuf) else parse_send(sendbuf).mem
        return lambda s: _gather(s, sendmem, blocks, root, what)

    def _recv_blocks(self, recvbuf, vector):
        size = self.size
        if vector:
            recv = parse_vbuf(recvbuf, size, recv=True)
            return [recv.block(i) for i in range(size)]
        recv = parse_recv(recvbuf, blocks=size)
        block = recv.nbytes // size
        return [recv.mem[i * block:(i + 1) * block] for i in range(size)]

    def _allgather_plan(self, sendbuf, recvbuf, vector, what):
        blocks = self._recv_blocks(recvbuf, vector)
        sendmem = None if is_in_place(sendbuf) else parse_send(sendbuf).mem
        return lambda s: _allgather(s, sendmem, blocks, what)

    def _alltoall_plan(self, sendbuf, recvbuf, vector, what):
        size = self.size
        recv_blocks = self._recv_blocks(recvbuf, vector)
        send_blocks = None
        if not is_in_place(sendbuf):
            if vector:
                send = parse_vbuf(sendbuf, size, recv=False)
                send_blocks = [send.block(i) for i in range(size)]
            else:
                mem = parse_send(sendbuf, blocks=size).mem
                block = len(mem) // size
                send_blocks = [mem[i * block:(i + 1) * block] for i in range(size)]
        return lambda s: _alltoall(s, send_blocks, recv_blocks, what)

    def _reduce_plan(self, sendbuf, recvbuf, op, root):
        self._check_root(root)
        data, recv, count, datatype = self._collectives._reduction_args(
            sendbuf, recvbuf, at_root=self.rank == root)
        return lambda s: _reduce(s, data, recv, count, datatype, op, root)

    def _allreduce_plan(self, sendbuf, recvbuf, op):
        data, recv, count, datatype = self._collectives._reduction_args(sendbuf, recvbuf)
        recvmem = recv.mem
        return lambda s: _allreduce(s, data, recvmem, count, datatype, op)

    def _scan_plan(self, sendbuf, recvbuf, op, inclusive):
        data, recv, count, datatype = self._collectives._reduction_args(sendbuf, recvbuf)
        recvmem = recv.mem
        return lambda s: _prefix(s, data, recvmem, count, datatype, op, inclusive)

    def _reduce_scatter_block_plan(self, sendbuf, recvbuf, op):
        size = self.size
        if is_in_place(sendbuf):
            recv = parse_recv(recvbuf, blocks=size)
            data, count, datatype = recv.mem, recv.count, recv.datatype
            target = recv.mem[:recv.nbytes // size]
        else:
            recv = parse_recv(recvbuf)
            send = parse_send(sendbuf, blocks=size)
            _same_type_and_count(send, recv)
            data, count, datatype, target = send.mem, send.count, send.datatype, recv.mem
        extent = datatype_extent(datatype)
        counts = [count] * size
        return lambda s: _reduce_scatter(s, data, counts, datatype, extent, op, target)

    def _reduce_scatter_plan(self, sendbuf, recvbuf, recvcounts, op):
        size, rank = self.size, self.rank
        recv = parse_recv(recvbuf)
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
        return lambda s: _reduce_scatter(s, data, counts, datatype, extent, op, target)

    def _check_root(self, root):
        if not 0 <= root < self.size:
            raise MPIError(_MPI.ERR_ROOT, f"root {root} is not in 0..{self.size - 1}")

    # --- nonblocking ------------------------------------------------------------

    def Ibarrier(self):
        return self._nonblocking("Ibarrier", _barrier)

    def Ibcast(self, buf, root=0):
        return self._nonblocking("Ibcast", self._bcast_plan(buf, root))

    def Iscatter(self, sendbuf, recvbuf, root=0):
        return self._nonblocking("Iscatter",
                                 self._scatter_plan(sendbuf, recvbuf, root, False, "Iscatter"))

    def Iscatterv(self, sendbuf, recvbuf, root=0):
        return self._nonblocking("Iscatterv",
                                 self._scatter_plan(sendbuf, recvbuf, root, True, "Iscatterv"))

    def Igather(self, sendbuf, recvbuf, root=0):
        return self._nonblocking("Igather",
                                 self._gather_plan(sendbuf, recvbuf, root, False, "Igather"))

    def Igatherv(self, sendbuf, recvbuf, root=0):
        return self._nonblocking("Igatherv",
                                 self._gather_plan(sendbuf, recvbuf, root, True, "Igatherv"))

    def Iallgather(self, sendbuf, recvbuf):
        return self._nonblocking("Iallgather",
                                 self._allgather_plan(sendbuf, recvbuf, False, "Iallgather"))

    def Iallgatherv(self, sendbuf, recvbuf):
        return self._nonblocking("Iallgatherv",
                                 self._allgather_plan(sendbuf, recvbuf, True, "Iallgatherv"))

    def Ialltoall(self, sendbuf, recvbuf):
        return self._nonblocking("Ialltoall",
                                 self._alltoall_plan(sendbuf, recvbuf, False, "Ialltoall"))

    def Ialltoallv(self, sendbuf, recvbuf):
        return self._nonblocking("Ialltoallv",
                                 self._alltoall_plan(sendbuf, recvbuf, True, "Ialltoallv"))

    def Ireduce(self, sendbuf, recvbuf, op=_SUM, root=0):
        return self._nonblocking("Ireduce", self._reduce_plan(sendbuf, recvbuf, op, root))

    def Iallreduce(self, sendbuf, recvbuf, op=_SUM):
        return self._nonblocking("Iallreduce", self._allreduce_plan(sendbuf, recvbuf, op))

    def Ireduce_scatter_block(self, sendbuf, recvbuf, op=_SUM):
        return self._nonblocking("Ireduce_scatter_block",
                                 self._reduce_scatter_block_plan(sendbuf, recvbuf, op))

    def Ireduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=_SUM):
        return self._nonblocking("Ireduce_scatter",
                                 self._reduce_scatter_plan(sendbuf, recvbuf, recvcounts, op))

    def Iscan(self, sendbuf, recvbuf, op=_SUM):
        return self._nonblocking("Iscan", self._scan_plan(sendbuf, recvbuf, op, True))

    def Iexscan(self, sendbuf, recvbuf, op=_SUM):
        return self._nonblocking("Iexscan", self._scan_plan(sendbuf, recvbuf, op, False))

    # --- persistent (info is accepted and ignored) ---------------------------------

    def Barrier_init(self, info=_INFO_NULL):
        return self._persistent("Barrier_init", _barrier)

    def Bcast_init(self, buf, root=0, info=_INFO_NULL):
        return self._persistent("Bcast_init", self._bcast_plan(buf, root))

    def Scatter_init(self, sendbuf, recvbuf, root=0, info=_INFO_NULL):
        return self._persistent("Scatter_init",
                                self._scatter_plan(sendbuf, recvbuf, root, False, "Scatter_init"))

    def Scatterv_init(self, sendbuf, recvbuf, root=0, info=_INFO_NULL):
        return self._persistent("Scatterv_init",
                                self._scatter_plan(sendbuf, recvbuf, root, True, "Scatterv_init"))

    def Gather_init(self, sendbuf, recvbuf, root=0, info=_INFO_NULL):
        return self._persistent("Gather_init",
                                self._gather_plan(sendbuf, recvbuf, root, False, "Gather_init"))

    def Gatherv_init(self, sendbuf, recvbuf, root=0, info=_INFO_NULL):
        return self._persistent("Gatherv_init",
                                self._gather_plan(sendbuf, recvbuf, root, True, "Gatherv_init"))

    def Allgather_init(self, sendbuf, recvbuf, info=_INFO_NULL):
        return self._persistent("Allgather_init",
                                self._allgather_plan(sendbuf, recvbuf, False, "Allgather_init"))

    def Allgatherv_init(self, sendbuf, recvbuf, info=_INFO_NULL):
        return self._persistent("Allgatherv_init",
                                self._allgather_plan(sendbuf, recvbuf, True, "Allgatherv_init"))

    def Alltoall_init(self, sendbuf, recvbuf, info=_INFO_NULL):
        return self._persistent("Alltoall_init",
                                self._alltoall_plan(sendbuf, recvbuf, False, "Alltoall_init"))

    def Alltoallv_init(self, sendbuf, recvbuf, info=_INFO_NULL):
        return self._persistent("Alltoallv_init",
                                self._alltoall_plan(sendbuf, recvbuf, True, "Alltoallv_init"))

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


def _same_type_and_count(send, recv):
    if send.datatype != recv.datatype:
        raise BufferSpecError("mismatch in send and receive MPI datatypes")
    if send.count != recv.count:
        raise BufferSpecError(
            f"mismatch in send count {send.count} and receive count {recv.count}")
