"""Region buffers (the per-rank heaps) and the zero-copy rendezvous, in one process.

Two engines (ranks 0 and 1) share one anonymous mapping, so every frame
really goes through the region; the progress of both is driven by hand.
"""
import mmap

import numpy as np
import pytest

from ivmpi import _fastcopy, layout
from ivmpi.engine import Engine, RTS_REGION
from ivmpi.errors import CorruptRegionError, IvmpiError

SIZE = 8 << 20


class _Stand:
    def __init__(self, mem):
        self.mem = mem


@pytest.fixture
def pair():
    mem = _fastcopy.Mapping(mmap.mmap(-1, SIZE))
    geo = layout.Geometry.choose(SIZE, 2, max_ring_bytes=65536)
    layout.write_header(mem, geo, 7)
    for r in (0, 1):
        layout.Slot(mem, r).attach(7)
    return mem, geo, Engine(_Stand(mem), geo, 0), Engine(_Stand(mem), geo, 1)


def drive(*ops_and_engines, rounds=10000):
    engines = [e for e in ops_and_engines if isinstance(e, Engine)]
    ops = [o for o in ops_and_engines if not isinstance(o, Engine)]
    for _ in range(rounds):
        if all(op.done for op in ops):
            return
        for engine in engines:
            engine.progress()
    raise AssertionError("operations did not complete")


def test_geometry_gives_each_rank_a_heap(pair):
    mem, geo, _, _ = pair
    assert geo.heap_offset % layout.HEAP_ALIGN == 0 and geo.heap_offset >= geo.rings_end
    assert geo.heap_bytes > 0 and geo.end <= SIZE
    assert geo.heap(1)[0] == geo.heap_offset + geo.heap_bytes
    assert layout.read_header(mem)[0].heap_bytes == geo.heap_bytes


def test_alloc_free_coalesce_and_exhaustion(pair):
    _, geo, e0, _ = pair
    heap = e0.heap
    a = heap.alloc(1000)
    b = heap.alloc(5000)
    assert len(a) == 1000 and len(b) == 5000 and not a.readonly
    start_a = _fastcopy.buffer_span(a)[0] - heap.mem.address
    assert heap.offset <= start_a < heap.offset + heap.size
    heap.release(a)
    heap.release(b)
    # Everything came back as one block: the whole heap can be taken again.
    assert heap.available() == geo.heap_bytes
    whole = heap.alloc(geo.heap_bytes)
    with pytest.raises(IvmpiError, match="no free block of 1 bytes"):
        heap.alloc(1)
    heap.release(whole)
    with pytest.raises(IvmpiError, match="not allocated by Alloc_mem"):
        heap.release(bytearray(10))
    with pytest.raises(IvmpiError, match="negative"):
        heap.alloc(-1)


def test_strict_mode_refuses_region_buffers():
    mem = _fastcopy.Mapping(mmap.mmap(-1, SIZE), strict=True)
    geo = layout.Geometry.choose(SIZE, 2, max_ring_bytes=65536)
    layout.write_header(mem, geo, 7)
    engine = Engine(_Stand(mem), geo, 0)
    with pytest.raises(IvmpiError, match="strict-align mode"):
        engine.heap.alloc(100)


@pytest.mark.parametrize("nbytes", [16385, 1 << 20, 3 * 1000 * 1000 + 7])
def test_send_from_the_heap_is_announced_by_offset_and_copied_once(pair, nbytes):
    _, _, e0, e1 = pair
    src = np.frombuffer(e1.heap.alloc(nbytes), dtype=np.uint8)
    src[:] = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    out = bytearray(nbytes)
    send = e1.isend(0, memoryview(src), 5, 0)
    # The announcement is a single RTS_REGION frame: no DATA chunks follow.
    rx = e0.rx[1]
    assert rx.poll() and rx.kind == RTS_REGION and rx.a == nbytes
    recv = e0.irecv(1, 5, 0, memoryview(out))
    drive(send, recv, e0, e1)
    assert bytes(out) == src.tobytes()
    assert recv.count == nbytes and recv.status_source == 1 and recv.status_tag == 5
    # The sender completes only after the receiver's acknowledgement.
    assert send.done and not e1.awaiting_ack


