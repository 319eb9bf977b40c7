"""One test per way a peer (or a stale job) can corrupt the region, each
checking the exact error ivmpi reports.

Rank 0 is a real Engine; rank 1 is played by hand (tests/fuzz/regionkit.py)
and writes whatever it likes into the words it owns.  Each error names the
peer, leaves the user's buffers untouched, and repeats if the engine is
driven again (a corrupt frame is never skipped silently).
"""
import os
import re
import sys
import time

import pytest

from ivmpi import layout
from ivmpi.errors import CorruptRegionError, IvmpiError, IvmpiTimeoutError, PeerError, RegionError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import regionkit  # noqa: E402

EAGER, EAGER_SYNC, RTS, CTS, DATA, ACK, PAD = 1, 2, 3, 4, 5, 6, 7
RING = regionkit.RING_BYTES          # 4096: eager limit and chunk size are 1024


@pytest.fixture
def kit():
    region = regionkit.GuardedRegion()
    region.reset()
    engine = region.engine(0)
    peer = regionkit.RawPeer(region)
    return region, engine, peer


def expect(engine, message, drive=None):
    """Drive the engine twice: both times the exact CorruptRegionError."""
    drive = drive or engine.progress
    for _ in range(2):
        with pytest.raises(CorruptRegionError, match="^" + re.escape(message) + "$"):
            drive()


# --- ring indices --------------------------------------------------------------

def test_frame_longer_than_the_ring(kit):
    _, engine, peer = kit
    peer.put(EAGER, length=2 * RING, publish=False)
    peer.publish(head=64)
    expect(engine, "peer 1: frame at 0 of 8224 bytes runs past the ring's end "
                   "(ring tail 0, head 64, ring 4096 bytes)")


def test_frame_longer_than_what_was_published(kit):
    _, engine, peer = kit
    peer.put(EAGER, length=100, publish=False)
    peer.publish(head=64)
    expect(engine, "peer 1: frame at 0 of 136 bytes is longer than the 64 bytes published "
                   "(ring tail 0, head 64, ring 4096 bytes)")


def test_head_running_backwards(kit):
    _, engine, peer = kit
    peer.put(EAGER, length=8, tag=1, payload=b"12345678")
    engine.progress()
    assert engine.unexpected[0].data == b"12345678"
    peer.publish(head=8)
    expect(engine, "peer 1: ring head went backwards to 8 (ring tail 40, head 40, ring 4096 bytes)")


def test_head_more_than_a_ring_ahead(kit):
    _, engine, peer = kit
    peer.publish(head=RING + 8)
    expect(engine, "peer 1: ring head 4104 is more than a ring ahead "
                   "(ring tail 0, head 0, ring 4096 bytes)")


def test_head_not_a_multiple_of_eight(kit):
    _, engine, peer = kit
    peer.publish(head=12)
    expect(engine, "peer 1: ring head 12 is not a multiple of 8 (ring tail 0, head 0, ring 4096 bytes)")


def test_pad_skipping_more_than_published(kit):
    _, engine, peer = kit
    peer.put(PAD, publish=False)
    peer.publish(head=64)
    expect(engine, "peer 1: PAD frame at 0 skips 4096 bytes, only 64 published "
                   "(ring tail 0, head 64, ring 4096 bytes)")


def test_tail_beyond_the_producers_head(kit):
    """The peer consumes our ring to it: its tail may not pass our head."""
    _, engine, peer = kit
    for _ in range(3):                       # 3 x 1056 bytes: the 4th needs the tail
        engine.isend(1, memoryview(bytes(1024)), 0, 0)
    peer.set_reverse_tail(5000)
    message = ("peer 1: ring tail 5000 is impossible (head 3168, last tail 0, ring 4096 bytes)")
    for _ in range(2):
        with pytest.raises(CorruptRegionError, match="^" + re.escape(message) + "$"):
            engine.isend(1, memoryview(bytes(1024)), 0, 0)
            engine.progress()


