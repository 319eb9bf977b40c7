"""The copy core (ivmpi._fastcopy.Mapping): exact copies, untouched
neighbours, checked ranges and buffers, words, release, and the GIL."""
import mmap
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ivmpi._fastcopy import NOGIL_THRESHOLD, Mapping, cpu_relax
from ivmpi.errors import BoundsError, BufferSpecError, RegionError

MODES = [pytest.param(False, id="memcpy"), pytest.param(True, id="strict")]
GUARD = 64          # bytes of pattern checked on each side of every target
MAX_MISALIGN = 16
MAX_LEN = 300


def pattern(n, seed):
    """n bytes that differ from their neighbours, so a shifted or partial
    copy cannot match by accident."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture
def region():
    mm = mmap.mmap(-1, 1 << 16)
    yield mm
    mm.close()


# -- exact copies with guard bytes -------------------------------------------

WINDOW = GUARD + MAX_MISALIGN + MAX_LEN + GUARD
BASE = GUARD        # 8-aligned: region offset BASE + d is misaligned by d


@pytest.mark.parametrize("strict", MODES)
def test_write_every_misalignment_and_length(region, strict):
    with Mapping(region, strict=strict) as m:
        background = pattern(WINDOW, 1)
        data = pattern(MAX_MISALIGN + MAX_LEN, 2)
        src = memoryview(bytearray(data))
        for d in range(MAX_MISALIGN):
            for s in range(MAX_MISALIGN):
                for n in range(MAX_LEN + 1):
                    region[:WINDOW] = background
                    m.write(BASE + d, src[s:s + n])
                    expected = (background[:BASE + d] + data[s:s + n]
                                + background[BASE + d + n:])
                    if region[:WINDOW] != expected:
                        pytest.fail(f"write dst+{d} src+{s} len {n}: region differs")


@pytest.mark.parametrize("strict", MODES)
def test_read_every_misalignment_and_length(region, strict):
    with Mapping(region, strict=strict) as m:
        data = pattern(WINDOW, 3)
        region[:WINDOW] = data
        background = pattern(WINDOW, 4)
        out = bytearray(WINDOW)
        view = memoryview(out)
        for d in range(MAX_MISALIGN):
            for s in range(MAX_MISALIGN):
                for n in range(MAX_LEN + 1):
                    out[:] = background
                    m.read(BASE + d, view[BASE + s:BASE + s + n])
                    expected = (background[:BASE + s] + data[BASE + d:BASE + d + n]
                                + background[BASE + s + n:])
                    if out != expected:
                        pytest.fail(f"read src+{d} dst+{s} len {n}: output differs")
        assert region[:WINDOW] == data, "reading changed the region"


@pytest.mark.parametrize("strict", MODES)
def test_fill_every_misalignment_and_length(region, strict):
    with Mapping(region, strict=strict) as m:
        background = pattern(WINDOW, 5)
        for d in range(MAX_MISALIGN):
            for n in range(MAX_LEN + 1):
                region[:WINDOW] = background
                m.fill(BASE + d, n, 0xC3)
                expected = background[:BASE + d] + b"\xC3" * n + background[BASE + d + n:]
                if region[:WINDOW] != expected:
                    pytest.fail(f"fill dst+{d} len {n}: region differs")


BIG = 4 << 20


@pytest.fixture(scope="module")
def big_region():
    mm = mmap.mmap(-1, BIG + 2 * 4096)
    yield mm
    mm.close()


@settings(max_examples=40, deadline=None)
@given(strict=st.booleans(), n=st.integers(0, BIG), dst_off=st.integers(0, 4096),
       src_off=st.integers(0, 63), seed=st.integers(0, 2**32 - 1))
def test_large_random_copies_round_trip(big_region, strict, n, dst_off, src_off, seed):
    mm = big_region
    total = len(mm)
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, total, dtype=np.uint8)
    mm[:] = background.tobytes()
    source = rng.integers(0, 256, n + src_off, dtype=np.uint8)
    with Mapping(mm, strict=strict) as m:
        m.write(dst_off, source[src_off:])
        region = np.frombuffer(mm, dtype=np.uint8)
        try:
            assert np.array_equal(region[dst_off:dst_off + n], source[src_off:])
            assert np.array_equal(region[:dst_off], background[:dst_off])
            assert np.array_equal(region[dst_off + n:], background[dst_off + n:])
        finally:
            del region          # let the mmap close later
        out = np.full(n + src_off + 8, 0x5A, dtype=np.uint8)
        m.read(dst_off, out[src_off:src_off + n])
        assert np.array_equal(out[src_off:src_off + n], source[src_off:])
        assert (out[:src_off] == 0x5A).all() and (out[src_off + n:] == 0x5A).all()


@pytest.mark.parametrize("n", [4095, 4096, 4097, 8192 + 77, 65536 + 37])
def test_copies_at_short_distances_modulo_a_page(big_region, n):
    """Copies whose destination lies just above the source modulo 4 KiB take
    their own vector loop (glibc's memcpy is slow there): every such
    distance, both directions, exact bytes, neighbours untouched."""
    mm = big_region
    rng = np.random.default_rng(n)
    background = rng.integers(0, 256, len(mm), dtype=np.uint8)
    source = rng.integers(0, 256, n + 8192, dtype=np.uint8)
    with Mapping(mm, strict=False) as m:
        for distance in list(range(0, 140, 3)) + [4095, 4096 - 64]:
            # destination - source == distance (mod 4096), both ways
            src_at = 100
            dst_off = (source.ctypes.data + src_at + distance - m.address) % 4096
            mm[:] = background.tobytes()
            m.write(dst_off, source[src_at:src_at + n])
            region = np.frombuffer(mm, dtype=np.uint8)
            try:
                assert np.array_equal(region[dst_off:dst_off + n], source[src_at:src_at + n])
                assert np.array_equal(region[:dst_off], background[:dst_off])
                assert np.array_equal(region[dst_off + n:], background[dst_off + n:])
            finally:
                del region
            out = np.full(n + 8192, 0x5A, dtype=np.uint8)
            region_at = m.address + dst_off
            out_at = (region_at + distance - out.ctypes.data) % 4096 + 64
            m.read(dst_off, out[out_at:out_at + n])
            assert np.array_equal(out[out_at:out_at + n], source[src_at:src_at + n])
            assert (out[:out_at] == 0x5A).all() and (out[out_at + n:] == 0x5A).all()


# -- what can be copied --------------------------------------------------------

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
          np.uint32, np.uint64, np.float16, np.float32, np.float64,
          np.complex64, np.complex128]


@pytest.mark.parametrize("strict", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_numpy_arrays_of_every_dtype(region, strict, dtype):
    raw = np.frombuffer(pattern(37 * 16, 6), dtype=np.uint8)
    # Bit patterns, not values: any byte pattern must survive (NaNs included).
    array = raw[:37 * np.dtype(dtype).itemsize].view(dtype)
    if dtype is np.bool_:
        array = array.astype(bool)
    with Mapping(region, strict=strict) as m:
        m.write(13, array)
        assert m.read_bytes(13, array.nbytes) == array.tobytes()
        back = np.empty_like(array)
        m.read(13, back)
        assert back.tobytes() == array.tobytes()
        two_d = np.empty((37, 1), dtype=dtype)
        m.read(13, two_d)       # multi-dimensional C-contiguous output is fine
        assert two_d.tobytes() == array.tobytes()


@pytest.mark.parametrize("strict", MODES)
def test_bytes_bytearray_memoryview(region, strict):
    data = pattern(100, 7)
    with Mapping(region, strict=strict) as m:
        for i, buf in enumerate([data, bytearray(data), memoryview(data),
                                 memoryview(bytearray(data)).cast("I", (25,))]):
            m.write(200 * i + 5, buf)
            assert m.read_bytes(200 * i + 5, 100) == data
        out = memoryview(bytearray(100))
        m.read(5, out)
        assert out.tobytes() == data
        empty = bytearray()
        m.write(0, b"")
        m.read(0, empty)
        assert m.read_bytes(0, 0) == b""


def test_read_only_nbytes(region):
    region[:8] = b"abcdefgh"
    out = bytearray(b"........")
    with Mapping(region) as m:
        m.read(0, out, 3)
        assert out == b"abc....."
        m.read(0, out, 0)
        assert out == b"abc....."


def test_non_contiguous_input_rejected(region):
    with Mapping(region) as m:
        with pytest.raises(BufferSpecError, match="C-contiguous"):
            m.write(0, np.arange(20, dtype=np.int32)[::2])
        with pytest.raises(BufferSpecError):
            m.write(0, np.zeros((4, 4))[:, 1])
        with pytest.raises(BufferSpecError):
            m.write(0, np.asfortranarray(np.zeros((3, 4))))
        with pytest.raises(BufferSpecError):
            m.write(0, memoryview(b"abcdef")[::2])
        with pytest.raises(BufferSpecError):
            m.write(0, "text is not a buffer")
        with pytest.raises(BufferSpecError):
            m.read(0, np.zeros(10)[::2])
        assert m.read_bytes(0, 64) == bytes(64), "a rejected copy touched the region"


def test_read_only_output_rejected(region):
    region[:4] = b"abcd"
    with Mapping(region) as m:
        for out in [b"xxxx", memoryview(bytearray(4)).toreadonly(),
                    np.zeros(4, np.uint8).copy()]:
            if isinstance(out, np.ndarray):
                out.flags.writeable = False
            with pytest.raises(BufferSpecError, match="writable"):
                m.read(0, out)


def test_output_too_small(region):
    out = bytearray(b"0123")
    with Mapping(region) as m:
        with pytest.raises(BoundsError, match="nbytes"):
            m.read(0, out, 5)
        with pytest.raises(BoundsError):
            m.read(0, out, -1)
    assert out == b"0123"


BAD_RANGES = [(-1, 1), (0, 65537), (65536, 1), (65535, 2), (1, 65536),
              (2**62, 2**62), (2**63 - 1, 2), (2**63, 1), (2**64 + 5, 1),
              (-(2**63), 1), (10, -1), (0, 2**63)]


@pytest.mark.parametrize("offset,n", BAD_RANGES)
def test_out_of_range_rejected(region, offset, n):
    region[:] = b"\x11" * len(region)
    with Mapping(region, strict=True) as m:
        with pytest.raises(BoundsError):
            m.read_bytes(offset, n)
        with pytest.raises(BoundsError):
            m.fill(offset, n, 0)
        if 0 <= n < 1 << 20:
            with pytest.raises(BoundsError):
                m.write(offset, bytes(n))
            with pytest.raises(BoundsError):
                m.read(offset, bytearray(n))
    assert region[:] == b"\x11" * len(region), "a rejected call touched the region"


def test_edges_of_the_region_are_usable(region):
    size = len(region)
    with Mapping(region, strict=True) as m:
        m.write(size - 3, b"xyz")
        assert m.read_bytes(size - 3, 3) == b"xyz"
        m.write(size, b"")                  # empty range at the very end
        assert m.read_bytes(size, 0) == b""
        m.store(size - 8, 42)
        assert m.load(size - 8) == 42
        with pytest.raises(BoundsError):
            m.load(size)


def test_fill_value_must_be_a_byte(region):
    with Mapping(region) as m:
        for value in (-1, 256):
            with pytest.raises(BufferSpecError):
                m.fill(0, 4, value)
        m.fill(0, 4, 255)
        assert m.read_bytes(0, 4) == b"\xff" * 4


# -- words ---------------------------------------------------------------------

@pytest.mark.parametrize("strict", MODES)
def test_words(region, strict):
    with Mapping(region, strict=strict) as m:
        for value in (0, 1, 2**32, 2**63, 2**64 - 1):
            m.store(8, value)
            assert m.load(8) == value
            m.store_release(16, value)
            assert m.load_acquire(16) == value
        m.store(24, 0x0102030405060708)
        assert m.read_bytes(24, 8) == (0x0102030405060708).to_bytes(8, sys.byteorder)
        m.store_u32(4, 0xDEADBEEF)
        assert m.load_u32(4) == 0xDEADBEEF
        assert m.read_bytes(4, 4) == (0xDEADBEEF).to_bytes(4, sys.byteorder)


def test_word_checks(region):
    region[:64] = bytes(range(64))
    with Mapping(region) as m:
        for op in (m.load, m.load_acquire):
            for offset in (1, 4, 7, -8, len(region), 2**64):
                with pytest.raises(BoundsError):
                    op(offset)
        for op in (m.store, m.store_release):
            with pytest.raises(BoundsError):
                op(4, 0)
            with pytest.raises(BoundsError):
                op(0, -1)
            with pytest.raises(BoundsError):
                op(0, 2**64)
        for offset in (2, 6, -4, len(region) - 2):
            with pytest.raises(BoundsError):
                m.load_u32(offset)
            with pytest.raises(BoundsError):
                m.store_u32(offset, 0)
        with pytest.raises(BoundsError):
            m.store_u32(0, 2**32)
    assert region[:64] == bytes(range(64))


# -- life cycle ----------------------------------------------------------------

def test_properties(region):
    m = Mapping(region, strict=True)
    assert m.size == len(region) == len(m)
    assert m.strict is True
    assert m.address % mmap.PAGESIZE == 0
    assert not m.closed
    assert Mapping(region).strict is False
    m.release()


def test_use_after_release(region):
    m = Mapping(region, strict=True)
    m.release()
    assert m.closed
    assert m.size == 0
    calls = [lambda: m.write(0, b"x"), lambda: m.read(0, bytearray(1)),
             lambda: m.read_bytes(0, 1), lambda: m.fill(0, 1), lambda: m.load(0),
             lambda: m.store(0, 1), lambda: m.load_acquire(0),
             lambda: m.store_release(0, 1), lambda: m.load_u32(0),
             lambda: m.store_u32(0, 1), lambda: m.address]
    for call in calls:
        with pytest.raises(RegionError, match="released"):
            call()
    m.release()             # a second release is harmless
    region.close()          # the export is gone, so the mmap can close


def test_context_manager_releases(region):
    with Mapping(region) as m:
        with pytest.raises(BufferError):
            region.close()  # the mapping still holds the buffer
    assert m.closed
    region.close()


def test_unmappable_objects():
    with pytest.raises(RegionError):
        Mapping(b"read-only bytes")
    with pytest.raises(RegionError):
        Mapping(42)
    with pytest.raises(RegionError):
        Mapping(np.zeros(8)[::2])


def test_cpu_relax():
    assert cpu_relax() is None


# -- the GIL -------------------------------------------------------------------

def _other_thread_progressed_during(operation, attempts=20):
    """Whether a second Python thread ran while `operation` was running.

    The switch interval is made huge, so the main thread never gives up the
    GIL while it runs Python code: the counter can only move between the two
    reads if `operation` released the GIL.  Repeated attempts absorb the
    chance that the other thread was not scheduled during one call."""
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0.0001)      # sleeps without the GIL: main never waits long

    old_interval = sys.getswitchinterval()
    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.01)
        sys.setswitchinterval(30)
        for _ in range(attempts):
            before = counter[0]
            operation()
            if counter[0] != before:
                return True
            time.sleep(0.001)
        return False
    finally:
        sys.setswitchinterval(old_interval)
        stop.set()
        thread.join()


@pytest.mark.parametrize("strict", MODES)
def test_large_copies_release_the_gil(strict):
    n = 32 << 20
    mm = mmap.mmap(-1, n)
    source = np.ones(n, dtype=np.uint8)
    out = np.empty(n, dtype=np.uint8)
    m = Mapping(mm, strict=strict)
    try:
        assert _other_thread_progressed_during(lambda: m.write(0, source))
        assert _other_thread_progressed_during(lambda: m.read(0, out))
        assert _other_thread_progressed_during(lambda: m.fill(0, n, 1))
        # The check can fail: a copy of the same size that keeps the GIL
        # (bytearray() copies while holding it) shows no progress.  Once is
        # enough: on a loaded machine a stray switch can still slip in.
        assert not all(_other_thread_progressed_during(lambda: bytearray(source), attempts=1)
                       for _ in range(3))
    finally:
        m.release()
        mm.close()


def test_small_copies_keep_the_gil():
    assert NOGIL_THRESHOLD >= 1024
    mm = mmap.mmap(-1, 4096)
    with Mapping(mm) as m:
        # Hundreds of tiny copies in one call-free loop must not let the
        # other thread in (each is far below the threshold).
        def many_small():
            for _ in range(2000):
                m.write(0, b"x" * 64)
        assert not _other_thread_progressed_during(many_small, attempts=3)
    mm.close()


def test_release_refused_while_a_copy_runs():
    n = 64 << 20
    mm = mmap.mmap(-1, n)
    source = np.zeros(n, dtype=np.uint8)
    m = Mapping(mm, strict=True)
    errors = []

    def copier():
        try:
            for _ in range(5):
                m.write(0, source)
        except RegionError:
            pass            # released between two copies: the expected error

    thread = threading.Thread(target=copier)
    thread.start()
    # Whenever release() runs during a copy it must refuse; when it runs
    # after the copies it succeeds.  Either way nothing crashes.
    while thread.is_alive():
        try:
            m.release()
            break
        except RegionError as exc:
            errors.append(exc)
    thread.join()
    m.release()
    assert m.closed
    assert all("copy is running" in str(e) for e in errors)
    mm.close()


def test_slow_plain_copies_send_large_payloads_by_streaming_stores():
    """Three slow plain copies in a row (slower than 2 GB/s) switch a ring's
    large payloads to streaming stores for a while; a fast one in between
    resets the count; only payloads of 16 KiB or more use the switch, and
    data arrives intact either way."""
    from ivmpi._fastcopy import RxRing, TxRing
    ring_bytes = 1 << 20
    mm = mmap.mmap(-1, ring_bytes + 4096)
    mem = Mapping(mm, strict=False)
    tx, rx = TxRing(mem, 0, ring_bytes, 1), RxRing(mem, 0, ring_bytes, 0)
    slow, fast = 64 * 1024 * 1000, 1000          # ns for 64 KiB: ~1 MB/s, ~65 GB/s
    assert tx.streaming_left == 0
    assert tx.note_plain_copy(65536, slow) == 0
    assert tx.note_plain_copy(65536, slow) == 0
    assert tx.note_plain_copy(65536, fast) == 0     # the run of slow ones is broken
    assert tx.note_plain_copy(65536, slow) == 0
    assert tx.note_plain_copy(65536, slow) == 0
    left = tx.note_plain_copy(65536, slow)
    assert left > 0
    rng = np.random.default_rng(5)
    for size in (65536, 4096, 20000, 65536):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert tx.send(1, 3, 0, 0, 0, data)
        assert rx.poll()
        assert bytes(rx.payload()) == data
        rx.consume()
        if size >= 16384:
            left -= 1
        assert tx.streaming_left == left
    del tx, rx
    mem.release()
    mm.close()


def _ring_pair(ring_bytes=1 << 20):
    from ivmpi._fastcopy import RxRing, TxRing
    mm = mmap.mmap(-1, ring_bytes + 4096)
    mem = Mapping(mm, strict=False)
    return mm, mem, TxRing(mem, 0, ring_bytes, 1), RxRing(mem, 0, ring_bytes, 0)


def test_large_eager_payloads_go_in_parts_and_arrive_whole():
    """Eager payloads of 16 KiB or more are published as EAGER_PARTS frames
    (kind 9; synchronous ones EAGER_SYNC_PARTS, 10) whose fill word ends at
    the payload's length; the consumer presents them as EAGER (EAGER_SYNC).
    Smaller ones, and other kinds, stay as they are."""
    from ivmpi._fastcopy import KIND_EAGER_PARTS, KIND_EAGER_SYNC_PARTS
    mm, mem, tx, rx = _ring_pair()
    rng = np.random.default_rng(9)
    data_offset = 128
    for kind, size, parted in ((1, 16384, True), (1, 65536, True), (1, 20001, True),
                               (1, 16383, False), (2, 65536, True), (2, 16383, False),
                               (5, 65536, False)):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert tx.send(kind, 7, 3, 0, 44, data)
        # Where it went (an empty ring may restart at its start, after a PAD).
        pos = data_offset + (tx.head_index - 32 - (size + 7) // 8 * 8) % (1 << 20)
        word0 = mem.load(pos)
        parts_kind = KIND_EAGER_PARTS if kind == 1 else KIND_EAGER_SYNC_PARTS
        assert word0 & 0xFFFFFFFF == (parts_kind if parted else kind)
        assert mem.load(pos + 24) == 44                  # b (a synchronous send's id) kept
        assert word0 >> 32 == size
        if parted:
            assert mem.load(pos + 16) == size          # the fill word, complete
        assert rx.poll()
        assert (rx.kind, rx.tag, rx.context, rx.b, rx.length) == (kind, 7, 3, 44, size)
        assert rx.parts == parted and rx.a == 0
        assert bytes(rx.payload()) == data
        rx.consume()
    del tx, rx
    mem.release()
    mm.close()


def test_a_receiver_copies_parts_as_the_sender_fills_them():
    """A frame in parts published with nothing filled yet: the reader copies
    each part as its fill word moves (here a slow hand-made sender in another
    thread), and the whole payload arrives; consume() waits for the fill."""
    mm, mem, tx, rx = _ring_pair(1 << 16)
    size = 40000
    data = np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8).tobytes()
    # Header by hand: kind 9, length, tag 5, fill word 0, b 0; then the head.
    mem.store(128, 9 | (size << 32))
    mem.store(128 + 8, 5)
    mem.store(128 + 16, 0)
    mem.store(128 + 24, 0)
    head_word = 0                     # the ring's head sits in its control block
    fsize = 32 + (size + 7) // 8 * 8
    filled_at = []

    def sender():
        for end in (8192, 16384, 30000, size):
            time.sleep(0.02)
            start = filled_at[-1][0] if filled_at else 0
            mem.write(128 + 32 + start, data[start:end])
            filled_at.append((end, time.monotonic()))
            mem.store_release(128 + 16, end)

    mem.store_release(head_word, fsize)
    assert rx.poll() and rx.parts and rx.filled == 0
    thread = threading.Thread(target=sender)
    thread.start()
    got = rx.payload()
    thread.join()
    assert bytes(got) == data and rx.filled == size
    rx.consume()
    assert not rx.poll()
    del tx, rx
    mem.release()
    mm.close()


def _stream_through(tx, rx, data, chunk, lag=1, windowed=True):
    """Stream data as DATA chunks, one at a time, the receiver draining once
    `lag` chunks are waiting (or all are out); the ring offsets where the
    chunks ended."""
    ring = 1 << 20
    out = bytearray(len(data))
    sent = got = 0
    ends = []
    while got < len(data):
        if sent < len(data) and sent - got < lag * chunk:
            n = min(chunk, len(data) - sent)
            assert tx.stream(data[:sent + n], sent, chunk, 7, 0, None, windowed) == sent + n
            ends.append(tx.head_index % ring or ring)
            sent += n
        elif rx.poll():
            assert rx.kind == 5
            got = rx.drain_data(out, 7, got, len(data), chunk, False)
    assert bytes(out) == data
    return ends


def test_a_stream_read_as_it_comes_cycles_through_the_rings_first_quarter():
    """A blocking send's DATA chunks restart at the ring's start (after a
    PAD) rather than run past 256 KiB of a 1 MiB ring when the receiver
    has read the start of the current lap already, so the stream keeps
    reusing the same lines; a receiver further behind, other streams and
    eager frames get the whole ring; every chunk arrives in order."""
    mm, mem, tx, rx = _ring_pair()
    chunk, window = 65536, 262144
    data = np.random.default_rng(4).integers(0, 256, 16 * chunk + 100, dtype=np.uint8).tobytes()
    ends = _stream_through(tx, rx, data, chunk)
    assert len(ends) == 17 and max(ends) <= window and ends.count(chunk + 32) >= 3
    # A receiver that reads only once five chunks wait: no restart in time.
    ends = _stream_through(tx, rx, data, chunk, lag=5)
    assert max(ends) > window
    # A stream of a sender that serves other things meanwhile: the whole ring.
    ends = _stream_through(tx, rx, data, chunk, windowed=False)
    assert max(ends) > window
    # Eager frames unread pile up past the window.
    while tx.head_index % (1 << 20) > window:
        assert tx.send(1, 0, 0, 0, 0, b"x" * 8) and rx.poll()
        rx.consume()
    for i in range(6):
        assert tx.send(1, i, 0, 0, 0, bytes(60000))
    assert (tx.head_index % (1 << 20)) > window
    del tx, rx
    mem.release()
    mm.close()


def test_an_empty_ring_takes_a_frame_longer_than_the_restart_would_leave():
    """An empty ring restarts small frames at its start (a PAD to the end);
    a frame longer than the bytes before the current position would not fit
    after that PAD, so it goes where it is, at the first attempt."""
    mm, mem, tx, rx = _ring_pair()
    for size in (40000, 65536):          # the second starts at 40032 >= 32 KiB, empty ring
        assert tx.send(1, 1, 0, 0, 0, bytes(size))
        assert rx.poll() and rx.length == size
        rx.payload()
        rx.consume()
    del tx, rx
    mem.release()
    mm.close()


def test_a_large_eager_frame_into_a_ring_still_holding_frames_goes_whole():
    """Parts only help a receiver that is waiting for this very frame: into
    a ring whose receiver is still behind (frames unread) it goes whole."""
    from ivmpi._fastcopy import KIND_EAGER_PARTS
    mm, mem, tx, rx = _ring_pair()
    first, second = bytes(range(256)) * 80, bytes(reversed(range(256))) * 80   # 20480 each
    assert tx.send(1, 1, 0, 0, 0, first)          # empty ring: in parts
    assert tx.send(1, 2, 0, 0, 0, second)         # the first still unread: whole
    fsize = 32 + len(first)
    assert mem.load(128) & 0xFFFFFFFF == KIND_EAGER_PARTS
    assert mem.load(128 + fsize) & 0xFFFFFFFF == 1
    for tag, data in ((1, first), (2, second)):
        assert rx.poll() and rx.kind == 1 and rx.tag == tag
        assert rx.parts == (tag == 1) and bytes(rx.payload()) == data
        rx.consume()
    del tx, rx
    mem.release()
    mm.close()


@pytest.mark.parametrize("n", [0, 1, 63, 4096, 16384, 100003, 1 << 20])
@pytest.mark.parametrize("shift", [0, 3])
def test_stage_into_copies_exactly_the_source(n, shift):
    """A staging copy writes src's bytes at the start of dst and nothing
    past them, at any length and alignment; a source longer than the
    destination is refused."""
    from ivmpi._fastcopy import stage_into
    rng = np.random.default_rng(n + shift)
    src = rng.integers(0, 256, n + shift, dtype=np.uint8)[shift:]
    dst = np.full(n + shift + 64, 7, np.uint8)
    stage_into(memoryview(dst)[shift:], src)
    assert np.array_equal(dst[shift:shift + n], src)
    assert (dst[:shift] == 7).all() and (dst[shift + n:] == 7).all()
    with pytest.raises(ValueError):
        stage_into(bytearray(n), bytes(n + 1))
