"""Strict mode touches the region only with naturally aligned 1/2/4/8-byte
accesses (and 16-byte ones on x86-64) that cover exactly the requested range.

Uses ivmpi._fastcopy_trace, the same copy core built with
IVMPI_TRACE_ACCESS, which records the address and width of every region
access (width 0 = a memcpy/memset of unknown widths)."""
import mmap
import platform

import numpy as np
import pytest

from ivmpi import _fastcopy_trace as traced

ALLOWED_WIDTHS = (1, 2, 4, 8, 16) if platform.machine() in ("x86_64", "AMD64") else (1, 2, 4, 8)


def strictness_violations(addresses, widths, start, length):
    """Every way the recorded accesses break the strict rule for a copy of
    [start, start + length); empty when they obey it."""
    problems = []
    addresses = np.asarray(addresses, dtype=np.uint64).astype(object)
    widths = np.asarray(widths).astype(int)
    for address, width in zip(addresses, widths):
        if width not in ALLOWED_WIDTHS:
            problems.append(f"width {width} at {address:#x}")
        elif address % width:
            problems.append(f"{width}-byte access at unaligned {address:#x}")
        if address < start or address + max(width, 1) > start + length:
            problems.append(f"access {address:#x}+{width} outside the target")
    if int(widths.sum()) != length:
        problems.append(f"accesses cover {int(widths.sum())} bytes, not {length}")
    order = np.argsort(addresses.astype(np.uint64), kind="stable")
    cursor = start
    for address, width in zip(addresses[order], widths[order]):
        if address != cursor:
            problems.append(f"gap or overlap at {address:#x} (expected {cursor:#x})")
            break
        cursor += width
    return problems


def traced_call(call):
    traced.trace_reset()
    call()
    assert not traced.trace_overflowed(), "trace buffer too small for this test"
    return traced.trace_get()


@pytest.fixture
def mapping():
    mm = mmap.mmap(-1, 1 << 16)
    m = traced.Mapping(mm, strict=True)
    yield m
    m.release()
    mm.close()


def test_strict_copies_are_aligned_and_exact(mapping):
    base = mapping.address
    src = memoryview(bytearray(np.random.default_rng(0).integers(0, 256, 400, np.uint8)))
    out = memoryview(bytearray(400))
    for d in range(16):
        for s in range(16):
            for n in range(301):
                off = 64 + d
                for what, call in (("write", lambda: mapping.write(off, src[s:s + n])),
                                   ("read", lambda: mapping.read(off, out[s:s + n]))):
                    addresses, widths = traced_call(call)
                    problems = strictness_violations(addresses, widths, base + off, n)
                    if problems:
                        pytest.fail(f"{what} region+{d} private+{s} len {n}: {problems[:3]}")


def test_strict_fill_is_aligned_and_exact(mapping):
    base = mapping.address
    for d in range(16):
        for n in range(301):
            addresses, widths = traced_call(lambda: mapping.fill(64 + d, n, 0xFF))
            problems = strictness_violations(addresses, widths, base + 64 + d, n)
            if problems:
                pytest.fail(f"fill region+{d} len {n}: {problems[:3]}")


BODY = max(ALLOWED_WIDTHS)


def test_strict_large_copy_uses_the_widest_body(mapping):
    """The body of a large copy is made of the widest allowed accesses: 8
    bytes, or 16 on x86-64 (after one more 8-byte step to reach 16-byte
    alignment)."""
    base = mapping.address
    n = 60000
    head = 1 + 4 + (8 if BODY == 16 else 0)
    for call in (lambda: mapping.write(3, bytes(n)), lambda: mapping.read(3, bytearray(n)),
                 lambda: mapping.fill(3, n, 7)):
        addresses, widths = traced_call(call)
        assert strictness_violations(addresses, widths, base + 3, n) == []
        assert (widths == BODY).sum() == (n - head) // BODY


def test_words_are_single_aligned_accesses(mapping):
    base = mapping.address
    for call, offset, width in [
            (lambda: mapping.load(24), 24, 8),
            (lambda: mapping.store(24, 7), 24, 8),
            (lambda: mapping.load_acquire(32), 32, 8),
            (lambda: mapping.store_release(32, 9), 32, 8),
            (lambda: mapping.load_u32(12), 12, 4),
            (lambda: mapping.store_u32(12, 5), 12, 4)]:
        addresses, widths = traced_call(call)
        assert addresses.tolist() == [base + offset]
        assert widths.tolist() == [width]


def test_rejected_calls_touch_nothing(mapping):
    size = mapping.size
    for call in (lambda: mapping.write(size - 2, b"abc"),
                 lambda: mapping.read(-1, bytearray(4)),
                 lambda: mapping.fill(0, size + 1),
                 lambda: mapping.load(4),
                 lambda: mapping.store_u32(2, 1)):
        traced.trace_reset()
        with pytest.raises(IndexError):
            call()
        assert len(traced.trace_get()[0]) == 0


def test_the_check_detects_a_memcpy():
    """Non-strict mode calls memcpy, recorded as width 0: the same check
    must flag it, so the strict results above are not vacuous."""
    mm = mmap.mmap(-1, 4096)
    m = traced.Mapping(mm, strict=False)
    addresses, widths = traced_call(lambda: m.write(3, bytes(100)))
    assert widths.tolist() == [0]
    assert strictness_violations(addresses, widths, m.address + 3, 100) != []
    addresses, widths = traced_call(lambda: m.fill(0, 100, 1))
    assert strictness_violations(addresses, widths, m.address, 100) != []
    m.release()
    mm.close()


def test_the_check_detects_bad_accesses():
    start = 0x1000
    good = ([0x1001, 0x1002, 0x1004, 0x1008], [1, 2, 4, 1])
    assert strictness_violations(*good, 0x1001, 8) == []
    assert strictness_violations([0x1001], [8], 0x1001, 8)          # unaligned
    assert strictness_violations([0x1000, 0x1010], [8, 8], start, 16)  # gap
    assert strictness_violations([0x1000, 0x1000], [8, 8], start, 16)  # overlap
    assert strictness_violations([0x0ff8], [8], start, 8)             # outside
    assert strictness_violations([0x1000], [32], start, 32)           # too wide
    assert strictness_violations([0x1000], [8], start, 9)             # short


def test_trace_overflow_is_reported(mapping):
    traced.trace_reset()
    accesses = traced.TRACE_CAPACITY + 10
    big = mmap.mmap(-1, accesses * BODY)
    with traced.Mapping(big, strict=True) as m:
        m.fill(0, accesses * BODY, 0)
    assert traced.trace_overflowed()
    assert len(traced.trace_get()[0]) == traced.TRACE_CAPACITY
    traced.trace_reset()
    assert not traced.trace_overflowed()
    big.close()