def test_tail_running_backwards(kit):
    _, engine, peer = kit
    for _ in range(3):
        engine.isend(1, memoryview(bytes(1024)), 0, 0)
    peer.set_reverse_tail(2112)
    engine.isend(1, memoryview(bytes(1024)), 0, 0)    # room now: tail 2112 is cached
    peer.set_reverse_tail(1056)
    with pytest.raises(CorruptRegionError, match=re.escape(
            "peer 1: ring tail 1056 is impossible (head 6208, last tail 2112, ring 4096 bytes)")):
        for _ in range(3):
            engine.isend(1, memoryview(bytes(1024)), 0, 0)
            engine.progress()


# --- frames ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", [0, 11, 0xFFFFFFFF])
def test_unknown_frame_kind(kit, kind):
    _, engine, peer = kit
    peer.put(kind)
    expect(engine, f"peer 1: frame at 0 has unknown kind {kind} (ring tail 0, head 32, ring 4096 bytes)")


def test_data_for_an_unknown_send_id(kit):
    _, engine, peer = kit
    peer.put(DATA, length=8, a=0, b=77, payload=bytes(8))
    expect(engine, "peer 1: data for unknown send id 77")


def _rendezvous_under_way(engine, peer, total=3000, send_id=1, buffer=None):
    """The peer announces `total` bytes; rank 0 posts a receive and answers CTS."""
    peer.put(RTS, tag=5, a=total, b=send_id)
    buffer = buffer or regionkit.GuardedBuffer(total)
    op = engine.irecv(1, 5, 0, buffer.view)
    engine.progress()
    assert peer.reverse_frames() == [(CTS, 0, 0, 0, 0, send_id)]
    return op, buffer


def test_data_at_the_wrong_offset(kit):
    _, engine, peer = kit
    op, buffer = _rendezvous_under_way(engine, peer)
    peer.put(DATA, length=1000, a=1000, b=1, payload=b"x" * 1000)
    expect(engine, "peer 1: data chunk at offset 1000 of 1000 bytes does not follow the 0 of "
                   "3000 bytes received for send id 1")
    assert not op.done and buffer.intact() and bytes(buffer.view) == bytes([regionkit.GUARD]) * 3000


def test_data_past_the_announced_total(kit):
    _, engine, peer = kit
    op, buffer = _rendezvous_under_way(engine, peer)
    peer.put(DATA, length=1024, a=0, b=1, payload=b"a" * 1024)
    peer.put(DATA, length=1024, a=1024, b=1, payload=b"b" * 1024)
    peer.put(DATA, length=1024, a=2048, b=1, payload=b"c" * 1024)
    expect(engine, "peer 1: data chunk at offset 2048 of 1024 bytes does not follow the 2048 of "
                   "3000 bytes received for send id 1")
    assert buffer.intact() and bytes(buffer.view[:2048]) == b"a" * 1024 + b"b" * 1024


def test_data_chunk_larger_than_chunk_size(kit):
    _, engine, peer = kit
    _rendezvous_under_way(engine, peer)
    peer.put(DATA, length=2000, a=0, b=1, payload=b"x" * 2000)
    expect(engine, "peer 1: data chunk at offset 0 of 2000 bytes does not follow the 0 of "
                   "3000 bytes received for send id 1")


@pytest.mark.parametrize("kind, name", [(CTS, "clear-to-send"), (ACK, "acknowledgement")])
def test_cts_or_ack_for_an_unknown_send_id(kit, kind, name):
    _, engine, peer = kit
    peer.put(kind, b=5)
    expect(engine, f"peer 1: {name} for unknown send id 5")


def test_cts_for_an_eager_sync_send(kit):
    """A real send id, but in the wrong state: CTS for a send waiting for ACK."""
    _, engine, peer = kit
    op = engine.isend(1, memoryview(b"hi"), 0, 0, sync=True)
    peer.put(CTS, b=op.send_id)
    expect(engine, f"peer 1: clear-to-send for unknown send id {op.send_id}")
    assert not op.done


def test_rts_with_a_payload(kit):
    _, engine, peer = kit
    # (8 bytes are the sender's address, for a receiver that copies from its memory.)
    peer.put(RTS, length=16, a=3000, b=1, payload=bytes(16))
    expect(engine, "peer 1: rendezvous announcement of 3000 bytes with a 16-byte payload is impossible")


