"""Every mpi4py collective, built on point-to-point messages only.

``Collectives(p2p)`` wraps a communicator object with mpi4py's point-to-point
API (``Get_rank/Get_size``, ``Send/Recv/Isend/Irecv/Sendrecv`` with buffer
specs, ``send/recv/sendrecv`` for objects, requests with ``Wait``/``wait``).
The communicator hands in a private duplicate of itself, so collective
traffic never matches user messages.  Each method has mpi4py's name,
signature and return value.

Buffers are parsed by ``ivmpi.buffers`` and moved as raw bytes (MPI.BYTE);
reductions apply the operation with mpi4py's ``Op.Reduce_local``, which gives
the exact MPI semantics of every predefined and user-defined op.

Algorithms (p = number of ranks):
  barrier          dissemination, ceil(log2 p) rounds
  bcast            binomial tree; from 256 KiB on more than 2 ranks: the
                   root stages the message once in its heap in the region,
                   segment by segment, and every rank copies it straight
                   out (zero-copy rendezvous); strict-align mode (no heap
                   buffers) sends the same segments from the caller's buffer
  scatter/gather   linear from/to the root (each block travels once)
  allgather(v)     ring, p-1 steps; from 256 KiB blocks (the largest, for
                   allgatherv) every rank stages its block in its heap and
                   the others copy it out
  alltoall         pairwise exchange, p-1 steps
  allgather and alltoall of objects: every pickle sent straight to its
                   rank first, then every receive (one message per pair);
                   on more than 2 ranks pickles over the eager limit go
                   out of the sender's heap, copied out by each receiver
                   (also gather and scatter of objects)
  reduce           binomial tree; non-commutative ops reduce in rank order
                   at rank 0 and forward the result to the root
  allreduce        recursive doubling (extra ranks folded in pairs), rank
                   order preserved, so non-commutative ops are correct;
                   from 256 KiB reduce-scatter then allgather through the
                   heaps (each rank reduces one block in rank order)
  scan/exscan      a chain in segments (rank r gets the prefix of 0..r-1
                   from r-1, passes that of 0..r to r+1) on two ranks or
                   for more than one segment, else recursive doubling
  reduce_scatter   block j of every input to rank j in segments, each rank
                   reducing its own block in rank order
  (reduce from 256 KiB: reduce_scatter's streamed segments, then the
  blocks to the root in the same segments)
Scan, exscan and reduce_scatter send eager segments only (see
ivmpi/_prefix.pxi, whose Cython versions send the same messages).
The object (lowercase) reductions combine in rank order with ``op(a, b)``,
as mpi4py does.
"""
import inspect

from .lib import MPI

from .buffers import (parse_send, parse_recv, parse_vbuf, is_in_place,
                      datatype_extent, packed_spec, packed_vspec)
from ._fastcopy import (REDUCE_SCATTER_MIN, buffer_span, pair_copies, pair_segment,
                        prefix_chained, prefix_segment, single_copy_from, single_copy_to,
                        stage_into, stream_segment)
from .errors import BufferSpecError, IvmpiError
from .staging import STAGE_MIN_RANKS

_pickle = MPI.pickle

# Tags of the hidden collective communicator, one per operation.
TAG_BARRIER = 1
TAG_BCAST = 2
TAG_SCATTER = 3
TAG_GATHER = 4
TAG_ALLGATHER = 5
TAG_ALLTOALL = 6
TAG_REDUCE = 7
TAG_ALLREDUCE = 8
TAG_SCAN = 9
TAG_EXSCAN = 10
TAG_REDUCE_SCATTER = 11
TAG_OBJ = 12

# The tags of the collectives that also have a one-call Cython version
# (ivmpi._fastcopy.SmallCollectives), which must use the same ones.
COLLECTIVE_TAGS = {"Barrier": TAG_BARRIER, "Bcast": TAG_BCAST, "Scatter": TAG_SCATTER,
                   "Gather": TAG_GATHER, "Allgather": TAG_ALLGATHER, "Alltoall": TAG_ALLTOALL,
                   "Reduce": TAG_REDUCE, "Allreduce": TAG_ALLREDUCE, "Scan": TAG_SCAN,
                   "Exscan": TAG_EXSCAN, "Reduce_scatter": TAG_REDUCE_SCATTER}

# The nonblocking and persistent Bcast (ivmpi.nbcoll) switch from a
# binomial tree to the root sending every segment out of its heap at this
# size on more than 2 ranks (measured: at 1 MiB on 4 ranks the tree took
# 150-190 us, a chain through the ranks 340-460; at 16 MiB the chain was
# 3.6x the library's time).
PIPELINE_MIN_BYTES = 8 << 20

# From this many bytes, Bcast and Allgather (per block; both on more than 2
# ranks) and Allreduce stage their data once in this rank's heap in the
# region, and every other rank copies what it needs straight out of it (the
# zero-copy rendezvous), instead of passing it on from ring to ring.  On
# two ranks an Allgather is one exchange, whose rendezvous streams overlap
# the two copies (256 KiB blocks 50-58 against 77-91 us through the heaps).
REGION_MIN_BYTES = 256 * 1024
# Reduce and Allreduce of this many bytes reduce-scatter, streamed
# (REDUCE_SCATTER_MIN, from ivmpi/_small_collectives.pxi, whose one-call
# versions send the same messages and decide by the same size).
# Bcast and Allgather stage and send in segments of at least this size (at
# most 64 per message), so that receivers copy one segment out while the
# sender stages the next (4 ranks, 1 MiB Bcast: 300-305 us in one segment,
# 242-280 in 256 KiB ones, 272-279 in 128 KiB ones; 16 MiB: 3600-3750 in
# eight, 3340-3450 in 64).
REGION_SEGMENT_BYTES = 262144


def _copy_object(obj):
    # mpi4py hands back pickled copies, never the caller's own object.
    return _pickle.loads(_pickle.dumps(obj))


def _same_start(a, b):
    return not len(a) or not len(b) or buffer_span(a)[0] == buffer_span(b)[0]


def _overlap(a, b):
    (x, n), (y, m) = buffer_span(a), buffer_span(b)
    return n and m and x < y + m and y < x + n


def _padded(n):
    # Each staged block starts on a cache line of its own.
    return (n + 63) // 64 * 64


_PREDEFINED_OPS = frozenset(getattr(MPI, name).handle for name in (
    "SUM", "PROD", "MAX", "MIN", "LAND", "BAND", "LOR", "BOR", "LXOR", "BXOR",
    "MAXLOC", "MINLOC", "REPLACE", "NO_OP"))
_VALID_PAIRS = set()


def check_op(op, datatype):
    """The library's error for a predefined op that MPI does not define on
    datatype (MAX on complex numbers, BAND on doubles, ...), raised by
    every rank before any message: a rank that only sends would otherwise
    wait for a partner that failed combining."""
    handle = getattr(op, "handle", None)
    if handle not in _PREDEFINED_OPS:
        return
    key = (handle, datatype.handle)
    if key not in _VALID_PAIRS:
        op.Reduce_local([_NOTHING, 0, datatype], [_NOTHING, 0, datatype])
        _VALID_PAIRS.add(key)