def test_sender_waits_for_the_receivers_copy(pair):
    _, _, e0, e1 = pair
    src = e1.heap.alloc(100000)
    send = e1.isend(0, src, 1, 0)
    for _ in range(50):
        e1.progress()
        e0.progress()       # unexpected at rank 0: nobody has received it yet
    assert not send.done and len(e0.unexpected) == 1
    out = bytearray(100000)
    recv = e0.irecv(-1, -1, 0, memoryview(out))
    drive(send, recv, e0, e1)


def test_truncated_region_receive_still_releases_the_sender(pair):
    _, _, e0, e1 = pair
    src = e1.heap.alloc(50000)
    send = e1.isend(0, src, 1, 0)
    recv = e0.irecv(1, 1, 0, memoryview(bytearray(20000)))
    drive(send, recv, e0, e1)
    assert recv.error == "truncate" and send.done


@pytest.mark.parametrize("object_receive", [False, True])
def test_region_rendezvous_for_a_posted_receive_is_taken_in_one_call(pair, object_receive):
    """A wait's round in C (poll_eager) copies a region rendezvous for a
    posted receive straight out of the sender's heap, into the buffer or a
    new one of its own for an object receive, and only then acknowledges."""
    _, geo, e0, e1 = pair
    nbytes = geo.eager_limit + 1000
    src = np.frombuffer(e1.heap.alloc(nbytes), dtype=np.uint8)
    src[:] = np.arange(nbytes) % 251
    send = e1.isend(0, memoryview(src), 5, 0)
    out = None if object_receive else bytearray(nbytes + 8)
    recv = e0.irecv(1, 5, 0, None if out is None else memoryview(out))
    moved = _fastcopy.poll_eager(e0.lock, e0.rx[1], e0.posted, e0.eager_limit, e0.backlog, recv,
                                 e0.tx[1], e0.awaiting_ack, 0, e0.rendezvous)
    assert moved == 1 and recv.done and not e0.posted
    got = recv.data if object_receive else out[:nbytes]
    assert bytes(got) == src.tobytes() and len(got) == nbytes
    assert recv.count == nbytes and recv.status_source == 1 and recv.status_tag == 5
    assert not send.done
    drive(send, e1)         # the ACK, after the copy
    assert not e1.awaiting_ack


def _raw_frame(mem, geo, kind, length, tag, a, b, payload):
    ring = geo.ring(1, 0)
    words = np.array([kind | (length << 32), tag, a, b], dtype="<u8").tobytes()
    body = payload + bytes(-len(payload) % 8)
    mem.write(ring + layout.RING_CTRL_BYTES, words + body)
    mem.store_release(geo.head(1, 0), 32 + len(body))


@pytest.mark.parametrize("offset_of, total, length, message", [
    (lambda geo: geo.heap(0)[0], 20000, 8, "outside its heap"),           # rank 0's heap, not 1's
    (lambda geo: geo.heap(1)[0] + geo.heap_bytes - 100, 20000, 8, "outside its heap"),
    (lambda geo: 0, 20000, 8, "outside its heap"),                        # the header
    (lambda geo: geo.heap(1)[0], 100, 8, "impossible"),                  # eager-sized
    (lambda geo: geo.heap(1)[0], 20000, 16, "impossible"),               # payload not 8 bytes
])
def test_region_rendezvous_pointing_anywhere_else_is_refused(pair, offset_of, total, length,
                                                             message):
    mem, geo, e0, _ = pair
    payload = offset_of(geo).to_bytes(8, "little") + bytes(length - 8)
    _raw_frame(mem, geo, RTS_REGION, length, 3, total, 1, payload)
    out = bytearray(total)
    recv = e0.irecv(1, -1, 0, memoryview(out))
    # A wait's round in C leaves it to the engine, touching nothing.
    assert _fastcopy.poll_eager(e0.lock, e0.rx[1], e0.posted, e0.eager_limit, e0.backlog, recv,
                                e0.tx[1], e0.awaiting_ack, 0, e0.rendezvous) == -1
    assert out == bytearray(total) and not recv.done
    with pytest.raises(CorruptRegionError, match="peer 1: region rendezvous.*" + message):
        e0.progress()
    assert out == bytearray(total)