@pytest.mark.parametrize("total", [0, 1024, (1 << 48) + 1, 2**64 - 1])
def test_rts_of_an_impossible_size(kit, total):
    _, engine, peer = kit
    peer.put(RTS, a=total, b=1)
    expect(engine, f"peer 1: rendezvous announcement of {total} bytes with a 0-byte payload "
                   f"is impossible")


@pytest.mark.parametrize("kind", [EAGER, EAGER_SYNC])
def test_eager_frame_over_the_eager_limit(kit, kind):
    _, engine, peer = kit
    buffer = regionkit.GuardedBuffer(4096)
    op = engine.irecv(1, 0, 0, buffer.view)
    peer.put(kind, length=2048, payload=bytes(2048))
    expect(engine, "peer 1: eager frame of 2048 bytes exceeds the eager limit 1024")
    assert not op.done and buffer.intact()


@pytest.mark.parametrize("kind", [EAGER, EAGER_SYNC, RTS])
def test_negative_tag(kit, kind):
    _, engine, peer = kit
    peer.put(kind, tag=-5, a=5000 if kind == RTS else 0, b=1)
    expect(engine, "peer 1: message with negative tag -5")
    assert engine.unexpected == []


def test_rts_announced_twice(kit):
    _, engine, peer = kit
    _rendezvous_under_way(engine, peer)
    peer.put(RTS, tag=5, a=3000, b=1)
    op = engine.irecv(1, 5, 0, memoryview(bytearray(3000)))
    with pytest.raises(CorruptRegionError, match=re.escape("peer 1: send id 1 announced twice")):
        engine.progress()
    assert not op.done


# --- eager frames in parts (kind 9: the fill word `a` says how much is there) ---

EAGER_PARTS = 9


def test_parts_filled_past_the_frames_length(kit):
    _, engine, peer = kit
    peer.put(EAGER_PARTS, length=100, a=101, payload=bytes(100))
    op = engine.irecv(1, 0, 0, memoryview(bytearray(100)))
    expect(engine, "peer 1: eager frame at 0 of 100 bytes says 101 are filled, after 0 "
                   "(ring tail 0, head 136, ring 4096 bytes)")
    assert not op.done


def test_parts_fill_running_backwards(kit):
    _, engine, peer = kit
    peer.put(EAGER_PARTS, length=100, a=64, payload=bytes(100))
    engine.rx[1].fill_timeout = 0.05
    op = engine.irecv(1, 0, 0, memoryview(bytearray(100)))
    with pytest.raises(IvmpiTimeoutError):
        engine.progress()           # the first 64 bytes seen and copied, then no more
    assert engine.rx[1].filled == 64
    peer.write_data(16, (8).to_bytes(8, "little"))
    expect(engine, "peer 1: eager frame at 0 of 100 bytes says 8 are filled, after 64 "
                   "(ring tail 0, head 136, ring 4096 bytes)")
    assert not op.done


def test_parts_that_stop_filling_time_out_naming_the_peer(kit):
    _, engine, peer = kit
    peer.put(EAGER_PARTS, length=100, a=40, payload=bytes(range(100)))
    engine.rx[1].fill_timeout = 0.05
    op = engine.irecv(1, 0, 0, memoryview(bytearray(100)))
    for _ in range(2):
        with pytest.raises(IvmpiTimeoutError, match="^peer 1: an eager message of 100 bytes "
                           "stayed filled to 40 bytes for 0.05 s"):
            engine.progress()
    assert not op.done
    # Once the peer fills it, the same message is delivered whole.
    peer.write_data(16, (100).to_bytes(8, "little"))
    engine.progress()
    assert op.done and bytes(op.mem) == bytes(range(100))


def test_parts_whose_sender_dies_meanwhile_name_the_dead_peer(kit):
    """A sender gone while its frame in parts stands still is reported as a
    dead peer (liveness), well before the fill timeout."""
    _, engine, peer = kit
    peer.put(EAGER_PARTS, length=100, a=40, payload=bytes(100))
    engine.rx[1].fill_timeout = 30
    engine.liveness.timeout = 0.05          # rank 1, played by hand, never beats
    engine.irecv(1, 0, 0, memoryview(bytearray(100)))
    started = time.monotonic()
    with pytest.raises(PeerError, match="^a message from rank 1: rank 1 has shown no heartbeat"):
        engine.progress()
    assert time.monotonic() - started < 5


