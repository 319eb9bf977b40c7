"""Load and integrity under mpirun (any size >= 2; the suite runs 2, 3, 4).

Every rank computes the same random plan for a round: who sends what to
whom, with which tag, size (0 B .. 8 MiB) and mode (Send, Isend, Issend).
Receivers take messages with ANY_SOURCE (probe-then-receive, or a posted
ANY_SOURCE/ANY_TAG receive) and check each against the plan: the next
message expected from that (source, tag), the right size, and content whose
SHA-256 matches, both the one the message carries in its last 32 bytes and
the one of the bytes the sender generated.  At the end the counts sent and
received agree exactly: nothing lost, duplicated, reordered within
(source, tag, communicator) or corrupted.

IVMPI_SOAK_ROUNDS=N runs N rounds instead of the suite's few (a long soak).
"""
import hashlib
import os
from collections import defaultdict, deque

import numpy as np
import pytest

from ivmpi import layout
from ivmpi.engine import COPY_MIN
from mpi4py import MPI as _MPI

from ivmpi import MPI

pytestmark = pytest.mark.mpi(min_size=2)

RANK = _MPI.COMM_WORLD.Get_rank()
SIZE = _MPI.COMM_WORLD.Get_size()
ROUNDS = int(os.environ.get("IVMPI_SOAK_ROUNDS") or 12)
MAX_SIZE = 8 << 20
# The largest blocking Send that completes without its receiver: the
# eager limit with the default 1 MiB rings, less to a peer that copies
# buffers from its sender's memory (from COPY_MIN bytes they wait for it).
EAGER_MAX = min(layout.MAX_EAGER, COPY_MIN - 1)
DIGEST = 32


def message_size(rng):
    u = rng.random()
    if u < 0.1:
        return int(rng.integers(0, DIGEST))            # too small to carry a digest
    if u < 0.6:
        return int(rng.integers(DIGEST, 2048))
    if u < 0.85:
        return int(rng.integers(2048, 1 << 17))
    if u < 0.97:
        return int(rng.integers(1 << 17, 1 << 21))
    return int(rng.integers(1 << 21, MAX_SIZE + 1))


def make_plan(round_no):
    """[(src, dst, tag, size, mode, seed)] in each sender's send order; the same on every rank."""
    rng = np.random.default_rng(7919 * round_no + SIZE)
    plan = []
    for src in range(SIZE):
        for i in range(int(rng.integers(2, 9))):
            dst = int(rng.choice([r for r in range(SIZE) if r != src]))
            size = message_size(rng)
            mode = str(rng.choice(["Send", "Isend", "Issend"]))
            if mode == "Send" and size > EAGER_MAX:
                mode = "Isend"     # a blocking rendezvous send could wait on a sending peer
            plan.append((src, dst, int(rng.integers(0, 4)), size, mode, int(rng.integers(2**62))))
    return plan


def content(size, seed):
    """The message bytes: random, and when there is room, their digest at the end."""
    body = np.frombuffer(np.random.default_rng(seed).bytes(size), dtype=np.uint8).copy()
    if size >= DIGEST:
        body[-DIGEST:] = np.frombuffer(hashlib.sha256(body[:-DIGEST]).digest(), dtype=np.uint8)
    return body


def check_arrival(buf, count, entry):
    src, dst, tag, size, mode, seed = entry
    assert count == size, f"message {entry}: {count} bytes arrived"
    got = buf[:count]
    if size >= DIGEST:
        assert hashlib.sha256(got[:-DIGEST]).digest() == bytes(got[-DIGEST:]), \
            f"message {entry}: corrupted (digest mismatch)"
    assert hashlib.sha256(got).digest() == hashlib.sha256(content(size, seed)).digest(), \
        f"message {entry}: not the message expected next from ({src}, tag {tag})"


def test_random_traffic_integrity(comm):
    sent = received = sent_bytes = 0
    big = np.empty(MAX_SIZE, dtype=np.uint8)
    for round_no in range(ROUNDS):
        plan = make_plan(round_no)
        expected = defaultdict(deque)              # (src, tag) -> entries for me, in order
        for entry in plan:
            if entry[1] == RANK:
                expected[(entry[0], entry[2])].append(entry)
        todo = sum(len(q) for q in expected.values())
        requests, keep = [], []
        for entry in plan:
            src, dst, tag, size, mode, seed = entry
            if src != RANK:
                continue
            data = content(size, seed)
            if mode == "Send":
                comm.Send(data, dest=dst, tag=tag)
            else:
                requests.append(getattr(comm, mode)(data, dest=dst, tag=tag))
                keep.append(data)
            sent += 1
            sent_bytes += size
        rng = np.random.default_rng(round_no * 100 + RANK)
        status = MPI.Status()
        while todo:
            if rng.random() < 0.5:
                comm.Probe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
                buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
                comm.Recv(buf, source=status.Get_source(), tag=status.Get_tag(), status=status)
            else:
                buf = big
                comm.Irecv(buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG).Wait(status)
            key = (status.Get_source(), status.Get_tag())
            assert expected[key], f"rank {RANK}: unexpected message from {key} (duplicate?)"
            check_arrival(buf, status.Get_count(MPI.BYTE), expected[key].popleft())
            received += 1
            todo -= 1
        MPI.Request.Waitall(requests)
        assert not comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG), "an extra message arrived"
        comm.Barrier()
    totals = comm.allreduce(np.array([sent, received, sent_bytes]))
    assert totals[0] == totals[1] and totals[0] > 0
    if RANK == 0:   # shown with pytest -s: what a soak moved
        print(f"\n{ROUNDS} rounds on {comm.size} ranks: {totals[0]} messages, "
              f"{totals[2] / 2**30:.2f} GiB sent and verified")


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_unexpected_large_messages_stay_with_the_sender(comm):
    """50 x 4 MiB sent before the receiver posts anything: the receiver holds
    only envelopes (rendezvous), so its memory does not grow with 200 MiB."""
    count, size = 50, 4 << 20
    if RANK == 0:
        data = np.arange(size, dtype=np.uint8)      # one buffer, sent 50 times
        requests = [comm.Isend(data, dest=1, tag=t) for t in range(count)]
        comm.Barrier()                              # the receiver has seen all 50
        MPI.Request.Waitall(requests)
    elif RANK == 1:
        buf = np.zeros(size, dtype=np.uint8)       # touched now, not counted as growth
        before = rss_bytes()
        pending = set(range(count))
        while pending:                              # every envelope arrived, none received
            pending = {t for t in pending if not comm.Iprobe(source=0, tag=t)}
        grown = rss_bytes() - before
        comm.Barrier()
        assert grown < 16 << 20, f"receiver grew by {grown >> 20} MiB holding 50 unexpected messages"
        for t in range(count):
            comm.Recv(buf, source=0, tag=t)
            assert buf[size - 1] == (size - 1) % 256 and buf[12345] == 12345 % 256
    else:
        comm.Barrier()
