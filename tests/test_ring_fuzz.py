"""Property tests: whatever a peer writes into the region, rank 0 either
delivers correct messages or raises an ivmpi error naming the peer.

Rank 0 is a real Engine over a region fenced by PROT_NONE pages
(tests/fuzz/regionkit.py): a read or write outside the region kills the
test process.  Receive buffers carry guard bytes.  Every drive of the engine
is bounded (a fixed number of progress calls under an alarm), and rank 0
never writes a word it does not own.
"""
import contextlib
import hashlib
import os
import signal
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ivmpi import layout
from ivmpi.errors import IvmpiError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import regionkit  # noqa: E402

RING = regionkit.RING_BYTES
SETTINGS = settings(max_examples=int(os.environ.get("IVMPI_FUZZ_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REGION = regionkit.GuardedRegion()


@contextlib.contextmanager
def bounded(seconds=5):
    """Fail (rather than hang) if the block runs longer than `seconds`."""
    def alarm(signum, frame):
        raise AssertionError(f"no result within {seconds} s: an unbounded loop")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def fresh():
    REGION.reset()
    return REGION.engine(0), regionkit.RawPeer(REGION)


def drive(engine, buffers, rounds=8):
    """Progress, probe and receive a bounded number of times.

    Returns None, or the IvmpiError that stopped it (checked to name the peer).
    """
    before = regionkit.snapshot(REGION)
    error = None
    with bounded():
        try:
            for _ in range(rounds):
                engine.progress()
                engine.iprobe(-1, -1, 0)
                for buf in buffers:
                    engine.irecv(-1, -1, 0, buf.view)
        except IvmpiError as exc:
            error = exc
    after = regionkit.snapshot(REGION)
    assert regionkit.foreign_writes(before, after, REGION.geo, 0) == []
    for buf in buffers:
        assert buf.intact()
    if error is not None:
        assert "peer 1" in str(error), str(error)
    return error


# --- arbitrary bytes ------------------------------------------------------------

@SETTINGS
@given(data=st.binary(min_size=0, max_size=RING), head=st.integers(0, 2**64 - 1))
def test_arbitrary_ring_bytes_and_head(data, head):
    engine, peer = fresh()
    peer.write_data(0, data + bytes(-len(data) % 8))
    peer.publish(head=head)
    drive(engine, [regionkit.GuardedBuffer(n) for n in (0, 7, 1024, 5000)])


word = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 8192), st.sampled_from([0, 1, 2**63, 2**64 - 1]))


@st.composite
def frames(draw):
    """A frame header with plausible-to-absurd fields, and some payload bytes."""
    kind = draw(st.one_of(st.integers(1, 8), st.integers(0, 2**32 - 1)))
    length = draw(st.one_of(st.integers(0, 2048), st.integers(0, 2**32 - 1)))
    tag = draw(st.one_of(st.integers(-3, 10), st.integers(-2**31, 2**31 - 1)))
    context = draw(st.sampled_from([0, 0, 1, 2**32 - 1]))
    a = draw(word)
    b = draw(st.one_of(st.integers(0, 4), word))
    return kind, length, tag, context, a, b


@SETTINGS
@given(fs=st.lists(frames(), max_size=8), head_fudge=st.integers(-64, 64),
       tail=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_arbitrary_frame_headers(fs, head_fudge, tail):
    """Frames laid out back to back (as a producer would), then a head that
    may be a little off, and possibly a nonsense tail on our ring to it."""
    engine, peer = fresh()
    pos = 0
    for kind, length, tag, context, a, b in fs:
        size = 32 + (min(length, RING) + 7) // 8 * 8
        if pos + 32 > RING:
            break
        payload = bytes((i * 7 + pos) & 0xFF for i in range(min(length, RING - pos - 32, 2048)))
        peer.head = pos
        peer.put(kind, length, tag, context, a, b, payload=payload, publish=False)
        pos += size
    peer.publish(head=max(0, min(pos, RING) + head_fudge))
    # Something for rank 0 to send, so tails and CTS/ACK paths get exercised.
    engine.isend(1, memoryview(bytes(2000)), 3, 0)
    engine.isend(1, memoryview(b"sync"), 4, 0, sync=True)
    if tail is not None:
        peer.set_reverse_tail(tail)
    drive(engine, [regionkit.GuardedBuffer(n) for n in (0, 16, 1024, 3000)])


# --- well-formed traffic is delivered exactly ------------------------------------

@st.composite
def messages(draw):
    n = draw(st.integers(0, 6000))
    seed = draw(st.integers(0, 255))
    return draw(st.integers(0, 3)), bytes((seed + i * 31) & 0xFF for i in range(n))


@SETTINGS
@given(msgs=st.lists(messages(), min_size=1, max_size=6), sync=st.booleans())
def test_honest_peer_is_delivered_exactly(msgs, sync):
    """A real rank-1 engine sending: rank 0 receives every byte, in order."""
    REGION.reset()
    receiver, sender = REGION.engine(0), REGION.engine(1)
    sends = [sender.isend(0, memoryview(data), tag, 0, sync=sync) for tag, data in msgs]
    buffers = [regionkit.GuardedBuffer(len(data)) for _, data in msgs]
    recvs = [receiver.irecv(1, tag, 0, buf.view) for (tag, _), buf in zip(msgs, buffers)]
    with bounded():
        for _ in range(10000):
            sender.progress()
            receiver.progress()
            if all(op.done for op in sends + recvs):
                break
    assert all(op.done for op in sends + recvs)
    for (tag, data), buf, op in zip(msgs, buffers, recvs):
        assert op.error is None and op.count == len(data) and op.status_tag == tag
        assert hashlib.sha256(buf.view).digest() == hashlib.sha256(data).digest()
        assert buf.intact()


@SETTINGS
@given(msgs=st.lists(messages(), min_size=1, max_size=4), index=st.integers(0, 10**6),
       value=st.integers(0, 2**64 - 1))
def test_one_corrupted_word_in_honest_traffic(msgs, index, value):
    """Honest frames with one word overwritten: delivery or a peer error."""
    REGION.reset()
    receiver, sender = REGION.engine(0), REGION.engine(1)
    sends = [sender.isend(0, memoryview(data), tag, 0) for tag, data in msgs]
    head = REGION.mem.load(REGION.geo.head(1, 0))
    if head:
        offset = (index % max(1, min(head, RING) // 8)) * 8
        REGION.mem.store(REGION.geo.ring(1, 0) + layout.RING_CTRL_BYTES + offset, value)
    buffers = [regionkit.GuardedBuffer(len(data)) for _, data in msgs]
    for (tag, _), buf in zip(msgs, buffers):
        receiver.irecv(1, tag, 0, buf.view)
    error = drive(receiver, [])
    assert all(buf.intact() for buf in buffers)
    del sends, error


@SETTINGS
@given(slot=st.lists(st.tuples(st.sampled_from([0, 8, 16, 24, 64, 72, 128]), word), max_size=6))
def test_arbitrary_peer_slot(slot):
    """Rank 1's slot is rank 1's to write: a liveness check reports, never crashes."""
    engine, _ = fresh()
    for field, value in slot:
        REGION.mem.store(REGION.geo.slot(1) + field, value)
    with bounded():
        for peer in (1, -1):
            try:
                engine.liveness.check(peer, "Recv")
            except IvmpiError as exc:
                # With one peer, "every other rank" is rank 1.
                assert "rank 1" in str(exc) or (peer == -1 and "every other rank" in str(exc))


@pytest.mark.parametrize("seed", range(3))
def test_header_fields_never_crash_read_header(seed):
    """Every header word set to random values: read_header validates or refuses."""
    import random
    rnd = random.Random(seed)
    for _ in range(300):
        REGION.reset()
        for _ in range(rnd.randint(1, 4)):
            field = rnd.choice(range(0, 136, 8))
            REGION.mem.store(field, rnd.choice([0, 1, 4096, 1 << 20, 2**64 - 1, rnd.getrandbits(64)]))
        try:
            geo, _ = layout.read_header(REGION.mem)
        except IvmpiError:
            continue
        assert geo.end <= REGION.size and geo.eager_limit <= geo.ring_bytes // 4
        lines = layout.describe(REGION.mem)
        assert lines


def test_atheris_short_run(tmp_path):
    """~20 s of coverage-guided fuzzing from the stored corpus (tests/fuzz/)."""
    import subprocess
    pytest.importorskip("atheris")
    here = os.path.dirname(os.path.abspath(__file__))
    seconds = os.environ.get("IVMPI_FUZZ_SECONDS", "20")
    result = subprocess.run(
        [sys.executable, os.path.join(here, "fuzz", "fuzz_receive.py"), f"-max_total_time={seconds}",
         "-timeout=10", f"-artifact_prefix={tmp_path}/", str(tmp_path),
         os.path.join(here, "fuzz", "corpus")],
        capture_output=True, text=True, timeout=int(seconds) + 120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done" in result.stderr and "cov:" in result.stderr