def test_errors_from_probe_and_receive_name_the_peer(kit):
    _, engine, peer = kit
    peer.put(11)
    message = "peer 1: frame at 0 has unknown kind 11 (ring tail 0, head 32, ring 4096 bytes)"
    expect(engine, message, drive=lambda: engine.iprobe(-1, -1, 0))
    op = engine.irecv(1, 0, 0, memoryview(bytearray(8)))
    expect(engine, message, drive=lambda: engine.wait(op, "Recv"))


def test_region_untouched_outside_rank0s_words(kit):
    """After a hostile sequence rank 0 has written nothing it does not own."""
    region, engine, peer = kit
    op, _ = _rendezvous_under_way(engine, peer)
    peer.put(DATA, length=1024, a=0, b=1, payload=b"a" * 1024)
    peer.put(7777)
    before = regionkit.snapshot(region)
    with pytest.raises(CorruptRegionError):
        engine.progress()
    after = regionkit.snapshot(region)
    assert regionkit.foreign_writes(before, after, region.geo, 0) == []


# --- the header ------------------------------------------------------------------

@pytest.fixture
def header():
    region = regionkit.GuardedRegion()
    region.reset(job_id=0x55)
    return region.mem, region.size


@pytest.mark.parametrize("field, value, message", [
    (layout.H_MAGIC, 0x1122334455667788,
     "region header has magic 0x1122334455667788, expected 0x4e475249504d5649 (not an ivmpi "
     "region, or a different program uses it)"),
    (layout.H_VERSION, 2, "region layout version 2; this ivmpi speaks version 3"),
    (layout.H_RING_BYTES, 5000, "region header has ring size 5000 (not a power of two in range)"),
    (layout.H_RING_BYTES, 2048, "region header has ring size 2048 (not a power of two in range)"),
    (layout.H_RING_BYTES, 8192, "region header field ring_stride = 4224, expected 8320"),
    (layout.H_NRANKS, 0, "region header has 0 ranks (allowed 1..4096)"),
    (layout.H_NRANKS, 5000, "region header has 5000 ranks (allowed 1..4096)"),
    (layout.H_NRANKS, 3, "region header's rings end at 50304, past the region (32768)"),
    (layout.H_REGION_SIZE, 1 << 20,
     "region header says the region has 1048576 bytes but 32768 are mapped"),
    (layout.H_RINGS_OFFSET, 8192, "region header field rings_offset = 8192, expected 12288"),
    (layout.H_HEADS_OFFSET, 4096, "region header field heads_offset = 4096, expected 8192"),
    (layout.H_HEADS_OFFSET, 0, "region header field heads_offset = 0, expected 8192"),
    (layout.H_HEADS_STRIDE, 16, "region header field heads_stride = 16, expected 128"),
    (layout.H_EAGER, 2048, "region header has eager limit 2048 (ring 4096)"),
    (layout.H_CHUNK, 0, "region header has chunk size 0 (ring 4096)"),
    (layout.H_READY, 0x56, "region header ready word 0x56 does not match job id 0x55"),
    (layout.H_READY, 0, "region header is not initialised (ready = 0)"),
])
def test_bad_header(header, field, value, message):
    mem, _ = header
    layout.read_header(mem)
    mem.store(field, value)
    with pytest.raises(CorruptRegionError, match="^" + re.escape(message) + "$"):
        layout.read_header(mem)


def test_header_in_a_mapping_too_small():
    from ivmpi import _fastcopy
    import mmap
    with pytest.raises(RegionError, match=re.escape(
            "region of 4096 bytes is too small to hold an ivmpi header")):
        layout.read_header(_fastcopy.Mapping(mmap.mmap(-1, 4096)))


def test_region_too_small_for_the_ranks():
    with pytest.raises(RegionError, match=re.escape(
            "region of 65536 bytes is too small for 4 ranks: it needs at least 79872 bytes "
            "(ivmpi create PATH --size 131072)")):
        layout.Geometry.choose(65536, 4)