def _fast(engine, geo):
    """A communicator's fast paths over engine (every rank, context 0), as
    ivmpi.comm sets them up for large messages with holes."""
    import ivmpi.comm  # noqa: F401 (installs the datatype plans of the fast paths)
    fast = _fastcopy.FastPath(engine.tx, engine.rx, engine.posted, engine.unexpected,
                              engine.backlog, 0, engine.eager_limit)
    fast.take_stage, fast.give_stage = engine.take_stage, engine.give_stage
    fast.heap_bounds = [geo.heap(r) for r in range(geo.nranks)]
    fast.send_ids, fast.awaiting_ack = engine.next_send_id, engine.awaiting_ack
    fast.engine_post, fast.world_ranks = engine._post, list(range(geo.nranks))
    fast.lock = engine.lock
    return fast


@pytest.mark.parametrize("offset_of, total, message", [
    (lambda geo: geo.heap(0)[0], 20000, "outside its heap"),      # rank 0's heap, not 1's
    (lambda geo: geo.heap(1)[0] + geo.heap_bytes - 100, 20000, "outside its heap"),
    (lambda geo: 0, 20000, "outside its heap"),                   # the header
    (lambda geo: geo.heap(1)[0], 100, "impossible"),              # eager-sized
])
def test_receive_with_holes_leaves_a_bad_region_rendezvous_to_the_engine(pair, offset_of,
                                                                         total, message):
    """A receive with holes scatters a region rendezvous itself, straight
    from the sender's heap, only where the engine would: anything else is
    left to the engine, which refuses it, and the buffer stays untouched."""
    from mpi4py import MPI
    mem, geo, e0, _ = pair
    column = MPI.DOUBLE.Create_vector(total // 8, 1, 2).Commit()
    _raw_frame(mem, geo, RTS_REGION, 8, 3, total, 1, offset_of(geo).to_bytes(8, "little"))
    out = np.full(total // 4, -1.0)
    fast = _fast(e0, geo)
    assert fast.recv([out, 1, column], 1, 3, 10) == _fastcopy.FAST_NOT_HANDLED
    assert (out == -1).all()
    with pytest.raises(CorruptRegionError, match="peer 1: region rendezvous.*" + message):
        e0.progress()
    column.Free()


def test_large_send_with_holes_is_scattered_straight_from_the_heap(pair):
    """Over the eager limit, a send with holes is gathered into the
    sender's staging block and announced as a region rendezvous; the
    receive scatters it from there and acknowledges, which frees the block."""
    from mpi4py import MPI
    mem, geo, e0, e1 = pair
    n = geo.eager_limit // 8 + 100
    column = MPI.DOUBLE.Create_vector(n, 1, 3).Commit()
    data = np.arange(3.0 * n)
    out = np.full(3 * n, -1.0)
    sender, receiver = _fast(e1, geo), _fast(e0, geo)
    op = sender.isend_staged([data, 1, column], 0, 5)
    assert op is not None and not op.done
    assert e1.take_stage(8) is None                # the block is in use until the ACK
    assert receiver.recv([out, 1, column], 1, 5, 10) == 8 * n
    assert np.array_equal(out[::3], data[::3]) and (out[1::3] == -1).all() \
        and (out[2::3] == -1).all()
    drive(op, e1)
    assert op.done
    e1.give_stage()
    assert e1.take_stage(8) is not None
    column.Free()


def test_large_send_with_holes_already_queued_is_scattered_from_the_heap(pair):
    """A region rendezvous the engine has already queued as unexpected (the
    receive came later) is still scattered straight from the sender's heap."""
    from mpi4py import MPI
    mem, geo, e0, e1 = pair
    n = geo.eager_limit // 8 + 100
    column = MPI.DOUBLE.Create_vector(n, 1, 2).Commit()
    data = np.arange(2.0 * n)
    out = np.full(2 * n, -1.0)
    sender, receiver = _fast(e1, geo), _fast(e0, geo)
    op = sender.isend_staged([data, 1, column], 0, 6)
    e0.progress()
    assert len(e0.unexpected) == 1 and e0.unexpected[0].kind == RTS_REGION
    receiver.comm_rank_of = {0: 0, 1: 1}
    assert receiver.recv([out, 1, column], 1, 6, 10) == 8 * n
    assert not e0.unexpected
    assert np.array_equal(out[::2], data[::2]) and (out[1::2] == -1).all()
    drive(op, e1)
    assert op.done
    column.Free()
