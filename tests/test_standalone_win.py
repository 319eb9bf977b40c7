"""Windows in standalone mode (IVMPI_RANK/IVMPI_SIZE, no launcher: ranks meet
through the region alone), with and without strict-align copies; and the
one-call Put/Get path's region accesses traced in strict mode."""
import mmap
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ivmpi import _fastcopy_trace as traced
from ivmpi.region import Region

from standalone_job import run_standalone
from test_alignment_trace import strictness_violations, traced_call

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, time
    import numpy as np
    from ivmpi import MPI
    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    report = {}

    # Allocate_shared: every rank's part, straight from numpy.
    win = MPI.Win.Allocate_shared(8 * 5, 8, comm=comm)
    win.Fence()
    mine = np.frombuffer(win.Shared_query(rank)[0], "f8")
    mine[:] = rank + 0.25
    win.Fence()
    report["shared"] = [float(np.frombuffer(win.Shared_query(r)[0], "f8").sum())
                        for r in range(size)]
    win.Free()

    # Allocate and Create: Put, Get, Accumulate under Fence (odd sizes and offsets).
    results = []
    for flavor in ("allocate", "create"):
        user = bytearray(200)
        win = (MPI.Win.Allocate(200, 1, comm=comm) if flavor == "allocate"
               else MPI.Win.Create(user, 1, comm=comm))
        memory = win.tomemory()
        win.Fence()
        right, left = (rank + 1) % size, (rank - 1) % size
        win.Put(bytes(range(rank, rank + 37)), right, 3)
        win.Fence()
        win.Accumulate(np.full(5, rank + 1, "i4"), right, (64, 5, MPI.INT), MPI.SUM)
        win.Fence()
        got = bytearray(37)
        win.Get(got, right, 3)
        win.Fence()
        results.append([bytes(memory[3:40]) == bytes(range(left, left + 37)),
                        bytes(got) == bytes(range(rank, rank + 37)),
                        np.frombuffer(bytes(memory[64:84]), "i4").tolist()])
        win.Free()
    report["flavors"] = results

    # A counter at rank 0, which sleeps outside MPI meanwhile.
    win = MPI.Win.Allocate(8 if rank == 0 else 0, 8, comm=comm)
    win.Fence()
    comm.Barrier()
    if rank == 0:
        counter = np.frombuffer(win.tomemory(), "i8")
        deadline = time.monotonic() + 60
        while counter[0] != 25 * (size - 1) and time.monotonic() < deadline:
            time.sleep(0.01)
        report["counter"] = int(counter[0])
    else:
        prev = np.zeros(1, "i8")
        seen = []
        win.Lock(0, MPI.LOCK_SHARED)
        for _ in range(25):
            win.Fetch_and_op(np.ones(1, "i8"), prev, 0, 0, MPI.SUM)
            win.Flush(0)
            seen.append(int(prev[0]))
        win.Unlock(0)
        report["increasing"] = seen == sorted(seen)
    comm.Barrier()
    win.Free()
    print(json.dumps(report))