def test_every_error_is_an_ivmpi_error():
    assert issubclass(CorruptRegionError, IvmpiError) and issubclass(RegionError, IvmpiError)


# --- a region left behind by a crashed job ----------------------------------------

@pytest.fixture
def stale(tmp_path, monkeypatch):
    """A region file holding a 3-rank job whose ranks are gone."""
    from ivmpi.region import Region
    monkeypatch.setenv("IVMPI_SYSFS_ROOT", str(tmp_path / "sys"))
    monkeypatch.delenv("IVMPI_REGION", raising=False)
    path = str(tmp_path / "region")
    region = Region.create(path, 1 << 20)
    geo = layout.Geometry.choose(region.size, 3, max_ring_bytes=4096)
    layout.write_header(region.mem, geo, 0xABC1)
    for rank, (state, beat) in enumerate([(layout.STATE_ATTACHED, 17), (layout.STATE_ATTACHED, 5),
                                          (layout.STATE_JOINING, 0)]):
        slot = layout.Slot(region.mem, rank)
        slot.set(layout.S_PID, 1000 + rank)
        slot.set(layout.S_HEARTBEAT, beat)
        slot.set(layout.S_STATE, state)
    yield path, region
    region.close()


def cli_run(capsys, *argv):
    from ivmpi import cli
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_shows_a_stale_job(stale, capsys):
    path, _ = stale
    code, out, err = cli_run(capsys, "info", path)
    assert code == 0, err
    assert "job: 0x000000000000abc1 (ready), layout v3, 3 ranks" in out
    assert "rank 0: attached, pid 1000, heartbeat 17" in out
    assert "rank 1: attached, pid 1001, heartbeat 5" in out
    assert "rank 2: joining, pid 1002, heartbeat 0" in out


def test_reset_clears_a_dead_job(stale, capsys):
    path, region = stale
    code, out, err = cli_run(capsys, "reset", path, "--watch", "0.1")
    assert code == 0, err
    assert out.strip() == f"{path}: cleared job 0xabc1, 3 ranks; the region is free"
    assert region.mem.load(layout.H_MAGIC) == 0 and region.mem.load(layout.H_READY) == 0
    assert all(region.mem.load(layout.SLOTS_OFFSET + 256 * r + layout.S_STATE) == 0 for r in range(3))
    code, out, _ = cli_run(capsys, "info", path)
    assert "job: none (no ivmpi header: the region is free)" in out
    code, out, _ = cli_run(capsys, "reset", path)
    assert code == 0 and out.strip() == f"{path}: no ivmpi job in the region; nothing to reset"


@pytest.fixture
def beating(stale):
    """Rank 1 of the job is alive after all: its heartbeat keeps changing."""
    import threading
    _, region = stale
    stop = threading.Event()

    def beat():
        slot, count = layout.Slot(region.mem, 1), 100
        while not stop.wait(0.01):
            count += 1
            slot.set(layout.S_HEARTBEAT, count)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


def test_reset_refuses_while_a_rank_beats(stale, beating, capsys):
    path, region = stale
    code, out, err = cli_run(capsys, "reset", path, "--watch", "0.2")
    assert code == 1 and out == ""
    assert re.fullmatch(
        rf"ivmpi reset: {re.escape(path)}: rank 1 of job 0xabc1 is alive \(its slot changed within "
        r"0\.2 s: heartbeat \d+ -> \d+, state attached -> attached\); refusing to reset a region in "
        r"use \(stop the job first, or pass --force\)\n", err), err
    assert layout.read_header(region.mem)[1] == 0xABC1


def test_reset_force_clears_even_a_live_job(stale, beating, capsys):
    path, region = stale
    code, out, err = cli_run(capsys, "reset", path, "--force")
    assert code == 0, err
    assert region.mem.load(layout.H_MAGIC) == 0