_NOTHING = bytearray(0)


def streams_reduction(size, data, count, datatype, eager_limit):
    """Does a reduction of data over size ranks stream a reduce-scatter?
    The rule of the blocking, nonblocking and persistent calls alike (the
    same algorithm, the same bits; every rank decides alike: the sizes are
    the same everywhere)."""
    return (size > 1 and len(data) >= REDUCE_SCATTER_MIN and len(data) > eager_limit
            and count >= size and len(data) == count * datatype_extent(datatype))


def _check_block(dst, src, what):
    if len(dst) < len(src):
        raise BufferSpecError(
            f"{what}: receive buffer holds {len(dst)} bytes but the "
            f"message has {len(src)}")
    dst[:len(src)] = src


def reduce_blocks(nbytes, count, size):
    """(element extent, byte bounds, element counts) of the size blocks a
    large reduction of count elements in nbytes is split into, one per
    rank (a streamed Reduce's reduce-scatter; the blocking and the
    nonblocking forms must agree on them)."""
    extent = nbytes // count
    bounds = [j * count // size * extent for j in range(size + 1)]
    return extent, bounds, [(bounds[j + 1] - bounds[j]) // extent for j in range(size)]


class Collectives:
    """The collectives of one communicator, over its point-to-point calls."""

    def __init__(self, p2p):
        self.p2p = p2p
        self.rank = p2p.Get_rank()
        self.size = p2p.Get_size()
        self._staged = None         # this rank's staging buffer in its heap

    def free(self):
        """Free the hidden communicator and give the staging buffer back."""
        if self._staged is not None:
            engine = self.p2p._engine
            with engine.lock:
                engine.heap.release(self._staged)
            self._staged = None
        self.p2p.Free()

    # --- the region's heap -------------------------------------------------

    def _stage(self, mem):
        """Where mem's bytes go so that receivers copy them straight out of
        this rank's heap (the zero-copy rendezvous): None when mem is there
        already (Alloc_mem) or nothing can be staged (strict-align mode, a
        full heap, no region), else a heap buffer of len(mem) bytes."""
        if self._in_heap(mem):
            return None
        return self._heap_buffer(len(mem))

    def _in_heap(self, mem):
        heap = getattr(getattr(self.p2p, "_engine", None), "heap", None)
        return bool(heap is not None and heap.used and len(mem)
                    and heap.contains(*buffer_span(mem)) is not None)

    def _heap_buffer(self, nbytes):
        """This rank's reused staging buffer in its heap, nbytes long, or
        None (strict-align mode, a full heap, no region)."""
        engine = getattr(self.p2p, "_engine", None)
        heap = getattr(engine, "heap", None)
        if heap is None or heap.mem.strict or not nbytes:
            return None
        stage = self._staged
        if stage is None or len(stage) < nbytes:
            with engine.lock:
                if stage is not None:
                    heap.release(stage)
                    self._staged = None
                try:
                    # Room to grow, so that sizes creeping up do not reallocate each time.
                    self._staged = heap.alloc(1 << (nbytes - 1).bit_length())
                except IvmpiError:
                    return None
            stage = self._staged
        return stage[:nbytes]

    def _large(self, blocks, skip):
        """Do the blocks (but blocks[skip]) call for the heaps: more than two
        ranks and one of them over the eager limit (a rendezvous anyway)?"""
        if self.size < STAGE_MIN_RANKS:
            return False
        limit = getattr(getattr(self.p2p, "_engine", None), "eager_limit", None)
        return limit is not None and any(
            len(block) > limit for j, block in enumerate(blocks) if j != skip)

    def _isend_staged(self, blocks, order, tag, requests):
        """Send blocks[j] to rank j for j in order, each copied into this
        rank's staging buffer just before it goes, so that every receiver
        copies it straight out of the heap whenever it runs (one
        announcement, no rendezvous round trip): the ranks need not run in
        step, which matters most when they share cores."""
        # A rank that copies large messages from our memory (ranks of one
        # kernel, ivmpi/_single_copy.pxi) takes its block from there at
        # once, announced in one call too: staging would add a copy.
        direct = {j for j in order if self._reads_ours(j)}
        total = sum(len(blocks[j]) for j in order if j not in direct)
        stage = self._heap_buffer(total) if total else None
        base = self._region_offset(stage)
        at = 0
        for j in order:
            piece = blocks[j]
            n = len(piece)
            if base is not None and n and j not in direct and not self._in_heap(piece):
                piece = self._fill(stage[at:at + n], piece)
                self._announce(piece, base + at, j, tag, requests)
                at += n
            else:
                requests.append(self.p2p.Isend(piece, j, tag))

    def _reads_ours(self, j):
        """Does rank j copy our large messages from our memory?"""
        ranks = getattr(self.p2p, "_ranks", None)
        return ranks is not None and single_copy_to(ranks[j])

    def _we_read(self, j):
        """Do we copy rank j's large messages from its memory?  (What
        j's _reads_ours answers for us: both ends split alike.)"""
        ranks = getattr(self.p2p, "_ranks", None)
        return ranks is not None and single_copy_from(ranks[j])

    def _region_offset(self, stage):
        """Where a staging buffer from _heap_buffer lies in the region (None
        for no buffer)."""
        if stage is None:
            return None
        return self.p2p._engine.heap.contains(*buffer_span(stage))

    def _announce(self, piece, at, dest, tag, requests):
        """Send piece, staged in this rank's heap at region offset `at`, to
        dest: announced in one call (the receiver copies it straight out,
        and the request completes on its acknowledgement) instead of an
        engine send; one within the eager limit goes as a plain send."""
        fast = self.p2p._fast
        op = None
        if len(piece) > self._eager_limit():
            op = fast.announce_staged(dest, tag, len(piece), at)
        if op is None:
            requests.append(self.p2p.Isend(piece, dest, tag))
        else:
            requests.append(fast.new_request(self.p2p, op, None, ("collective", "to", dest)))

    @staticmethod
    def _fill(stage, mem):
        """Copy mem into stage, a staging buffer in this rank's heap (never
        one in strict-align mode, see _heap_buffer), by stage_into.
        Returns stage."""
        try:
            stage_into(stage, mem)
        except BufferError:             # not contiguous bytes
            stage[:] = mem
        return stage

    def _staged_pickles(self, datas):
        """The pickles to send, those over the eager limit copied into this
        rank's staging buffer in its heap (each distinct one once): sent
        from there they are one announcement each, which the receiver
        answers by copying the pickle straight out whenever it runs, instead
        of a rendezvous whose chunks both ranks must stream in step.  The
        sends must complete (every receiver's acknowledgement) before the
        buffer is used again.  Returns (pickles, region offsets): the offset
        of each staged one, None for the others; with nothing staged (no
        room in the heap) the pickles as they are and None."""
        engine = getattr(self.p2p, "_engine", None)
        limit = getattr(engine, "eager_limit", None)
        if limit is None:
            return datas, None
        first = {}
        for data in datas:
            if len(data) > limit:
                first.setdefault(id(data), data)
        if not first:
            return datas, None
        stage = self._heap_buffer(sum(_padded(len(data)) for data in first.values()))
        base = None if stage is None else engine.heap.contains(*buffer_span(stage))
        if base is None:
            return datas, None
        at, offsets = 0, {}
        for key, data in first.items():
            n = len(data)
            # Plain stores, unlike _fill's: a pickle is most likely copied
            # out at once, from this core's cache (as _send_bytes_staged's).
            block = stage[at:at + n]
            block[:] = data
            first[key] = block
            offsets[key] = base + at
            at += _padded(n)
        return ([first.get(id(data), data) for data in datas],
                [offsets.get(id(data)) for data in datas])

    def _send_pickles(self, datas, dests, tags, what, stage=None):
        """Send the pickle datas[i] to rank dests[i] with tag tags[i]: by the
        fast path when it fits the ring, else a large one out of this rank's
        heap (see _staged_pickles) when `stage` says so, announced in one
        call (by default on communicators of at least STAGE_MIN_RANKS
        ranks: on two, one per core, a rendezvous streams the pickle
        through the ring while the receiver copies it out), else as an
        engine send.  Returns the requests to complete before the next
        call."""
        p2p = self.p2p
        fast = p2p._fast
        if stage is None:
            stage = self.size >= STAGE_MIN_RANKS
        requests, staged, offsets = [], None if stage else datas, None
        for i, dest in enumerate(dests):
            if not fast.send(datas[i], dest, tags[i]):
                if not stage:
                    # In a heap block of its own, or copied from our memory.
                    op = fast.isend_pickle(datas[i], dest, tags[i])
                    if op is True:
                        continue
                    if op is not None:
                        requests.append(fast.new_request(p2p, op, None, (what, "to", dest)))
                        continue
                if staged is None:
                    staged, offsets = self._staged_pickles(datas)
                op = None
                if offsets is not None and offsets[i] is not None:
                    op = fast.announce_staged(dest, tags[i], len(staged[i]), offsets[i])
                if op is None:
                    requests.append(p2p._isend_bytes(memoryview(staged[i]), dest, tags[i],
                                                     False, what))
                else:
                    requests.append(fast.new_request(p2p, op, None, (what, "to", dest)))
        return requests

    def _isend_objects(self, items, dests, tag, what):
        """Send items[i] to rank dests[i], pickled (an object repeated in a
        row, once) and sent by _send_pickles; returns the requests and the
        pickles.  Over a communicator of mpi4py's own (the tests'
        reference) the objects go by its isend (no pickles returned)."""
        p2p = self.p2p
        if getattr(p2p, "_fast", None) is None:
            return [p2p.isend(item, dest, tag) for item, dest in zip(items, dests)], []
        dumps = _pickle.dumps
        datas = []
        last = data = None
        for item in items:
            if item is not last or data is None:
                last, data = item, dumps(item)
            datas.append(data)
        return self._send_pickles(datas, dests, [tag] * len(dests), what), datas

    def _recv_objects(self, result, tag):
        """Receive into result[source] the object of every other rank, in
        the order they sent theirs (each to rank + 1 first)."""
        size, rank, recv = self.size, self.rank, self.p2p.recv
        for step in range(1, size):
            source = (rank - step) % size
            result[source] = recv(None, source, tag)
        return result

    @staticmethod
    def _segments(nbytes):
        step = max(REGION_SEGMENT_BYTES, -(-nbytes // 64))
        return [(start, min(start + step, nbytes)) for start in range(0, nbytes, step)]

    def _send_staged(self, mem, dests, tag, requests):
        """Send mem to every rank of dests, segment by segment, each segment
        staged in the heap just before it goes; to a rank that copies from
        our memory, all of mem in one message straight from where it is
        (staging would add a copy, segments a rendezvous each).  The
        receiver takes it by _recv_staged."""
        readers = [dest for dest in dests if self._reads_ours(dest)]
        if len(mem):
            requests += [self.p2p.Isend(mem, dest, tag) for dest in readers]
        dests = [dest for dest in dests if dest not in readers]
        if not dests:
            return
        stage = self._stage(mem)
        base = self._region_offset(stage)
        for start, end in self._segments(len(mem)):
            if base is None:
                piece = mem[start:end]
                requests += [self.p2p.Isend(piece, dest, tag) for dest in dests]
                continue
            piece = self._fill(stage[start:end], mem[start:end])
            for dest in dests:
                self._announce(piece, base + start, dest, tag, requests)

    def _recv_staged(self, mem, source, tag):
        """Receive what source's _send_staged sends us into mem."""
        if self._we_read(source):
            if len(mem):
                self.p2p.Recv(mem, source, tag)
            return
        for start, end in self._segments(len(mem)):
            self.p2p.Recv(mem[start:end], source, tag)

    # --- helpers ---------------------------------------------------------

    def _check_root(self, root):
        if not 0 <= root < self.size:
            raise MPI.Exception(MPI.ERR_ROOT)

    def _sendrecv(self, sendmem, dest, recvmem, source, tag):
        self.p2p.Sendrecv(sendmem, dest, tag, recvmem, source, tag)

    @staticmethod
    def _wait_all(requests):
        for request in requests:
            request.Wait()

    # --- barrier and broadcast ---------------------------------------------

    def Barrier(self):
        """Dissemination barrier: round k talks to rank +/- 2**k."""
        size, rank = self.size, self.rank
        empty_send, empty_recv = bytearray(0), bytearray(0)
        distance = 1
        while distance < size:
            self._sendrecv(empty_send, (rank + distance) % size,
                           empty_recv, (rank - distance) % size, TAG_BARRIER)
            distance <<= 1

    def barrier(self):
        self.Barrier()

    def Bcast(self, buf, root=0):
        self._check_root(root)
        if self.rank == root:
            self._bcast_bytes(parse_send(buf, holes=True).mem, root)
        else:
            received = parse_recv(buf, holes=True)
            self._bcast_bytes(received.mem, root)
            if received.unpack is not None:     # a derived datatype with holes
                received.unpack()

    def _bcast_bytes(self, mem, root):
        if self.size == 1:
            return
        if len(mem) >= REGION_MIN_BYTES and self.size > 2:
            self._bcast_region(mem, root)
        else:
            self._bcast_binomial(mem, root)

    def _bcast_region(self, mem, root):
        # The root's data once in its heap; every rank copies it out at once
        # (a blocking receive copies it in one call).
        if self.rank != root:
            self._recv_staged(mem, root, TAG_BCAST)
            return
        requests = []
        self._send_staged(mem, [i for i in range(self.size) if i != root], TAG_BCAST,
                          requests)
        self._wait_all(requests)

    def _bcast_binomial(self, mem, root):
        size = self.size
        vrank = (self.rank - root) % size
        mask = 1
        while mask < size:
            if vrank & mask:
                self.p2p.Recv(mem, (vrank - mask + root) % size, TAG_BCAST)
                break
            mask <<= 1
        children = []
        mask >>= 1
        while mask > 0:
            if vrank + mask < size:
                children.append((vrank + mask + root) % size)
            mask >>= 1
        if not children:
            return
        requests = [self.p2p.Isend(mem, child, TAG_BCAST) for child in children[:-1]]
        # The last one a blocking send: waiting for it, this rank's core may
        # share a large copy with its receiver (ivmpi/_single_copy.pxi).
        self.p2p.Send(mem, children[-1], TAG_BCAST)
        self._wait_all(requests)

    def bcast(self, obj, root=0):
        # A binomial tree of the root's pickle: each rank passes on the bytes
        # it received (pickled once, unpickled once), a large pickle out of
        # its heap to all its children at once (_send_pickles).
        self._check_root(root)
        size = self.size
        vrank = (self.rank - root) % size
        data = _pickle.dumps(obj) if vrank == 0 else None
        mask = 1
        while mask < size:
            if vrank & mask:
                data = self._recv_pickle((vrank - mask + root) % size, TAG_BCAST, "bcast")
                break
            mask <<= 1
        children = []
        mask >>= 1
        while mask > 0:
            if vrank + mask < size:
                children.append((vrank + mask + root) % size)
            mask >>= 1
        if getattr(self.p2p, "_fast", None) is None:        # mpi4py's own (the tests')
            self._wait_all([self.p2p.Isend(data, child, TAG_BCAST) for child in children])
        elif children:
            self._wait_all(self._send_pickles([data] * len(children), children,
                                              [TAG_BCAST] * len(children), "bcast"))
        return _pickle.loads(data)

    def _recv_pickle(self, source, tag, what):
        """The pickle from source with tag as bytes, through the engine (or
        mpi4py's own communicator, the tests' reference)."""
        p2p = self.p2p
        if getattr(p2p, "_fast", None) is None:
            status = MPI.Status()
            p2p.Probe(source, tag, status)
            data = bytearray(status.Get_count(MPI.BYTE))
            p2p.Recv(data, source, tag)
            return data
        request = p2p._irecv_bytes(None, source, tag, None, what)
        op = request._op
        request.Wait()
        return op.data

    # --- scatter and gather ------------------------------------------------

    def Scatter(self, sendbuf, recvbuf, root=0):
        if self._receive_block(recvbuf, root, TAG_SCATTER):
            return
        size = self.size
        send = parse_send(sendbuf, blocks=size)
        block = send.nbytes // size
        self._scatter_blocks([send.mem[i * block:(i + 1) * block] for i in range(size)],
                             recvbuf, root, "Scatter")

    def Scatterv(self, sendbuf, recvbuf, root=0):
        if self._receive_block(recvbuf, root, TAG_SCATTER):
            return
        send = parse_vbuf(sendbuf, self.size, recv=False)
        self._scatter_blocks([send.block(i) for i in range(self.size)], recvbuf, root, "Scatterv")

    def _receive_block(self, recvbuf, root, tag):
        """Non-root ranks of a scatter receive their block; True for them."""
        self._check_root(root)
        if self.rank == root:
            return False
        self.p2p.Recv(parse_recv(recvbuf).mem, root, tag)
        return True

    def _scatter_blocks(self, blocks, recvbuf, root, what):
        """The root sends block i to rank i and keeps its own (unless IN_PLACE)."""
        others = [(root + step) % self.size for step in range(1, self.size)]
        if self._large(blocks, root):
            requests = []
            self._isend_staged(blocks, others, TAG_SCATTER, requests)
        else:
            requests = [self.p2p.Isend(blocks[i], i, TAG_SCATTER) for i in others]
        if not is_in_place(recvbuf):
            _check_block(parse_recv(recvbuf).mem, blocks[root], what)
        self._wait_all(requests)

    def Gather(self, sendbuf, recvbuf, root=0):
        if self._send_block(sendbuf, root, TAG_GATHER):
            return
        size = self.size
        recv = parse_recv(recvbuf, blocks=size)
        block = recv.nbytes // size
        self._gather_blocks([recv.mem[i * block:(i + 1) * block] for i in range(size)],
                            sendbuf, root, "Gather")

    def Gatherv(self, sendbuf, recvbuf, root=0):
        if self._send_block(sendbuf, root, TAG_GATHER):
            return
        recv = parse_vbuf(recvbuf, self.size, recv=True)
        self._gather_blocks([recv.block(i) for i in range(self.size)], sendbuf, root, "Gatherv")

    def _send_block(self, sendbuf, root, tag):
        """Non-root ranks of a gather send their block; True for them."""
        self._check_root(root)
        if self.rank == root:
            return False
        self.p2p.Send(parse_send(sendbuf).mem, root, tag)
        return True

    def _gather_blocks(self, blocks, sendbuf, root, what):
        """The root receives block i from rank i and copies its own (unless IN_PLACE)."""
        requests = [self.p2p.Irecv(blocks[i], i, TAG_GATHER)
                    for i in range(self.size) if i != root]
        if not is_in_place(sendbuf):
            _check_block(blocks[root], parse_send(sendbuf).mem, what)
        self._wait_all(requests)

    def scatter(self, sendobj, root=0):
        self._check_root(root)
        size, rank = self.size, self.rank
        if rank != root:
            return self.p2p.recv(source=root, tag=TAG_SCATTER)
        items = list(sendobj) if sendobj is not None else [None] * size
        if len(items) != size:
            raise ValueError(f"expecting {size} items, got {len(items)}")
        others = [i for i in range(size) if i != root]
        requests, _ = self._isend_objects([items[i] for i in others], others, TAG_SCATTER,
                                          "scatter")
        mine = _copy_object(items[root])
        for request in requests:
            request.wait()
        return mine

    def gather(self, sendobj, root=0):
        self._check_root(root)
        size, rank = self.size, self.rank
        if rank != root:
            self._wait_all(self._isend_objects([sendobj], [root], TAG_GATHER, "gather")[0])
            return None
        return [_copy_object(sendobj) if i == root
                else self.p2p.recv(source=i, tag=TAG_GATHER) for i in range(size)]

    # --- allgather and alltoall ----------------------------------------------

    def Allgather(self, sendbuf, recvbuf):
        size, rank = self.size, self.rank
        recv = parse_recv(recvbuf, blocks=size)
        block = recv.nbytes // size
        blocks = [recv.mem[i * block:(i + 1) * block] for i in range(size)]
        mine = None
        if not is_in_place(sendbuf):
            mine = parse_send(sendbuf).mem
            _check_block(blocks[rank], mine, "Allgather")
        if block >= REGION_MIN_BYTES and size >= STAGE_MIN_RANKS:
            self._region_allgather(blocks, mine)
        else:
            self._ring_allgather(blocks, mine)

    def Allgatherv(self, sendbuf, recvbuf):
        size, rank = self.size, self.rank
        recv = parse_vbuf(recvbuf, size, recv=True)
        blocks = [recv.block(i) for i in range(size)]
        mine = None
        if not is_in_place(sendbuf):
            mine = parse_send(sendbuf).mem
            _check_block(blocks[rank], mine, "Allgatherv")
        # Every rank knows every count, so all decide alike.
        if max(len(block) for block in blocks) >= REGION_MIN_BYTES and size >= STAGE_MIN_RANKS:
            self._region_allgather(blocks, mine)
        else:
            self._ring_allgather(blocks, mine)

    def _region_allgather(self, blocks, mine=None):
        # Every rank's block once in its heap, announced first (that never
        # waits for the receivers); each rank then copies the others'
        # straight out of theirs in blocking receives (one call each).
        # Ranks that copy from our memory read the caller's send buffer
        # (mine) when there is one: lines this core just wrote into the
        # receive buffer cost a reader more.
        size, rank = self.size, self.rank
        if mine is None or len(mine) != len(blocks[rank]):
            mine = blocks[rank]
        requests = []
        self._send_staged(mine, [(rank + step) % size for step in range(1, size)],
                          TAG_ALLGATHER, requests)
        for step in range(1, size):
            j = (rank - step) % size
            self._recv_staged(blocks[j], j, TAG_ALLGATHER)
        self._wait_all(requests)

    def _ring_allgather(self, blocks, mine=None):
        # Step s: pass on the block that arrived in step s-1 (first our own,
        # from the caller's send buffer when there is one: a rank copying
        # from our memory reads lines this core just wrote into the receive
        # buffer more slowly; 1 MiB on 2 ranks 137-142 -> 113-123 us).
        size, rank = self.size, self.rank
        right, left = (rank + 1) % size, (rank - 1) % size
        for step in range(size - 1):
            out = blocks[(rank - step) % size]
            if step == 0 and mine is not None and len(mine) == len(out):
                out = mine
            self._sendrecv(out, right, blocks[(rank - step - 1) % size], left, TAG_ALLGATHER)

    def allgather(self, sendobj):
        # Every rank's pickle straight to every other (a large one once in
        # its heap, copied out by each), then every receive: one message
        # per pair, and no rank waits for another to pass a pickle on.
        size, rank = self.size, self.rank
        dests = [(rank + step) % size for step in range(1, size)]
        requests, datas = self._isend_objects([sendobj] * (size - 1), dests, TAG_ALLGATHER,
                                              "allgather")
        result = self._recv_objects([None] * size, TAG_ALLGATHER)
        result[rank] = _pickle.loads(datas[0]) if datas else _copy_object(sendobj)
        self._wait_all(requests)
        return result

    def Alltoall(self, sendbuf, recvbuf):
        size = self.size
        recv = parse_recv(recvbuf, blocks=size)
        block = recv.nbytes // size
        if is_in_place(sendbuf):
            sendmem = memoryview(bytes(recv.mem))  # blocks are overwritten as we go
        else:
            sendmem = parse_send(sendbuf, blocks=size).mem
        send_blocks = [sendmem[i * (len(sendmem) // size):(i + 1) * (len(sendmem) // size)]
                       for i in range(size)]
        recv_blocks = [recv.mem[i * block:(i + 1) * block] for i in range(size)]
        self._pairwise_alltoall(send_blocks, recv_blocks, "Alltoall")

    def Alltoallv(self, sendbuf, recvbuf):
        size = self.size
        recv = parse_vbuf(recvbuf, size, recv=True)
        recv_blocks = [recv.block(i) for i in range(size)]
        if is_in_place(sendbuf):
            send_blocks = [bytes(b) for b in recv_blocks]
        else:
            send = parse_vbuf(sendbuf, size, recv=False)
            send_blocks = [send.block(i) for i in range(size)]
        self._pairwise_alltoall(send_blocks, recv_blocks, "Alltoallv")

    def _pairwise_alltoall(self, send_blocks, recv_blocks, what):
        size, rank = self.size, self.rank
        _check_block(recv_blocks[rank], send_blocks[rank], what)
        if self._large(send_blocks, rank):
            # Every block sent out of the heap (announcements never wait for
            # the receiver), then every block received in the pairwise
            # steps' order: the same messages as those steps (one per pair
            # and direction), so ranks on either path still meet.
            requests = []
            self._isend_staged(send_blocks, [(rank + step) % size for step in range(1, size)],
                               TAG_ALLTOALL, requests)
            for step in range(1, size):
                self.p2p.Recv(recv_blocks[(rank - step) % size], (rank - step) % size,
                              TAG_ALLTOALL)
            self._wait_all(requests)
            return
        for step in range(1, size):
            dest, source = (rank + step) % size, (rank - step) % size
            self._sendrecv(send_blocks[dest], dest, recv_blocks[source], source, TAG_ALLTOALL)

    def alltoall(self, sendobj):
        size, rank = self.size, self.rank
        # mpi4py reads None as a None for every rank.
        items = [None] * size if sendobj is None else list(sendobj)
        if len(items) != size:
            raise ValueError(f"expecting {size} items, got {len(items)}")
        # As allgather: every pickle out first, then every receive.
        dests = [(rank + step) % size for step in range(1, size)]
        requests, _ = self._isend_objects([items[dest] for dest in dests], dests, TAG_ALLTOALL,
                                          "alltoall")
        result = self._recv_objects([None] * size, TAG_ALLTOALL)
        result[rank] = _copy_object(items[rank])
        self._wait_all(requests)
        return result

    # --- buffer reductions -----------------------------------------------------

    def _reduction_args(self, sendbuf, recvbuf, at_root=True):
        """(input bytes, receive Buf or None, count, datatype), mpi4py's checks."""
        if not at_root:
            send = parse_send(sendbuf)
            return send.mem, None, send.count, send.datatype
        recv = parse_recv(recvbuf)
        if is_in_place(sendbuf):
            return recv.mem, recv, recv.count, recv.datatype
        send = parse_send(sendbuf)
        if send.datatype != recv.datatype:
            raise BufferSpecError("mismatch in send and receive MPI datatypes")
        if send.count != recv.count:
            raise BufferSpecError(
                f"mismatch in send count {send.count} and receive count {recv.count}")
        return send.mem, recv, recv.count, recv.datatype

    @staticmethod
    def _combine(op, inmem, inoutmem, count, datatype):
        """inoutmem = inmem (op) inoutmem, with MPI's semantics for op."""
        op.Reduce_local([inmem, count, datatype], [inoutmem, count, datatype])

    def _reduce_bytes(self, data, count, datatype, op, root, tag):
        """Reduce every rank's ``data``; returns the result (bytearray) at root."""
        size, rank = self.size, self.rank
        acc = bytearray(data)
        tmp = bytearray(len(acc))
        # Commutative ops build the tree around the root; the others reduce in
        # rank order at rank 0 and forward, since the tree keeps lower ranks left.
        commutative = op.Is_commutative()
        base = root if commutative else 0
        vrank = (rank - base) % size
        mask = 1
        while mask < size:
            if vrank & mask:
                self.p2p.Send(acc, (vrank - mask + base) % size, tag)
                break
            if vrank + mask < size:
                self.p2p.Recv(tmp, (vrank + mask + base) % size, tag)
                self._combine(op, acc, tmp, count, datatype)  # tmp = acc op tmp
                acc, tmp = tmp, acc
            mask <<= 1
        if base != root:
            if rank == base:
                self.p2p.Send(acc, root, tag)
            elif rank == root:
                self.p2p.Recv(acc, base, tag)
        return acc if rank == root else None

    def Reduce(self, sendbuf, recvbuf, op=MPI.SUM, root=0):
        self._check_root(root)
        data, recv, count, datatype = self._reduction_args(
            sendbuf, recvbuf, at_root=self.rank == root)
        check_op(op, datatype)
        if self._region_sized(data, count, datatype):
            if self._pair():
                self._pair_reduce(data, recv, count, datatype, op, root, TAG_REDUCE)
            else:
                self._region_reduce(data, recv, count, datatype, op, root)
            return
        result = self._reduce_bytes(data, count, datatype, op, root, TAG_REDUCE)
        if recv is not None:
            recv.mem[:] = result

    def _world(self):
        """The communicator's world ranks (a list), None without them."""
        ranks = getattr(self.p2p, "_ranks", None)
        return None if ranks is None else list(ranks)

    def _pair(self):
        """Two ranks that copy each other's messages from their memory
        (the same answer on both)?"""
        world = self._world()
        return world is not None and pair_copies(self.size, self.rank, world)

    def _pair_reduce(self, data, recv, count, datatype, op, root, tag):
        """A large reduce (root None: allreduce) on a _pair: the whole
        input to the other rank (the root) in one message, each copied
        once from its owner's buffer; the result is rank 0's op rank 1's
        (SmallCollectives._pair_reduce sends the same messages)."""
        peer = 1 - self.rank
        if root is not None and self.rank != root:
            self.p2p.Send(data, peer, tag)
            return
        theirs = bytearray(len(data))
        if root is None:
            self._sendrecv(data, peer, theirs, peer, tag)
        else:
            self.p2p.Recv(theirs, peer, tag)
        if self.rank == 0:
            self._combine(op, data, theirs, count, datatype)     # theirs = mine op theirs
            recv.mem[:] = theirs
        else:
            if not _same_start(data, recv.mem):
                recv.mem[:] = data
            self._combine(op, theirs, recv.mem, count, datatype)  # out = theirs op mine

    def _region_sized(self, data, count, datatype):
        """Large enough for the streamed reductions (streams_reduction)."""
        return streams_reduction(self.size, data, count, datatype, self._eager_limit())

    def _region_reduce(self, data, recv, count, datatype, op, root):
        # A reduce-scatter streamed in eager segments (as Reduce_scatter),
        # then every block to the root in the same segments: the messages
        # of the one-call Reduce (SmallCollectives._streamed_reduce).
        size, rank = self.size, self.rank
        extent, bounds, counts = reduce_blocks(len(data), count, size)
        mine = bounds[rank + 1] - bounds[rank]
        if rank == root:
            target = memoryview(recv.mem)[bounds[rank]:bounds[rank + 1]]
        else:
            target = memoryview(bytearray(mine))
        self._reduce_then_scatter(data, counts, datatype, extent, op, target, TAG_REDUCE)
        requests = []
        if rank != root:
            seg = self._segment(mine, extent)
            requests = [self.p2p.Isend(target[at:at + seg], root, TAG_REDUCE)
                        for at in range(0, mine, seg)]
        else:
            out = memoryview(recv.mem)
            for j in range(size):
                if j != rank:
                    lo, hi = bounds[j], bounds[j + 1]
                    seg = self._segment(hi - lo, extent)
                    requests += [self.p2p.Irecv(out[at:min(at + seg, hi)], j, TAG_REDUCE)
                                 for at in range(lo, hi, seg)]
        self._wait_all(requests)

    def Allreduce(self, sendbuf, recvbuf, op=MPI.SUM):
        data, recv, count, datatype = self._reduction_args(sendbuf, recvbuf)
        check_op(op, datatype)
        size, rank = self.size, self.rank
        if self._region_sized(data, count, datatype):
            if self._pair():
                self._pair_reduce(data, recv, count, datatype, op, None, TAG_ALLREDUCE)
            else:
                self._region_allreduce(data, recv.mem, count, datatype, op)
            return
        acc = bytearray(data)
        tmp = bytearray(len(acc))
        # Fold the ranks beyond the largest power of two into their even
        # neighbours, so recursive doubling runs on 2**k ranks; every rank's
        # new number keeps the original order (non-commutative ops stay right).
        pof2 = 1
        while pof2 * 2 <= size:
            pof2 *= 2
        extra = size - pof2
        if rank < 2 * extra:
            if rank % 2 == 0:
                self.p2p.Send(acc, rank + 1, TAG_ALLREDUCE)
                newrank = -1
            else:
                self.p2p.Recv(tmp, rank - 1, TAG_ALLREDUCE)
                self._combine(op, tmp, acc, count, datatype)  # acc = left op acc
                newrank = rank // 2
        else:
            newrank = rank - extra
        if newrank >= 0:
            mask = 1
            while mask < pof2:
                newpartner = newrank ^ mask
                partner = newpartner * 2 + 1 if newpartner < extra else newpartner + extra
                self._sendrecv(acc, partner, tmp, partner, TAG_ALLREDUCE)
                if newpartner < newrank:
                    self._combine(op, tmp, acc, count, datatype)  # acc = theirs op acc
                else:
                    self._combine(op, acc, tmp, count, datatype)  # tmp = acc op theirs
                    acc, tmp = tmp, acc
                mask <<= 1
        if rank < 2 * extra:
            if rank % 2:
                self.p2p.Send(acc, rank - 1, TAG_ALLREDUCE)
            else:
                self.p2p.Recv(acc, rank + 1, TAG_ALLREDUCE)
        recv.mem[:] = acc

    def _region_allreduce(self, data, out, count, datatype, op):
        """The reduce-scatter of _region_reduce, then every rank's result
        block to every other rank in the same segments, segment k to all
        before segment k from all: the messages of the one-call Allreduce
        (SmallCollectives._streamed_allreduce)."""
        size, rank = self.size, self.rank
        extent, bounds, counts = reduce_blocks(len(data), count, size)
        out = memoryview(out)
        lo, hi = bounds[rank], bounds[rank + 1]
        # In place, the input is still read while the result block is written.
        target = memoryview(bytearray(hi - lo)) if _overlap(data, out) else out[lo:hi]
        self._reduce_then_scatter(data, counts, datatype, extent, op, target, TAG_ALLREDUCE)
        if not _same_start(target, out[lo:hi]):
            out[lo:hi] = target
        segments = [self._segment(bounds[j + 1] - bounds[j], extent) for j in range(size)]
        rounds = max(-(-(bounds[j + 1] - bounds[j]) // segments[j]) for j in range(size))
        for k in range(rounds):
            requests = []
            start = lo + k * segments[rank]
            if start < hi:
                piece = out[start:min(start + segments[rank], hi)]
                requests = [self.p2p.Isend(piece, (rank + step) % size, TAG_ALLREDUCE)
                            for step in range(1, size)]
            for step in range(1, size):
                j = (rank - step) % size
                start = bounds[j] + k * segments[j]
                if start < bounds[j + 1]:
                    self.p2p.Recv(out[start:min(start + segments[j], bounds[j + 1])], j,
                                  TAG_ALLREDUCE)
            self._wait_all(requests)

    def _segment(self, nbytes, extent):
        """Bytes per segment of a streamed message (the same on every rank)."""
        return stream_segment(nbytes, extent, self._eager_limit())

    def _eager_limit(self):
        engine = getattr(self.p2p, "_engine", None)
        return getattr(engine, "eager_limit", 1 << 16)

    def _prefix(self, sendbuf, recvbuf, op, inclusive, tag):
        data, recv, count, datatype = self._reduction_args(sendbuf, recvbuf)
        check_op(op, datatype)
        size = self.size
        if size == 1:
            if inclusive and data is not recv.mem:
                recv.mem[:] = data
            return
        extent = len(data) // count if count else 1
        world = self._world()
        segment = (self._segment(len(data), extent) if world is None else
                   prefix_segment(size, self.rank, world, len(data), extent,
                                  self._eager_limit()))
        if prefix_chained(size, len(data), segment):
            self._prefix_chain(data, recv.mem, extent, segment, datatype, op, inclusive, tag)
        else:
            self._prefix_doubling(data, recv, count, datatype, op, inclusive, tag)

    def _prefix_chain(self, data, out, extent, segment, datatype, op, inclusive, tag):
        """Rank r takes the prefix of ranks 0..r-1 from r-1 and sends that of
        0..r on to r+1, segment by segment (eager messages: the next rank
        works on one while this one sends the next)."""
        size, rank = self.size, self.rank
        n = len(data)
        data = memoryview(data)
        if rank == 0:
            for start in range(0, n, segment):
                self.p2p.Send(data[start:start + segment], 1, tag)
            if inclusive and not _same_start(data, out):
                out[:] = data
            return
        out = memoryview(out)
        in_place = _same_start(data, out)
        last = rank == size - 1
        theirs = memoryview(bytearray(min(segment, n)))
        onward = memoryview(bytearray(min(segment, n))) if not (last or inclusive) else None
        for start in range(0, n, segment):
            m = min(segment, n - start)
            piece = theirs[:m]
            self.p2p.Recv(piece, rank - 1, tag)
            if inclusive:
                mine = out[start:start + m]
                if not in_place:
                    mine[:] = data[start:start + m]
                self._combine(op, piece, mine, m // extent, datatype)   # theirs op mine
                if not last:
                    self.p2p.Send(mine, rank + 1, tag)
                continue
            if not last:
                onward[:m] = data[start:start + m]
                self._combine(op, piece, onward[:m], m // extent, datatype)
                self.p2p.Send(onward[:m], rank + 1, tag)
            out[start:start + m] = piece

    def _prefix_doubling(self, data, recv, count, datatype, op, inclusive, tag):
        """Recursive doubling (one segment, more than two ranks)."""
        size, rank = self.size, self.rank
        n = len(data)
        partial = bytearray(data)          # reduction over my whole subcube so far
        tmp = bytearray(n)
        result = bytearray(data) if inclusive else None   # over the ranks below me (and me)
        have_result = inclusive
        mask = 1
        while mask < size:
            partner = rank ^ mask
            # In the last round only the upper partner still needs what the
            # other has: the lower one's partial sum is not used again.
            if partner < size and mask << 1 >= size:
                if partner > rank:
                    self.p2p.Send(partial, partner, tag)
                else:
                    self.p2p.Recv(tmp, partner, tag)
                    if have_result:
                        self._combine(op, tmp, result, count, datatype)
                    else:
                        result = tmp
                        have_result = True
            elif partner < size:
                self._sendrecv(partial, partner, tmp, partner, tag)
                if partner < rank:
                    self._combine(op, tmp, partial, count, datatype)
                    if have_result:
                        self._combine(op, tmp, result, count, datatype)
                    else:
                        result = bytearray(tmp)
                        have_result = True
                else:
                    self._combine(op, partial, tmp, count, datatype)
                    partial, tmp = tmp, partial
            mask <<= 1
        if have_result:     # Exscan leaves rank 0's buffer untouched
            recv.mem[:] = result

    def Scan(self, sendbuf, recvbuf, op=MPI.SUM):
        self._prefix(sendbuf, recvbuf, op, True, TAG_SCAN)

    def Exscan(self, sendbuf, recvbuf, op=MPI.SUM):
        self._prefix(sendbuf, recvbuf, op, False, TAG_EXSCAN)

    def Reduce_scatter_block(self, sendbuf, recvbuf, op=MPI.SUM):
        size = self.size
        if is_in_place(sendbuf):
            recv = parse_recv(recvbuf, blocks=size)
            data, count, datatype = recv.mem, recv.count, recv.datatype
            target = recv.mem[:recv.nbytes // size]
        else:
            recv = parse_recv(recvbuf)
            send = parse_send(sendbuf, blocks=size)
            if send.datatype != recv.datatype:
                raise BufferSpecError("mismatch in send and receive MPI datatypes")
            if send.count != recv.count:
                raise BufferSpecError(
                    f"mismatch in send count {send.count} and receive count {recv.count}")
            data, count, datatype, target = send.mem, send.count, send.datatype, recv.mem
        check_op(op, datatype)
        extent = datatype_extent(datatype)
        self._reduce_then_scatter(data, [count] * size, datatype, extent, op, target)

    def Reduce_scatter(self, sendbuf, recvbuf, recvcounts=None, op=MPI.SUM):
        size, rank = self.size, self.rank
        recv = parse_recv(recvbuf)
        check_op(op, recv.datatype)
        in_place = is_in_place(sendbuf)
        if recvcounts is None:
            if in_place:
                raise BufferSpecError("Reduce_scatter with IN_PLACE needs recvcounts")
            recvcounts = self.allgather(recv.count)
        recvcounts = [int(c) for c in recvcounts]
        if len(recvcounts) != size or min(recvcounts) < 0:
            raise BufferSpecError(
                f"recvcounts must be {size} non-negative counts, got {recvcounts}")
        total = sum(recvcounts)
        datatype = recv.datatype
        extent = datatype_extent(datatype)
        if in_place:
            if recv.count != total:
                raise BufferSpecError(
                    f"mismatch in receive count {recv.count} and sum(counts) {total}")
            data = recv.mem
            target = recv.mem[:recvcounts[rank] * extent]
        else:
            send = parse_send(sendbuf)
            if send.datatype != datatype:
                raise BufferSpecError("mismatch in send and receive MPI datatypes")
            if send.count != total:
                raise BufferSpecError(
                    f"mismatch in send count {send.count} and sum(counts) {total}")
            if recv.count != recvcounts[rank]:
                raise BufferSpecError(
                    f"mismatch in receive count {recv.count} and "
                    f"counts[{rank}] {recvcounts[rank]}")
            data, target = send.mem, recv.mem
        self._reduce_then_scatter(data, recvcounts, datatype, extent, op, target)

    def _reduce_then_scatter(self, data, counts, datatype, extent, op, target,
                             tag=TAG_REDUCE_SCATTER):
        """Block j of every rank's input goes to rank j, segment by segment,
        and each rank reduces its own block in rank order, x0 op (x1 op
        (... op xp-1)); segment k of every block is sent before segment k
        is received."""
        size, rank = self.size, self.rank
        data = memoryview(data)
        target = memoryview(target)
        if len(target) < counts[rank] * extent:
            raise BufferSpecError(f"receive buffer of {len(target)} bytes for a block of "
                                  f"{counts[rank] * extent}")
        if _overlap(data, target):
            data = memoryview(bytes(data))      # IN_PLACE: the result overwrites the input
        bounds = [0]
        for c in counts:
            bounds.append(bounds[-1] + c * extent)
        lengths = [c * extent for c in counts]
        world = self._world()
        segments = [self._segment(length, extent) if world is None else
                    pair_segment(size, rank, world, length, extent, self._eager_limit())
                    for length in lengths]
        rounds = max(-(-length // seg) for length, seg in zip(lengths, segments))
        mine, seg = lengths[rank], segments[rank]
        own = data[bounds[rank]:bounds[rank + 1]]
        piece = memoryview(bytearray(min(seg, mine)))
        for k in range(rounds):
            requests = []
            for step in range(1, size):
                j = (rank + step) % size
                start = k * segments[j]
                if start < lengths[j]:
                    end = min(start + segments[j], lengths[j])
                    requests.append(self.p2p.Isend(data[bounds[j] + start:bounds[j] + end],
                                                   j, tag))
            start = k * seg
            if start < mine:
                m = min(seg, mine - start)
                out = target[start:start + m]
                for j in range(size - 1, -1, -1):
                    if j == rank:
                        theirs = own[start:start + m]
                    else:
                        theirs = piece[:m]
                        self.p2p.Recv(theirs, j, tag)
                    if j == size - 1:
                        out[:] = theirs
                    else:
                        self._combine(op, theirs, out, m // extent, datatype)
            self._wait_all(requests)

    # --- object reductions -----------------------------------------------------

    def reduce(self, sendobj, op=MPI.SUM, root=0):
        self._check_root(root)
        result = self._reduce_objects(sendobj, op)
        if root != 0:
            if self.rank == 0:
                self.p2p.send(result, root, TAG_REDUCE)
            elif self.rank == root:
                result = self.p2p.recv(source=0, tag=TAG_REDUCE)
        return result if self.rank == root else None

    def _reduce_objects(self, sendobj, op):
        """Binomial tree to rank 0 in rank order: lower ranks on the left of
        op.  A rank that combines does so on a private copy of its object
        (op may change its arguments, and the result must not be the
        caller's); one that only sends (half of them) pickles its object
        once, with no copy first: the copy's pickling and unpickling would
        be on the way to the root."""
        size, rank = self.size, self.rank
        result = sendobj
        private = False
        mask = 1
        while mask < size:
            if rank & mask:
                self.p2p.send(result, rank & ~mask, TAG_REDUCE)
                break
            if rank | mask < size:
                if not private:
                    result, private = _copy_object(sendobj), True
                result = op(result, self.p2p.recv(source=rank | mask, tag=TAG_REDUCE))
            mask <<= 1
        if rank != 0:
            return None
        return result if private else _copy_object(sendobj)

    def allreduce(self, sendobj, op=MPI.SUM):
        return self.bcast(self._reduce_objects(sendobj, op), root=0)

    def _prefix_objects(self, sendobj, op, inclusive, tag):
        size, rank = self.size, self.rank
        partial = _copy_object(sendobj)
        result, have_result = (partial, True) if inclusive else (None, False)
        mask = 1
        while mask < size:
            partner = rank ^ mask
            if partner < size:
                theirs = self.p2p.sendrecv(partial, partner, tag, source=partner, recvtag=tag)
                if partner < rank:
                    partial = op(theirs, partial)
                    result = op(theirs, result) if have_result else theirs
                    have_result = True
                else:
                    partial = op(partial, theirs)
            mask <<= 1
        return result

    def scan(self, sendobj, op=MPI.SUM):
        return self._prefix_objects(sendobj, op, True, TAG_SCAN)

    def exscan(self, sendobj, op=MPI.SUM):
        return self._prefix_objects(sendobj, op, False, TAG_EXSCAN)


# --- derived datatypes with holes ---------------------------------------------
# The algorithms above move contiguous blocks.  A buffer spec whose datatype
# has holes (a column, a face, a struct with padding) is packed into a
# staging buffer of its basic elements before the call and, for a receive,
# scattered back after it (ivmpi.buffers.packed_spec).  Roles: "plain" one
# block, "blocks" one block per rank, "vector" counts and displacements;
# a buffer significant at the root only is packed there only.

_HOLE_ROLES = {
    # name: (send role, receive role, which is read at the root only)
    "Scatter": ("blocks", "plain", "send"),
    "Scatterv": ("vector", "plain", "send"),
    "Gather": ("plain", "blocks", "recv"),
    "Gatherv": ("plain", "vector", "recv"),
    "Allgather": ("plain", "blocks", None),
    "Allgatherv": ("plain", "vector", None),
    "Alltoall": ("blocks", "blocks", None),
    "Alltoallv": ("vector", "vector", None),
    "Reduce": ("plain", "plain", "recv"),
    "Allreduce": ("plain", "plain", None),
    "Scan": ("plain", "plain", None),
    "Exscan": ("plain", "plain", None),
    "Reduce_scatter_block": ("blocks", "plain", None),
    "Reduce_scatter": ("plain", "plain", None),
}


def _pack_role(spec, role, size, writable, fill):
    if role == "vector":
        return packed_vspec(spec, size, writable, fill)
    return packed_spec(spec, writable, size if role == "blocks" else 1, fill)


def _with_holes(name, method):
    send_role, recv_role, at_root = _HOLE_ROLES[name]
    params = list(inspect.signature(method).parameters)
    # Where root sits among the arguments after (self, sendbuf, recvbuf).
    root_at = params.index("root") - 3 if "root" in params else None

    def call(self, sendbuf, recvbuf, *args, **kwargs):
        if (type(sendbuf) is not list and type(sendbuf) is not tuple
                and type(recvbuf) is not list and type(recvbuf) is not tuple):
            return method(self, sendbuf, recvbuf, *args, **kwargs)
        is_root = True
        if root_at is not None:
            root = kwargs.get("root", args[root_at] if len(args) > root_at else 0)
            is_root = root == self.rank
        in_place = is_in_place(sendbuf)
        finish = None
        if not in_place and (at_root != "send" or is_root):
            sendbuf, _ = _pack_role(sendbuf, send_role, self.size, False, False)
        if recvbuf is not None and (at_root != "recv" or is_root):
            # In place, the receive buffer is read too (and holds every
            # rank's block for Reduce_scatter_block).
            role = "blocks" if in_place and name == "Reduce_scatter_block" else recv_role
            recvbuf, finish = _pack_role(recvbuf, role, self.size, True, in_place)
        result = method(self, sendbuf, recvbuf, *args, **kwargs)
        if finish is not None:
            finish()
        return result
    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


for _name in _HOLE_ROLES:
    setattr(Collectives, _name, _with_holes(_name, getattr(Collectives, _name)))