""")


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict-align"])
def test_standalone_windows(tmp_path, strict):
    size = 3
    reports = run_standalone(tmp_path, WORKER, size, strict=strict, region_bytes=16 << 20,
                             timeout=180)
    for rank, report in enumerate(reports):
        assert report["shared"] == [5 * (r + 0.25) for r in range(size)]
        left = (rank - 1) % size
        for put_seen, get_seen, summed in report["flavors"]:
            assert put_seen and get_seen
            assert summed == [left + 1] * 5
        if rank == 0:
            assert report["counter"] == 25 * (size - 1)
        else:
            assert report["increasing"]


@pytest.fixture
def strict_mapping():
    mm = mmap.mmap(-1, 1 << 16)
    m = traced.Mapping(mm, strict=True)
    yield m
    m.release()
    mm.close()


@pytest.mark.parametrize("offset,disp,length", [(0, 0, 8), (64, 3, 13), (128, 1, 4096 + 5),
                                                (1024, 7, 1), (2048, 0, 20000)])
def test_one_call_put_and_get_are_strict_aligned(strict_mapping, offset, disp, length):
    """The one-call path copies through the aligned copy core in strict mode:
    every access naturally aligned, exactly the target bytes."""
    fast = traced.WinFast(strict_mapping, [-1, offset], [0, 32768], [1, 1], 0)

    def general(*args):
        raise AssertionError("the one-call path should have taken this")
    fast.general_put = fast.general_get = fast.general_flush = general
    fast.dirty, fast.pending = set(), {}
    fast.allowed[1] = 1
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8)
    start = strict_mapping.address + offset + disp
    addresses, widths = traced_call(lambda: fast.Put(data, 1, disp))
    assert strictness_violations(addresses, widths, start, length) == []
    assert strict_mapping.read_bytes(offset + disp, length) == data.tobytes()
    back = np.zeros(length, dtype=np.uint8)
    addresses, widths = traced_call(lambda: fast.Get(back, 1, disp))
    assert strictness_violations(addresses, widths, start, length) == []
    assert (back == data).all()


@pytest.mark.parametrize("disp,count", [(0, 3), (5, 7), (16, 1000)])
def test_one_call_accumulate_is_strict_aligned(strict_mapping, disp, count):
    """In strict mode the one-call Accumulate combines in a private copy: the
    target bytes are read once and written once by the aligned copy core,
    exactly those bytes, and the sum is right."""
    from mpi4py import MPI as library
    from ivmpi.win import _accumulate_tables
    offset = 4096
    fast = traced.WinFast(strict_mapping, [-1, offset], [0, 16384], [1, 1], 0)

    def general(*args):
        raise AssertionError("the one-call path should have taken this")
    fast.general_accumulate = general
    fast.dirty, fast.pending = set(), {}
    fast.allowed[1] = 1
    fast.lock_blocks = [0, 256]             # two ranks' bakery and lock words, zero
    fast.acc_types, fast.acc_ops = _accumulate_tables()
    before = np.arange(count, dtype="f8")
    strict_mapping.write(offset + disp, before.tobytes())
    data = np.full(count, 0.5)
    start, length = strict_mapping.address + offset + disp, 8 * count
    addresses, widths = traced_call(lambda: fast.Accumulate(data, 1, disp, library.SUM))
    addresses, widths = np.asarray(addresses, dtype=np.uint64), np.asarray(widths)
    mine = addresses >= strict_mapping.address + 1024       # not the bakery's words
    addresses, widths = addresses[mine], widths[mine]
    split = int(np.searchsorted(np.cumsum(widths), length)) + 1
    assert strictness_violations(addresses[:split], widths[:split], start, length) == []
    assert strictness_violations(addresses[split:], widths[split:], start, length) == []
    after = np.frombuffer(strict_mapping.read_bytes(offset + disp, length), "f8")
    assert (after == before + 0.5).all()


def test_one_call_path_leaves_the_rest_to_the_general_one(strict_mapping):
    calls = []
    fast = traced.WinFast(strict_mapping, [-1, 0], [0, 100], [1, 8], 0)
    fast.general_put = lambda *a: calls.append(("put",) + a[1:])
    fast.general_get = lambda *a: calls.append(("get",) + a[1:])
    fast.general_flush = lambda *a: calls.append(("flush",) + a)
    fast.dirty, fast.pending = {1}, {}
    data = np.zeros(2)
    fast.Put(data, 1, 0)            # no epoch open yet
    fast.allowed[1] = 1
    fast.Put(data, 1, 12)           # past the end: 96 + 16 > 100
    fast.Put(data, 0, 0)            # memory outside the region
    fast.Put(data, 1, (0, 2))       # a target spec
    fast.Get(np.zeros(8)[::2], 1, 0)      # strided
    fast.passive[1] = 1
    fast.Flush(1)                   # requests outstanding to rank 1
    assert [c[0] for c in calls] == ["put", "put", "put", "put", "get", "flush"]
    fast.Put(data, 1, 10)           # in range: done here
    assert len(calls) == 6
    assert strict_mapping.read_bytes(80, 16) == bytes(16)


EXIT_WORKER = textwrap.dedent("""
    import time
    import numpy as np
    from ivmpi import MPI
    comm = MPI.COMM_WORLD
    win = MPI.Win.Create(bytearray(64), 8, comm=comm)
    if comm.rank != 0:
        time.sleep(0.5)            # rank 0 is at exit by now, its window not freed
        win.Lock(0, MPI.LOCK_EXCLUSIVE)
        win.Put(np.full(1, comm.rank, "i8"), 0, comm.rank)
        win.Unlock(0)
    print("done")