def test_reset_refuses_an_invalid_header_without_force(stale, capsys):
    path, region = stale
    region.mem.store(layout.H_NRANKS, 0)
    code, out, err = cli_run(capsys, "reset", path)
    assert code == 1
    assert err.strip() == (f"ivmpi reset: {path}: the header is invalid (region header has 0 ranks "
                           f"(allowed 1..4096)), so attached ranks cannot be found; pass --force to "
                           f"clear it anyway")
    code, out, err = cli_run(capsys, "reset", path, "--force")
    assert code == 0 and region.mem.load(layout.H_MAGIC) == 0


def test_standalone_rank_never_joins_a_stale_job(stale, tmp_path):
    """The stale header says ready, but it never admitted this rank's fresh nonce."""
    import subprocess
    path, _ = stale
    env = dict(os.environ, IVMPI_RANK="1", IVMPI_SIZE="3", IVMPI_REGION=path,
               IVMPI_START_TIMEOUT="0.5", IVMPI_SYSFS_ROOT=str(tmp_path / "sys"))
    code = ("from ivmpi import MPI\n"
            "try:\n    MPI.COMM_WORLD\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == ("IvmpiTimeoutError standalone start-up: rank 0 did not admit "
                                     "rank 1 within 0.5 s (IVMPI_START_TIMEOUT); every standalone "
                                     "rank must share the one region (ranks in different regions "
                                     "need an MPI launcher, whose library carries their messages: "
                                     "docs/routing.md)"), result.stderr


