"""The progress engine: matching, eager and rendezvous protocols, waiting.

One Engine per process owns the rings of this rank (docs/layout.md) and
works in world ranks and raw bytes; communicators translate ranks, parse
buffers and pickle objects on top of it.

Matching follows MPI: a receive takes the first message, in arrival order,
whose (source, tag, context) it accepts; each peer's ring is a FIFO, so
messages between a pair never overtake each other.  Messages nobody has
asked for yet wait in `unexpected`: an eager one with a private copy of its
payload, a rendezvous one as its envelope only (its payload stays with the
sender until a receive matches it).

Threads (MPI_THREAD_MULTIPLE): every public method takes the engine's
re-entrant lock (`lock`, shared with the communicators' fast paths) for
its own work only.  A wait takes it for one round of progress at a time
and idles without it, so another thread of this process can meanwhile
send the message a blocked receive waits for, or receive its own.
"""
import functools
import os
import time
from collections import deque

from . import _fastcopy
from ._fastcopy import (Incoming, LibraryCounts, LibraryRecv, LibrarySend, RecvOp, Rendezvous,
                        SendOp, deliver_eager, poll_eager, rendezvous_step)
from . import routing
from .heap import Heap
from .liveness import Liveness
from .errors import CorruptRegionError, IvmpiError, IvmpiTimeoutError, PeerError

ANY_SOURCE = -1
ANY_TAG = -1
MAX_MESSAGE = 1 << 48
try:
    _PHYSICAL_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
except (ValueError, OSError, AttributeError):
    _PHYSICAL_MEMORY = MAX_MESSAGE

EAGER, EAGER_SYNC, RTS, CTS, DATA, ACK, RTS_REGION = (
    _fastcopy.KIND_EAGER, _fastcopy.KIND_EAGER_SYNC, _fastcopy.KIND_RTS,
    _fastcopy.KIND_CTS, _fastcopy.KIND_DATA, _fastcopy.KIND_ACK, _fastcopy.KIND_RTS_REGION)

# An Incoming that arrived through the MPI library (ivmpi.routing): its
# `data` is the library's matched message.  Never a frame kind of a ring.
LIBRARY = 100

# Point-to-point operations in the MPI library's hands (ivmpi/_route.pxi).
_LIBRARY_OPS = (LibraryRecv, LibrarySend)

# Error codes carried by requests (mpi4py's MPI.ERR_* values are used by the
# communicator when it turns them into MPI exceptions).
ERR_TRUNCATE = "truncate"


def _env_float(name, default):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise IvmpiError(f"{name}={value!r} is not a number of seconds") from None


# Buffer sends of this many bytes or more to a peer that copies them from
# our memory go by rendezvous (one copy) even under the eager limit
# (FastPath.copy_min): from 12 KiB one copy beats the ring's two in a
# ping-pong, an exchange and Sendrecv alike (docs/performance.md).
COPY_MIN = 12288


def _copy_min(default=COPY_MIN):
    """IVMPI_COPY_MIN when set, else default (over the eager limit: one copy
    only for messages that are not eager anyway)."""
    value = os.environ.get("IVMPI_COPY_MIN")
    if not value:
        return default
    try:
        return max(0, int(value))
    except ValueError:
        raise IvmpiError(f"IVMPI_COPY_MIN={value!r} is not a number of bytes") from None


def _wanted(want_source, want_tag, want_context, source, tag, context):
    """MPI matching: a receive's (source, tag, context), wildcards allowed,
    against a message's envelope."""
    return (want_context == context and (want_source == ANY_SOURCE or want_source == source)
            and (want_tag == ANY_TAG or want_tag == tag))


def _text(what):
    return what if type(what) is str else what._description()


def _accepts(op, source, tag, context):
    return _wanted(op.source, op.tag, op.context, source, tag, context)


def _advance(op):
    """How far an operation has got (matched, acknowledged, bytes moved):
    changes whenever it advances, which restarts a wait's timeout.  `done`
    is left out: a wait ends when that changes, and a probe's condition
    would probe again to answer it."""
    return (getattr(op, "state", None), getattr(op, "total", None),
            getattr(op, "received", None), getattr(op, "offset", None))


