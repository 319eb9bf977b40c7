"""The rendezvous steps a wait takes in C (poll_eager with the engine's
Rendezvous tables), on two rings in one process: what each step writes,
registers and completes, and what it leaves to the engine's handler."""
import mmap

import numpy as np
import pytest

from ivmpi._fastcopy import (EngineLock, Mapping, RecvOp, Rendezvous, RxRing, SendOp, TxRing,
                             poll_eager)

RING = 1 << 16
CHUNK = RING // 4
EAGER = 1024
A, B = 0, 1                  # world ranks of the two sides
RTS, CTS, DATA = 3, 4, 5


class Pair:
    """Rings A->B and B->A; each side's ends and rendezvous tables."""

    def __init__(self):
        self.mm = mmap.mmap(-1, 2 * (128 + RING))
        self.mem = Mapping(self.mm, strict=False)
        ab, ba = 0, 128 + RING
        self.a_tx, self.b_rx = TxRing(self.mem, ab, RING, B), RxRing(self.mem, ab, RING, A)
        self.b_tx, self.a_rx = TxRing(self.mem, ba, RING, A), RxRing(self.mem, ba, RING, B)
        self.queued = []
        self.tables = Rendezvous({}, {}, lambda peer, op: self.queued.append((peer, op)),
                                 CHUNK, 100)


def _payload(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _cleared_send(p, data, send_id):
    """A send of data from A awaiting its clear-to-send, which B has written."""
    op = SendOp(B, memoryview(data), 4, 5, False)
    op.send_id = send_id
    p.tables.awaiting_cts[(B, send_id)] = op
    assert p.b_tx.send(CTS, 0, 0, 0, send_id)
    return op


def _wait(rx, op, tx, tables, posted=None):
    return poll_eager(EngineLock(), rx, [] if posted is None else posted, EAGER, set(), op, tx,
                      {}, 0, tables)


def test_an_announcement_for_a_posted_receive_is_cleared_and_its_data_copied_out():
    p = Pair()
    data = _payload(3 * CHUNK + 5)
    op = RecvOp(A, 7, 5, memoryview(bytearray(len(data) + 10)))
    posted = [op]
    assert p.a_tx.send(RTS, 7, 5, len(data), 9)
    assert _wait(p.b_rx, op, p.b_tx, p.tables, posted) == 1
    assert posted == [] and p.tables.receiving == {(A, 9): op} and not op.done
    assert (op.status_source, op.status_tag, op.total) == (A, 7, len(data))
    assert p.a_rx.poll() and (p.a_rx.kind, p.a_rx.b) == (CTS, 9)      # the clear-to-send
    assert p.a_tx.stream(data, 0, CHUNK, 9) == len(data)
    assert _wait(p.b_rx, op, p.b_tx, p.tables, posted) == 1
    assert op.done and op.count == len(data) and p.tables.receiving == {}
    assert bytes(op.mem[:len(data)]) == data


def test_a_clear_to_send_streams_the_send():
    p = Pair()
    data = _payload(2 * CHUNK + 3, 2)
    op = _cleared_send(p, data, 3)
    assert _wait(p.a_rx, op, p.a_tx, p.tables) == 1
    assert op.done and op.offset == len(data) and op.state == "done"
    assert p.tables.awaiting_cts == {} and p.queued == []
    out = bytearray(len(data))
    assert p.b_rx.poll() and p.b_rx.kind == DATA
    assert p.b_rx.drain_data(out, 3, 0, len(data), CHUNK, False) == len(data)
    assert bytes(out) == data


def test_a_stream_longer_than_the_ring_is_left_queued_with_its_offset():
    p = Pair()
    data = _payload(2 * RING, 3)
    op = _cleared_send(p, data, 8)
    assert _wait(p.a_rx, op, p.a_tx, p.tables) == 1
    assert not op.done and 0 < op.offset < len(data) and op.state == "streaming"
    assert p.queued == [(B, op)]


@pytest.mark.parametrize("case", ["truncation", "object receive", "no match", "unknown data",
                                  "unknown cts", "twice announced"])
def test_what_the_engine_must_judge_is_left_in_the_ring(case):
    p = Pair()
    op = RecvOp(A, 7, 5, memoryview(bytearray(4 * CHUNK)))
    posted = [op]
    if case == "truncation":
        assert p.a_tx.send(RTS, 7, 5, 4 * CHUNK + 1, 9)
    elif case == "object receive":
        op.mem = None
        assert p.a_tx.send(RTS, 7, 5, 2 * CHUNK, 9)
    elif case == "no match":
        assert p.a_tx.send(RTS, 8, 5, 2 * CHUNK, 9)
    elif case == "unknown data":
        assert p.a_tx.send(DATA, 0, 0, 0, 9, b"x" * 8)
    elif case == "unknown cts":
        assert p.a_tx.send(CTS, 0, 0, 0, 9)
    else:
        p.tables.receiving[(A, 9)] = RecvOp(A, 7, 5, memoryview(bytearray(8)))
        assert p.a_tx.send(RTS, 7, 5, 2 * CHUNK, 9)
    before = dict(p.tables.receiving)
    assert _wait(p.b_rx, op, p.b_tx, p.tables, posted) == -1
    assert p.b_rx.poll() and p.b_rx.b == 9                  # still there, for the engine
    assert posted == [op] and p.tables.receiving == before and not op.done
    assert not p.a_rx.poll()                                 # no clear-to-send went out


def test_progress_takes_the_same_steps_unless_frames_of_ours_wait_for_that_peer():
    from ivmpi._fastcopy import rendezvous_step
    p = Pair()
    op = _cleared_send(p, _payload(2 * CHUNK, 4), 6)
    assert p.a_rx.poll()
    # Something of ours is queued for B: it must go before our stream.
    assert not rendezvous_step(p.a_rx, [], EAGER, p.a_tx, {B}, p.tables)
    assert p.a_rx.ready and not op.done and (B, 6) in p.tables.awaiting_cts
    assert rendezvous_step(p.a_rx, [], EAGER, p.a_tx, set(), p.tables)
    assert op.done and not p.a_rx.poll()
    # An eager frame is not a rendezvous step.
    assert p.b_tx.send(1, 3, 5, 0, 0, b"hello")
    assert p.a_rx.poll() and not rendezvous_step(p.a_rx, [], EAGER, p.a_tx, set(), p.tables)


def test_unfilled_bytearray_has_the_size_asked_and_refuses_a_negative_one():
    from ivmpi._fastcopy import unfilled_bytearray
    assert len(unfilled_bytearray(0)) == 0 and len(unfilled_bytearray(1 << 20)) == 1 << 20
    with pytest.raises(ValueError):
        unfilled_bytearray(-1)