def test_start_up_with_a_region_too_small_for_the_ranks(tmp_path):
    """A job of 4 ranks on a 64 KiB region: a clear error before anything is written."""
    import subprocess
    from ivmpi.region import Region
    path = str(tmp_path / "small")
    Region.create(path, 64 << 10).close()
    env = dict(os.environ, IVMPI_RANK="0", IVMPI_SIZE="4", IVMPI_REGION=path,
               IVMPI_SYSFS_ROOT=str(tmp_path / "sys"))
    code = ("from ivmpi import MPI\n"
            "try:\n    MPI.COMM_WORLD\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=60)
    assert re.fullmatch(r"RegionError region of 65536 bytes is too small for 4 ranks: it needs at "
                        r"least \d+ bytes \(ivmpi create PATH --size \d+\)\n", result.stdout), \
        result.stdout + result.stderr


def test_fast_path_leaves_an_over_limit_eager_frame_to_the_engine(kit):
    """The communicator's eager fast path must not deliver what the engine refuses."""
    from ivmpi._fastcopy import FAST_NOT_HANDLED, FastPath
    _, engine, peer = kit
    fast = FastPath(engine.tx, engine.rx, engine.posted, engine.unexpected, engine.backlog, 0,
                    engine.eager_limit)
    buffer = regionkit.GuardedBuffer(4096)
    peer.put(EAGER, length=2048, tag=1, payload=b"z" * 2048)
    assert fast.recv(buffer.view, 1, 1, 100) == FAST_NOT_HANDLED
    assert buffer.intact() and bytes(buffer.view) == bytes([regionkit.GUARD]) * 4096
    expect(engine, "peer 1: eager frame of 2048 bytes exceeds the eager limit 1024")


def test_object_receive_of_more_than_the_machine_holds(kit):
    """A rendezvous announcing more bytes than this machine's memory, matched by
    an object receive (which allocates the message's size): an error naming
    the peer, not a MemoryError or an attempt to allocate it."""
    _, engine, peer = kit
    op = engine.irecv(1, -1, 0, None)
    huge = 1 << 47
    peer.put(RTS, a=huge, b=1)
    with pytest.raises(CorruptRegionError,
                       match=f"^peer 1: a message of {huge} bytes announced for an object "
                             f"receive is larger than this machine's memory"):
        engine.progress()
    assert not op.done and op.data is None


# --- copies from the sender's memory (ivmpi/_single_copy.pxi) ------------------

@pytest.fixture
def copies_from_rank_1():
    """Rank 1 (played by hand here) is a process we may copy from: ourselves."""
    from ivmpi import _fastcopy
    saved = _fastcopy.single_copy_tables()
    _fastcopy.set_single_copy([0, os.getpid()], [False, False])
    yield
    _fastcopy.set_single_copy(*saved)


def _announce_at(peer, address, total=3000, send_id=1):
    peer.put(RTS, tag=5, length=8, a=total, b=send_id, payload=address.to_bytes(8, "little"))


def test_an_announced_address_is_copied_from(kit, copies_from_rank_1):
    from ivmpi import _fastcopy
    _, engine, peer = kit
    message = bytes((i * 7 + 3) & 0xFF for i in range(3000))
    _announce_at(peer, _fastcopy.buffer_span(message)[0])
    buffer = regionkit.GuardedBuffer(3000)
    op = engine.irecv(1, 5, 0, buffer.view)
    engine.progress()
    # The clear-to-send says all 3000 bytes were copied: nothing streams.
    assert peer.reverse_frames() == [(CTS, 0, 0, 0, 3000, 1)]
    assert op.done and op.count == 3000 and bytes(buffer.view) == message and buffer.intact()


def test_an_announced_address_may_come_with_a_message_under_the_eager_limit(kit,
                                                                            copies_from_rank_1):
    """To a receiver that copies, buffers from FastPath.copy_min bytes go by
    rendezvous below the eager limit (1024 here) too: copied, or streamed
    when the address cannot be read."""
    from ivmpi import _fastcopy
    _, engine, peer = kit
    message = bytes((i * 5 + 1) & 0xFF for i in range(500))
    _announce_at(peer, _fastcopy.buffer_span(message)[0], total=500)
    buffer = regionkit.GuardedBuffer(500)
    op = engine.irecv(1, 5, 0, buffer.view)
    engine.progress()
    assert peer.reverse_frames() == [(CTS, 0, 0, 0, 500, 1)]
    assert op.done and bytes(buffer.view) == message and buffer.intact()
    _announce_at(peer, 8, total=600, send_id=2)
    buffer = regionkit.GuardedBuffer(600)
    op = engine.irecv(1, 5, 0, buffer.view)
    engine.progress()
    assert peer.reverse_frames()[-1] == (CTS, 0, 0, 0, 0, 2)
    peer.put(DATA, length=600, a=0, b=2, payload=b"s" * 600)
    engine.progress()
    assert op.done and bytes(buffer.view) == b"s" * 600 and buffer.intact()


def test_an_announced_address_of_no_bytes(kit, copies_from_rank_1):
    _, engine, peer = kit
    _announce_at(peer, 4096, total=0)
    expect(engine, "peer 1: rendezvous announcement of 0 bytes with a 8-byte payload is impossible")


@pytest.mark.parametrize("address", [8, 2**64 - 4096])
def test_an_address_that_cannot_be_read_streams_instead(kit, copies_from_rank_1, address):
    _, engine, peer = kit
    _announce_at(peer, address)
    buffer = regionkit.GuardedBuffer(3000)
    op = engine.irecv(1, 5, 0, buffer.view)
    engine.progress()
    assert peer.reverse_frames() == [(CTS, 0, 0, 0, 0, 1)]      # the usual clear-to-send
    assert not op.done and buffer.intact()
    peer.put(DATA, length=1024, a=0, b=1, payload=b"a" * 1024)
    engine.progress()
    assert op.received == 1024 and bytes(buffer.view[:1024]) == b"a" * 1024


def test_no_copy_into_a_buffer_too_small(kit, copies_from_rank_1):
    from ivmpi import _fastcopy
    _, engine, peer = kit
    message = bytes(3000)
    _announce_at(peer, _fastcopy.buffer_span(message)[0])
    buffer = regionkit.GuardedBuffer(2000)
    op = engine.irecv(1, 5, 0, buffer.view)
    engine.progress()
    # Truncation, as without the address: the data are streamed and dropped.
    assert peer.reverse_frames() == [(CTS, 0, 0, 0, 0, 1)]
    assert buffer.intact() and bytes(buffer.view) == bytes([regionkit.GUARD]) * 2000


def test_cts_claiming_a_partial_copy(kit):
    _, engine, peer = kit
    op = engine.isend(1, memoryview(bytes(3000)), 0, 0)
    peer.put(CTS, a=1234, b=op.send_id)
    expect(engine, f"peer 1: clear-to-send says 1234 of the 3000 bytes of send id {op.send_id} "
                   f"were copied")
    assert not op.done