""")


def test_an_unfreed_window_is_served_until_every_member_exits(tmp_path):
    path = str(tmp_path / "region")
    Region.create(path, size=16 << 20).close()
    script = tmp_path / "exit_worker.py"
    script.write_text(EXIT_WORKER)
    procs = []
    for rank in range(3):
        env = dict(os.environ, IVMPI_RANK=str(rank), IVMPI_SIZE="3", IVMPI_REGION=path,
                   IVMPI_TIMEOUT="60", PYTHONPATH=ROOT)
        env.pop("IVMPI_MPI4PY", None)
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "done", err


class _FakeEngine:
    def __init__(self):
        self.sent = []

    def isend(self, dest, mem, tag, context):
        self.sent.append((dest, tag, bytes(mem)))


class _FakeWindow:
    """What an owner needs of its window: ranks, context, an engine."""
    rank, world, ctx = 0, [0, 1], 8
    comm_rank_of = {0: 0, 1: 1}

    def __init__(self):
        self.engine = _FakeEngine()


def _request(kind, reqid=0, disp=0, runs=(), payload=b"", op=0, dtype=0, extra=0, paylen=None,
             nruns=None):
    import struct
    header = struct.pack("<8q", kind, reqid, disp, len(runs) if nruns is None else nruns, op,
                         dtype, len(payload) if paylen is None else paylen, extra)
    body = b"".join(struct.pack("<2q", o, n) for o, n in runs)
    return header + body + payload


def test_the_owner_refuses_malformed_requests():
    """A corrupt or hostile peer's requests give it errors; the owner's memory
    and its own state stay as they were."""
    from ivmpi import win as W
    window = _FakeWindow()
    owner = W._Owner(window)
    memory = bytearray(range(64))
    owner.memory = W._LocalMemory(memoryview(memory))
    int_index = W._TYPE_INDEX[W._MPI.INT.handle]
    bad = [
        b"\x01\x00",                                                  # shorter than a header
        _request(99, 5),                                              # unknown kind
        _request(W.GET, 5, runs=[(0, 8)], nruns=1000),               # runs beyond the message
        _request(W.GET, 5, runs=[(60, 8)]),                           # past the end
        _request(W.GET, 5, disp=-8, runs=[(0, 8)]),                   # before the start
        _request(W.GET, 5, runs=[(0, -4)]),                           # negative length
        _request(W.GET_ACC, 5, runs=[(0, 8)], payload=bytes(8), op=77, dtype=int_index),
        _request(W.GET_ACC, 5, runs=[(0, 8)], payload=bytes(8), op=0, dtype=10 ** 6),
        _request(W.GET_ACC, 5, runs=[(0, 6)], payload=bytes(6), op=0, dtype=int_index),
        _request(W.GET_ACC, 5, runs=[(0, 8)], payload=bytes(4), op=0, dtype=int_index),
        _request(W.CAS, 5, runs=[(0, 4)], payload=bytes(4), dtype=int_index),
        _request(W.LOCK, 5, extra=3),
        _request(W.UNLOCK, 5),                                        # never locked
    ]
    for data in bad:
        window.engine.sent.clear()
        owner.errors.clear()
        owner.handle(1, data)
        if window.engine.sent:
            (dest, tag, reply), = window.engine.sent
            assert dest == 1 and tag == 5
            assert int.from_bytes(reply[:8], "little", signed=True) != 0, data
        else:       # unreadable: kept for the origin's next flush
            assert 1 in owner.errors, data
    assert bytes(memory) == bytes(range(64))
    assert owner.locks.exclusive is None and not owner.locks.shared
    # Requests without a reply: the error waits for the origin's next flush.
    owner.errors.clear()
    owner.handle(1, _request(W.PUT, 0, runs=[(62, 4)], payload=b"abcd"))
    assert bytes(memory) == bytes(range(64))
    window.engine.sent.clear()
    owner.handle(1, _request(W.FLUSH, 9))
    (dest, tag, reply), = window.engine.sent
    assert tag == 9 and int.from_bytes(reply[:8], "little") == W._MPI.ERR_RMA_RANGE
    assert b"outside the window" in reply[8:]
    # And a good request still works afterwards.
    owner.handle(1, _request(W.PUT, 0, runs=[(0, 4)], payload=b"abcd"))
    assert memory[:4] == b"abcd"


def _counter_fast(mapping):
    """A WinFast over a strict mapping as rank 0 of 2, target 1's part at
    offset 0 (8-byte units), the bakery words of ranks 0 and 1 at 512 and 544."""
    calls = []
    fast = traced.WinFast(mapping, [-1, 0], [0, 64], [1, 8], 0)
    fast.general_put = fast.general_get = fast.general_flush = None
    fast.general_fetch_and_op = lambda *a: calls.append(a)
    fast.dirty, fast.pending = set(), {}
    fast.allowed[1] = 1
    fast.lock_blocks = [512, 544]
    from ivmpi.lib import MPI
    fast.sum_op = MPI.SUM
    fast.op_codes = {MPI.SUM.handle: 0, MPI.NO_OP.handle: 1, MPI.REPLACE.handle: 2,
                     MPI.MAX.handle: 3, MPI.MIN.handle: 4}
    return fast, calls


@pytest.mark.parametrize("dtype", ["i4", "u4", "i8", "u8", "q", "Q", "f8"])
def test_one_call_fetch_and_op_computes_as_numpy(strict_mapping, dtype):
    from ivmpi.lib import MPI
    fast, calls = _counter_fast(strict_mapping)
    expect = {"SUM": np.add, "MAX": np.maximum, "MIN": np.minimum,
              "REPLACE": lambda old, new: new, "NO_OP": lambda old, new: old}
    item = np.dtype(dtype).itemsize
    for name, combine in expect.items():
        for start, given in ((5, 3), (7, 9), (np.iinfo(dtype).max if dtype[0] in "iuqQ" else 1e300,
                                               1)):
            start = np.array([start], dtype)
            strict_mapping.write(8, start.tobytes())
            prev = np.zeros(1, dtype)
            fast.Fetch_and_op(np.array([given], dtype), prev, 1, 1, getattr(MPI, name))
            assert not calls
            assert prev[0] == start[0]
            now = np.frombuffer(strict_mapping.read_bytes(8, item), dtype)[0]
            with np.errstate(over="ignore"):
                assert now == combine(start, np.array([given], dtype))[0], (name, start, given)
    # The lock words are all down again.
    assert strict_mapping.read_bytes(512, 64) == bytes(64)


def test_one_call_fetch_and_op_gives_way_to_a_holder(strict_mapping):
    from ivmpi.lib import MPI
    fast, calls = _counter_fast(strict_mapping)
    strict_mapping.store(544 + 16 + 8, 1)       # rank 1 holds target 1's lock (ticket 1)
    prev = np.zeros(1, "i8")
    fast.Fetch_and_op(np.ones(1, "i8"), prev, 1, 0, MPI.SUM)
    assert len(calls) == 1                      # the general path waits instead
    assert strict_mapping.load(512 + 16 + 8) == 0 and strict_mapping.load(512 + 16) == 0
    assert strict_mapping.read_bytes(0, 8) == bytes(8)
    # Not the counter's case: a list spec, a user op, two elements.
    fast.Fetch_and_op([np.ones(1, "i8"), MPI.LONG], prev, 1, 0, MPI.SUM)
    fast.Fetch_and_op(np.ones(2, "i8"), np.zeros(2, "i8"), 1, 0, MPI.SUM)
    fast.Fetch_and_op(np.ones(1, "i8"), prev, 1, 0, MPI.PROD)
    assert len(calls) == 4


def test_region_runs_are_strict_aligned_and_exact(strict_mapping):
    """Put/Get of a derived target type to region memory: each run copied
    with aligned accesses covering exactly its bytes, nothing else touched."""
    runs = np.array([[1, 3], [17, 8], [40, 13], [70, 1]], dtype=np.int64)
    base = 1000
    data = np.arange(25, dtype=np.uint8) + 1
    before = strict_mapping.read_bytes(0, 2048)
    addresses, widths = traced_call(lambda: traced.region_put_runs(strict_mapping, base, runs,
                                                                   data))
    at = 0
    for offset, length in runs:
        start = strict_mapping.address + base + offset
        mine = (addresses >= start) & (addresses < start + length)
        assert strictness_violations(addresses[mine], widths[mine], start, length) == []
        assert strict_mapping.read_bytes(base + offset, length) == data[at:at + length].tobytes()
        at += length
    assert int(widths.sum()) == len(data)
    after = bytearray(strict_mapping.read_bytes(0, 2048))
    for offset, length in runs:
        after[base + offset:base + offset + length] = before[base + offset:base + offset + length]
    assert bytes(after) == before
    back = np.zeros(25, dtype=np.uint8)
    traced.region_get_runs(strict_mapping, base, runs, back)
    assert (back == data).all()
    with pytest.raises(Exception):
        traced.region_put_runs(strict_mapping, len(strict_mapping) - 8, runs, data)
    with pytest.raises(Exception):
        traced.region_put_runs(strict_mapping, base, runs, data[:-1])