class Engine:
    def __init__(self, region, geometry, rank, world_size=None, members=None):
        """rank is this process's world rank; members the world ranks that
        share the region, in slot order (default: every rank, slot = world
        rank).  Peers outside members have no ring: their messages go
        through the MPI library (ivmpi.routing)."""
        self.region = region
        self.mem = region.mem
        self.geo = geometry
        self.rank = rank
        self.size = geometry.nranks if world_size is None else world_size
        self.members = list(range(geometry.nranks)) if members is None else list(members)
        if len(self.members) != geometry.nranks or rank not in self.members:
            raise IvmpiError(f"rank {rank}: the region's {geometry.nranks} slots do not fit "
                             f"its group {self.members}")
        # World rank -> slot (and ring index) in the region, for the members.
        self.slot_of = {w: i for i, w in enumerate(self.members)}
        self.slot = self.slot_of[rank]
        self.eager_limit = geometry.eager_limit
        self.copy_min = _copy_min()
        self.chunk_bytes = geometry.chunk_bytes
        ring_bytes = geometry.ring_bytes
        self.tx = [None] * self.size
        self.rx = [None] * self.size
        me = self.slot
        # The heads of the rings into this rank, side by side, by slot: which
        # rings hold frames is found there, not by visiting every ring.
        self.inbox = _fastcopy.Inbox(self.mem, geometry.inbox(me), geometry.nranks, me)
        self.rx_by_slot = [None] * geometry.nranks
        for peer, other in self.slot_of.items():
            if peer != rank:
                self.tx[peer] = _fastcopy.TxRing(self.mem, geometry.ring(me, other), ring_bytes,
                                                 peer, geometry.head(me, other))
                self.rx[peer] = _fastcopy.RxRing(self.mem, geometry.ring(other, me), ring_bytes,
                                                 peer, geometry.head(other, me))
                self.inbox.attach(self.rx[peer], other)
                self.rx_by_slot[other] = self.rx[peer]
        heap_offset, heap_bytes = geometry.heap(me)
        self.heap = Heap(self.mem, heap_offset, heap_bytes)
        self.posted = []                                 # RecvOps in post order
        self.unexpected = []                             # Incoming in arrival order
        self.outq = [deque() for _ in range(self.size)]  # frames waiting for ring space
        self.backlog = set()                             # peers whose outq is not empty
        self.next_send_id = [1] * self.size
        self.awaiting_cts = {}                           # (peer, send id) -> SendOp
        # Blocking sends waiting for their CTS whose receiver may ask them to
        # share the copy (_single_copy.pxi): (peer, send id) -> SendOp.
        self.sharing = {}
        self.awaiting_ack = {}                           # (peer, send id) -> SendOp
        self.receiving = {}                              # (peer, send id) -> RecvOp
        # The same tables, for the rendezvous steps the waits take in C.
        self.rendezvous = Rendezvous(self.receiving, self.awaiting_cts, self._post_stream,
                                     self.chunk_bytes, 0)
        # The heaps a peer's region rendezvous may point into, checked there.
        self.rendezvous.heaps = {peer: geometry.heap(other)
                                 for peer, other in self.slot_of.items() if peer != rank}
        # Heap blocks of nonblocking sends of pickles a little over the eager limit.
        self.send_blocks = _fastcopy.SendBlocks(self.heap, self.eager_limit, self.rx,
                                                self.awaiting_ack)
        # Nonblocking collectives in progress (ivmpi.nbcoll): each round of
        # progress polls them, so that they advance whatever a wait is for.
        self.schedules = []
        # Owners of window memory (ivmpi.win): each round of progress lets
        # them apply the requests that arrived, whatever a wait is for, and
        # a request read from a ring goes to its owner at once
        # (context -> owner, whose `tag` marks requests).
        self.services = []
        self.service_contexts = {}
        # Communicators whose peers include ranks outside the region
        # (context -> ivmpi.routing.Route), and the library's requests in
        # flight for them: each round of progress polls both.
        self.routes = {}
        self.library_pending = []
        # The library's point-to-point operations that the communicators
        # started themselves (ivmpi/_route.pxi): progress tests them.
        self.library_ops = []
        # Messages and bytes through the library, per peer world rank: all
        # of them, and those that went straight (never in the engine's queues).
        self.library_sent = LibraryCounts(self.size)
        self.library_received = LibraryCounts(self.size)
        self.library_sent_direct = LibraryCounts(self.size)
        self.library_received_direct = LibraryCounts(self.size)
        self.timeout = _env_float("IVMPI_TIMEOUT", 0.0)
        self.set_oversubscribed(False)
        self.liveness = Liveness(self.mem, self.size, rank, self.slot_of)
        for peer, rx in enumerate(self.rx):
            if rx is not None:
                # A sender that dies while it fills a frame in parts is
                # reported as any dead peer is, one that stops filling after
                # IVMPI_TIMEOUT when set (RxRing.wait_filled).
                rx.stall_check = functools.partial(self.liveness.check, peer,
                                                   f"a message from rank {peer}")
                if self.timeout > 0:
                    rx.fill_timeout = self.timeout
        self.lock = _fastcopy.EngineLock()
        # The queues and tables above as C fields, for the rounds in C.
        self.core = _fastcopy.EngineCore(self)
        self._stage = None          # a heap block large sends with holes are gathered into
        self._stage_busy = False

    # --- the staging block of large sends with holes ---------------------------

    def take_stage(self, nbytes):
        """(heap view of nbytes, its region offset) for one blocking send of
        a derived datatype at a time: its elements are gathered there and the
        receiver scatters them straight out (the region rendezvous).  None
        when the block is in use, in strict-align mode, or the heap is full."""
        if self.mem.strict:
            return None
        with self.lock:     # one taker at a time, whatever the threads
            if self._stage_busy:
                return None
            stage = self._stage
            if stage is None or len(stage) < nbytes:
                if stage is not None:
                    self.heap.release(stage)
                    self._stage = None
                try:
                    # Room to grow, so that sizes creeping up do not reallocate each time.
                    self._stage = self.heap.alloc(1 << (nbytes - 1).bit_length())
                except IvmpiError:
                    return None
                stage = self._stage
            self._stage_busy = True
        return stage[:nbytes], self.heap.contains(*_fastcopy.buffer_span(stage))

    def give_stage(self):
        """The receiver has copied the staged send: the block may be reused."""
        self._stage_busy = False

    def shares_region(self, world_ranks):
        """Do all these ranks reach this process through the region?"""
        slot_of = self.slot_of
        return all(w in slot_of for w in world_ranks)

    # --- sending --------------------------------------------------------------

    def isend(self, dest, mem, tag, context, sync=False):
        with self.lock:
            return self._isend(dest, mem, tag, context, sync)

    def _isend(self, dest, mem, tag, context, sync):
        op = SendOp(dest, mem, tag, context, sync)
        if dest == self.rank:
            self._send_to_self(op)
            return op
        if self.tx[dest] is None:
            return routing.send(self, op)
        size = len(mem)
        if size > MAX_MESSAGE:
            raise IvmpiError(f"message of {size} bytes exceeds ivmpi's limit of {MAX_MESSAGE}")
        if size <= self.eager_limit:
            if sync:
                op.send_id = self._new_send_id(dest)
                self.awaiting_ack[(dest, op.send_id)] = op
                op.state = "awaiting ack"
                self._post(dest, (EAGER_SYNC, tag, context, 0, op.send_id, mem, 0, size, None))
            else:
                self._post(dest, (EAGER, tag, context, 0, 0, mem, 0, size, op))
        else:
            op.send_id = self._new_send_id(dest)
            offset = self.heap.contains(*_fastcopy.buffer_span(mem)) if self.heap.used else None
            if offset is not None:
                # The payload already sits in our heap: the receiver copies it from there.
                self.awaiting_ack[(dest, op.send_id)] = op
                op.state = "awaiting the receiver's copy"
                self._post(dest, (RTS_REGION, tag, context, size, op.send_id,
                                  offset.to_bytes(8, "little"), 0, 8, None))
            else:
                self.awaiting_cts[(dest, op.send_id)] = op
                op.state = "awaiting clear-to-send"
                # A receiver on our kernel may copy it from our memory (_single_copy.pxi).
                address = _fastcopy.single_copy_payload(self.mem, dest, mem)
                self._post(dest, (RTS, tag, context, size, op.send_id, address, 0,
                                  0 if address is None else 8, None))
        return op

    def _new_send_id(self, dest):
        send_id = self.next_send_id[dest]
        self.next_send_id[dest] = send_id + 1
        return send_id

    def _post(self, dest, frame):
        """Publish a frame now if nothing is queued before it, else queue it."""
        queue = self.outq[dest]
        if not queue and self._publish(dest, frame):
            return
        queue.append(frame)
        self.backlog.add(dest)

    def _publish(self, dest, frame):
        kind, tag, context, a, b, mem, offset, length, op = frame
        if not self.tx[dest].send(kind, tag, context, a, b, mem, offset, length):
            return False
        if op is not None:
            op.done = True
        return True

    def _flush(self, dest):
        queue = self.outq[dest]
        tx = self.tx[dest]
        while queue:
            frame = queue[0]
            if frame[0] == DATA:
                if not self._stream(dest, tx, frame[8]):
                    return
            elif not self._publish(dest, frame):
                return
            queue.popleft()
        self.backlog.discard(dest)

    def _stream(self, dest, tx, op):
        """Publish the next chunks of a cleared rendezvous send; True when all are out."""
        op.offset = tx.stream(op.mem, op.offset, self.chunk_bytes, op.send_id, self.stream_spins,
                              self.rx[dest])
        if op.offset < len(op.mem):
            return False
        op.done = True
        op.state = "done"
        return True

    def _send_to_self(self, op):
        data = bytearray(op.mem)
        incoming = Incoming(self.rank, op.tag, op.context, len(data), data, 0, EAGER,
                           self_send=op if op.sync else None)
        if not op.sync:
            op.done = True
        self._arrive(incoming)

    # --- receiving ------------------------------------------------------------

    def irecv(self, source, tag, context, mem, hint=None):
        """Post a receive (mem None: an object's; hint: the buffer its
        caller offered, RecvOp.hint)."""
        op = RecvOp(source, tag, context, mem)
        op.hint = hint
        with self.lock:
            incoming = self._take_unexpected(source, tag, context)
            if incoming is not None:
                self._deliver(incoming, op)
            else:
                self.posted.append(op)
        return op

    def _unexpected_index(self, source, tag, context):
        """Index of the first unexpected message the receive would match, or -1."""
        for i, msg in enumerate(self.unexpected):
            if _wanted(source, tag, context, msg.source, msg.tag, msg.context):
                return i
        return -1

    def _take_unexpected(self, source, tag, context):
        i = self._unexpected_index(source, tag, context)
        return self.unexpected.pop(i) if i >= 0 else None

    def find_unexpected(self, source, tag, context):
        with self.lock:
            i = self._unexpected_index(source, tag, context)
            return self.unexpected[i] if i >= 0 else None

    def iprobe(self, source, tag, context):
        with self.lock:
            msg = self.find_unexpected(source, tag, context)
            if msg is None:
                if context in self.routes:
                    routing.take(self, context)     # what the library holds for it
                self.progress()
                msg = self.find_unexpected(source, tag, context)
            return msg

    def improbe(self, source, tag, context):
        with self.lock:
            msg = self.iprobe(source, tag, context)
            if msg is not None:
                self.unexpected.remove(msg)
            return msg

    def recv_matched(self, incoming, mem):
        """Receive a message taken by a matched probe (Message.Recv)."""
        op = RecvOp(incoming.source, incoming.tag, incoming.context, mem)
        with self.lock:
            self._deliver(incoming, op)
        return op

    def cancel(self, op):
        """Cancel a receive that has not matched yet (sends cannot be cancelled)."""
        with self.lock:
            if type(op) is LibraryRecv:
                return op.cancel()
            if isinstance(op, RecvOp) and not op.done and op in self.posted:
                self.posted.remove(op)
                op.cancelled = True
                op.done = True
                return True
            return False

    def _arrive(self, incoming):
        """A message arrived (from a ring or from ourselves): match or keep."""
        for i, op in enumerate(self.posted):
            if _accepts(op, incoming.source, incoming.tag, incoming.context):
                del self.posted[i]
                self._deliver(incoming, op)
                return
        self.unexpected.append(incoming)

    def _deliver(self, incoming, op):
        """Hand a matched message (eager payload or rendezvous envelope) to a receive."""
        op.status_source = incoming.source
        op.status_tag = incoming.tag
        op.total = incoming.size
        if incoming.kind == RTS:
            self._accept_rendezvous(incoming, op)
            return
        if incoming.kind == RTS_REGION:
            self._copy_from_heap(incoming, op)
            return
        if incoming.kind == LIBRARY:
            routing.receive(self, incoming, op)
            return
        data = incoming.data
        if op.mem is None:
            op.data = data
        elif len(data) > len(op.mem):
            op.error = ERR_TRUNCATE
        elif data:
            op.mem[:len(data)] = data
        op.count = len(data) if op.error is None else 0
        op.done = True
        self._acknowledge(incoming)

    def _acknowledge(self, incoming):
        if incoming.self_send is not None:
            incoming.self_send.done = True
        elif incoming.kind == EAGER_SYNC:
            self._post(incoming.source, (ACK, 0, 0, 0, incoming.send_id, None, 0, 0, None))

    def _object_buffer(self, incoming):
        """A buffer for an object receive: refuses a size no machine here could hold,
        which only a corrupt or hostile peer announces."""
        if incoming.size > _PHYSICAL_MEMORY:
            raise CorruptRegionError(
                f"peer {incoming.source}: a message of {incoming.size} bytes announced for an "
                f"object receive is larger than this machine's memory ({_PHYSICAL_MEMORY} bytes)")
        # Every byte is written by the message before anyone reads it.
        return _fastcopy.unfilled_bytearray(incoming.size)

    def _copy_from_heap(self, incoming, op):
        size = incoming.size
        if op.mem is None:
            op.data = _fastcopy.object_room(op, size)
            if op.data is None:
                op.data = self._object_buffer(incoming)
            self.mem.read(incoming.offset, op.data)
        elif size > len(op.mem):
            op.error = ERR_TRUNCATE
        else:
            self.mem.read(incoming.offset, op.mem, size)
        op.count = size if op.error is None else 0
        op.done = True
        # Only now may the sender reuse its buffer.
        self._post(incoming.source, (ACK, 0, 0, 0, incoming.send_id, None, 0, 0, None))

    def _accept_rendezvous(self, incoming, op):
        size = incoming.size
        # An object's buffer is new unless its caller offered one that holds
        # it: a new one's pages fault in as the message is copied, which the
        # streamed chunks overlap with the sender's copies and one copy from
        # the sender's memory cannot (measured: a 1 MiB object 1.3x slower
        # that way).
        fresh = False
        if op.mem is None:
            op.mem = op.data = _fastcopy.object_room(op, size)
            if op.data is None:
                fresh = True
                op.data = self._object_buffer(incoming)
                op.mem = memoryview(op.data)
        elif size > len(op.mem):
            # Still clear the send so that the sender completes and the ring
            # stays in step; the chunks are read and dropped.
            op.error = ERR_TRUNCATE
            op.discard = True
        key = (incoming.source, incoming.send_id)
        if key in self.receiving:
            raise CorruptRegionError(
                f"peer {incoming.source}: send id {incoming.send_id} announced twice")
        if op.error is None and not fresh and _fastcopy.single_copy_into(self.mem, incoming.source,
                                                          incoming.offset, op.mem, size):
            # Copied from the sender's memory: the CTS tells it so, nothing streams.
            op.count = size
            op.done = True
            self._post(incoming.source, (CTS, 0, 0, size, incoming.send_id, None, 0, 0, None))
            return
        self.receiving[key] = op
        self._post(incoming.source, (CTS, 0, 0, 0, incoming.send_id, None, 0, 0, None))

    # --- progress -------------------------------------------------------------

    def progress(self):
        """Move every queued frame that fits and handle every frame that arrived.

        Returns True when anything moved (a frame published or handled).
        """
        with self.lock:
            moved = self._progress()
            if self.routes or self.library_pending or self.library_ops:
                moved = routing.progress(self) or moved
            if self.schedules:
                moved = _fastcopy.advance_schedules(self) or moved
            for service in self.services:
                moved = service.poll() or moved
            return moved

    def test_progress(self):
        """One round of progress for a call that returns to the program when
        nothing is there yet (a test).  With more ranks than cores a round
        that moved nothing gives the core away, as Open MPI's progress does
        when oversubscribed (mpi_yield_when_idle): a program testing in a
        loop would otherwise keep the rank it waits for off the core for a
        time slice, milliseconds per message."""
        idle = _fastcopy.idle_progress(self.core)    # only collectives to move: in C
        if idle:
            return idle == 2
        return self.test_round()

    def test_round(self):
        """test_progress's round in Python: the engine's whole progress,
        then the core given away if nothing moved and ranks outnumber cores."""
        moved = self.progress()
        if not moved and self.oversubscribed:
            _fastcopy.yield_idle()
        return moved

    def _progress(self):
        moved = self._flush_backlog() if self.backlog else False
        if self.sharing:
            moved = _fastcopy.serve_shares(self.sharing) or moved
        rx, first_ready = self.rx_by_slot, self.inbox.first_ready
        posted, limit = self.posted, self.eager_limit
        tx, backlog, rendezvous = self.tx, self.backlog, self.rendezvous
        i = first_ready(0)
        while i >= 0:
            ring = rx[i]
            while ring.poll():
                if not deliver_eager(ring, posted, limit) and not rendezvous_step(
                        ring, posted, limit, tx[ring.peer], backlog, rendezvous):
                    self._handle(ring)
            moved = True
            i = first_ready(i + 1)
        return moved

    def poll_peer(self, peer, op=None):
        """Progress limited to one peer (a receive from a known source),
        stopping once `op` is done: frames after it stay in the ring, where
        the next receive can take them without a private copy."""
        with self.lock:
            return self._poll_peer(peer, op)

    def _poll_peer(self, peer, op):
        moved = self._flush_backlog() if self.backlog else False
        if self.sharing:
            moved = _fastcopy.serve_shares(self.sharing) or moved
        rx = self.rx[peer]
        posted, limit = self.posted, self.eager_limit
        while rx.poll():
            if not deliver_eager(rx, posted, limit) and not rendezvous_step(
                    rx, posted, limit, self.tx[peer], self.backlog, self.rendezvous):
                self._handle(rx)
            moved = True
            if op is not None and op.done:
                break
        return moved

    def _flush_backlog(self):
        moved = False
        for dest in list(self.backlog):
            tx = self.tx[dest]
            head = tx.head_index
            self._flush(dest)
            moved = moved or tx.head_index != head
        return moved

    def _handle(self, rx):
        kind = rx.kind
        peer = rx.peer
        if kind == EAGER or kind == EAGER_SYNC:
            if rx.length > self.eager_limit:
                raise CorruptRegionError(
                    f"peer {peer}: eager frame of {rx.length} bytes exceeds the eager limit "
                    f"{self.eager_limit}")
            self._check_tag(rx)
            tag, context = rx.tag, rx.context
            if self.service_contexts:
                service = self.service_contexts.get(context)
                if service is not None and tag == service.tag:
                    data = rx.payload()
                    rx.consume()
                    service.arrive(peer, data)
                    return
            # Straight into a posted receive when one matches: no private copy.
            for i, op in enumerate(self.posted):
                if _accepts(op, peer, tag, context):
                    del self.posted[i]
                    self._deliver_from_ring(rx, op)
                    rx.consume()
                    return
            incoming = Incoming(peer, tag, context, rx.length, rx.payload(), rx.b, kind)
            rx.consume()
            self.unexpected.append(incoming)
        elif kind == RTS:
            self._check_tag(rx)
            # Over the eager limit; with the sender's address (a peer that
            # copies is sent smaller buffers by rendezvous too) any size.
            floor = 0 if rx.length == 8 else self.eager_limit
            if rx.length not in (0, 8) or not floor < rx.a <= MAX_MESSAGE:
                raise CorruptRegionError(
                    f"peer {peer}: rendezvous announcement of {rx.a} bytes with a "
                    f"{rx.length}-byte payload is impossible")
            # An 8-byte payload: the sender's address, to copy from (offset 0: none).
            address = int.from_bytes(rx.payload(), "little") if rx.length else 0
            incoming = Incoming(peer, rx.tag, rx.context, rx.a, None, rx.b, RTS, offset=address)
            rx.consume()
            self._arrive(incoming)
        elif kind == RTS_REGION:
            self._check_tag(rx)
            total = rx.a
            if rx.length != 8 or not self.eager_limit < total <= MAX_MESSAGE:
                raise CorruptRegionError(
                    f"peer {peer}: region rendezvous of {total} bytes with a {rx.length}-byte "
                    f"payload is impossible")
            offset = int.from_bytes(rx.payload(), "little")
            heap_offset, heap_bytes = self.geo.heap(self.slot_of[peer])
            if not (heap_offset <= offset and offset + total <= heap_offset + heap_bytes):
                raise CorruptRegionError(
                    f"peer {peer}: region rendezvous points at bytes [{offset}, {offset}+{total}) "
                    f"outside its heap [{heap_offset}, {heap_offset + heap_bytes})")
            incoming = Incoming(peer, rx.tag, rx.context, total, None, rx.b, RTS_REGION,
                                offset=offset)
            rx.consume()
            self._arrive(incoming)
        elif kind == DATA:
            op = self.receiving.get((peer, rx.b))
            if op is None:
                raise CorruptRegionError(f"peer {peer}: data for unknown send id {rx.b}")
            send_id = rx.b
            # While frames of ours to this peer wait for room (it is
            # streaming to us too), waiting here for its next chunk would
            # stall both: drain what is there and go publish ours.
            op.received = rx.drain_data(op.mem, send_id, op.received, op.total, self.chunk_bytes,
                                        op.discard, 0 if peer in self.backlog else self.stream_spins)
            if op.received == op.total:
                del self.receiving[(peer, send_id)]
                op.count = op.total if op.error is None else 0
                op.done = True
        elif kind == CTS:
            op = self.awaiting_cts.get((peer, rx.b))
            if op is None:
                raise CorruptRegionError(f"peer {peer}: clear-to-send for unknown send id {rx.b}")
            copied = rx.a
            if copied and copied != len(op.mem):
                raise CorruptRegionError(
                    f"peer {peer}: clear-to-send says {copied} of the {len(op.mem)} bytes of "
                    f"send id {rx.b} were copied")
            del self.awaiting_cts[(peer, rx.b)]
            rx.consume()
            if copied:
                # The receiver copied the message from our memory (_single_copy.pxi).
                op.done = True
                op.state = "done"
                return
            op.state = "streaming"
            self._post_stream(peer, op)
        elif kind == ACK:
            op = self.awaiting_ack.pop((peer, rx.b), None)
            if op is None:
                raise CorruptRegionError(f"peer {peer}: acknowledgement for unknown send id {rx.b}")
            rx.consume()
            op.done = True
        else:  # poll() lets only known kinds through
            raise CorruptRegionError(f"peer {peer}: unexpected frame kind {kind}")

    def _post_stream(self, dest, op):
        frame = (DATA, 0, 0, 0, op.send_id, None, 0, 0, op)
        queue = self.outq[dest]
        if not queue and self._stream(dest, self.tx[dest], op):
            return
        queue.append(frame)
        self.backlog.add(dest)

    def _check_tag(self, rx):
        if rx.tag < 0:
            raise CorruptRegionError(f"peer {rx.peer}: message with negative tag {rx.tag}")

    def _deliver_from_ring(self, rx, op):
        """The eager frame at the head of rx goes straight into a matched receive."""
        length = rx.length
        op.status_source = rx.peer
        op.status_tag = rx.tag
        op.total = length
        if op.mem is None:
            op.data = rx.payload()
        elif length > len(op.mem):
            op.error = ERR_TRUNCATE
        elif length:
            rx.read_into(op.mem, 0)
        op.count = length if op.error is None else 0
        op.done = True
        if rx.kind == EAGER_SYNC:
            self._post(rx.peer, (ACK, 0, 0, 0, rx.b, None, 0, 0, None))

    # --- waiting --------------------------------------------------------------

    def wait(self, op, what):
        """Progress until op completes.  `what` names the operation in
        errors: a string, or an object whose _description() gives one (so
        that the common case formats nothing)."""
        if op.done:
            return
        if type(op) in _LIBRARY_OPS and op.spin(self.fast_spins):
            return      # polled in C first, as the rings' fast paths do
        peer = op.peer
        # A receive from a known source, or a send awaiting its
        # acknowledgement (a synchronous one, or one the receiver copies out
        # of our heap): only that peer's ring matters.  (Other sends are
        # waited for by progress everywhere: with more ranks than cores, the
        # receiver may need frames of others handled before it clears ours.)
        specific = ((type(op) is RecvOp or (type(op) is SendOp and (
                        op.sync or (peer, op.send_id) in self.awaiting_ack)))
                    and peer is not None and 0 <= peer < self.size and self.rx[peer] is not None)
        if specific:
            # The commonest case, inline: the eager message (or the ACK) is next in the ring,
            # or the next step of a rendezvous.
            # It polls in C for a while before the Python wait loop starts.
            if poll_eager(self.lock, self.rx[peer], self.posted, self.eager_limit, self.backlog,
                          op, self.tx[peer], self.awaiting_ack, self.fast_spins,
                          self.rendezvous) < 0:
                self.poll_peer(peer, op)
            if op.done:
                return
        self._wait_loop(lambda: op.done, [op], what, peer if specific else None)

    def wait_any(self, ops, what):
        """Progress until at least one op is done."""
        self._wait_loop(lambda: any(op.done for op in ops), ops, what, None)

    def _wait_loop(self, finished, ops, what, peer):
        """Spin while things move, then back off (sched_yield, and short
        sleeps only once idle for long, a tenth of a second or so) so that
        oversubscribed ranks still let their peers run.  Each round of
        progress takes the lock on its own; the backoff runs without it.

        IVMPI_TIMEOUT counts from the last time one of the awaited operations
        itself advanced (matched, acknowledged, a chunk moved): a long
        transfer that keeps going is never cut short, and a wait that cannot
        complete gets a clear error however much other traffic keeps this
        rank busy meanwhile.  The liveness check names a dead peer.
        """
        idle = 0
        rounds = 0
        spin, yield_rounds = self.spin_rounds, self.yield_rounds
        lock, posted, limit, backlog = self.lock, self.posted, self.eager_limit, self.backlog
        rx = self.rx[peer] if peer is not None else None
        tx = self.tx[peer] if peer is not None else None
        awaiting_ack = self.awaiting_ack
        mark = since = None
        while True:
            # A receive from a known source first polls only that peer; once
            # idle, everything is progressed, so that no peer starves.
            if peer is not None and idle < spin:
                moved = poll_eager(lock, rx, posted, limit, backlog, ops[0], tx, awaiting_ack,
                                   0, self.rendezvous)
                if moved < 0:
                    moved = self.poll_peer(peer, ops[0])
            else:
                moved = self.progress()
            if finished():
                return
            rounds += 1
            if moved:
                idle = 0
            else:
                idle += 1
                if idle >= spin:
                    # With peers behind the MPI library, never sleep: its
                    # messages are only seen by polling it (as it does itself).
                    if idle < yield_rounds or self.routes:
                        os.sched_yield()
                    else:
                        time.sleep(0.00005)
            if rounds & 255:
                continue
            # Every 256 rounds, busy or idle: the clock and the peers' liveness.
            now = time.monotonic()
            state = [_advance(op) for op in ops]
            if state != mark:
                mark, since = state, now
            elif self.timeout > 0 and now - since > self.timeout:
                pending = [op for op in ops if not op.done] or ops
                raise IvmpiTimeoutError(self._stuck(pending[0], _text(what)))
            try:
                self.liveness.check(self._waited_peer(ops[0]) if len(ops) == 1 else -1,
                                    _text(what))
                scope = getattr(ops[0], "scope", None)
                if scope:
                    self.liveness.check_members(scope, _text(what))
            except PeerError:
                # A peer publishes its frames before it finalizes (or
                # dies): what it sent between our last poll and the
                # check is still owed to us, so take it first.
                self.progress()
                if finished():
                    return
                raise

    def _waited_peer(self, op):
        peer = op.peer
        if peer is None or peer == self.rank or not -1 <= peer < self.size:
            return -1
        return peer

    def _stuck(self, op, what):
        peer = op.peer
        # A probe names its source in `what`; its condition has no peer.
        who = "" if peer is None else \
            f"peer: {'any source' if peer == ANY_SOURCE else f'rank {peer}'}, "
        state = getattr(op, "state", "waiting for a matching message")
        return (f"{what} on rank {self.rank} did not complete within IVMPI_TIMEOUT="
                f"{self.timeout:g} s ({who}state: {state})")

    def set_oversubscribed(self, oversubscribed):
        """More ranks than cores: spin briefly and yield early, since the peer
        we wait for may need our core to run at all."""
        self.oversubscribed = oversubscribed
        if hasattr(self, "core"):
            self.core.oversubscribed = oversubscribed
        # A sender's core shares a copy only when it is its own.
        _fastcopy.set_sharing(not oversubscribed)
        self.spin_rounds = 4 if oversubscribed else 64
        # Idle rounds (each a progress and a sched_yield, about a
        # microsecond) before the wait sleeps between polls.  Not sooner: a
        # peer that lost its core to another process for a few
        # milliseconds comes back to a sleeping partner, and a sleeper
        # woken on a busy core waits for the scheduler's next turn (with
        # two other busy processes on 2 cores, Irecv + Isend + Wait took
        # 92 us a round trip sleeping after 1024 rounds, 11 without
        # sleeping, Open MPI 15: it never sleeps).
        self.yield_rounds = 1 << 17
        # Negative: the fast paths yield the core between polls.
        self.fast_spins = -256 if oversubscribed else 4096
        # Polls a rendezvous stream waits for ring space or the next chunk
        # before returning to the wait loop (which also serves other peers).
        self.stream_spins = 0 if oversubscribed else 20000
        self.rendezvous.stream_spins = self.stream_spins

