"""ANY_SOURCE receives and probes with several senders at once, under a real
launcher (the receiver finds the rings holding frames through its head
array, docs/layout.md "Head arrays").

    mpirun --oversubscribe -n N python -m pytest --with-mpi tests/mpi/test_any_source.py

Every rank but 0 sends to rank 0, which takes everything with ANY_SOURCE
through one path or another: each message must arrive exactly once, in its
sender's order, with the right status.
"""
import numpy as np
import pytest

from ivmpi import MPI

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.usefixtures("engine_timeout")]

COUNT = 300
LARGE = 200_000          # above the eager limit: a rendezvous


def _payload(sender, seq, n):
    return np.full(n, (sender * 31 + seq) % 251, dtype="u1")


def _check_order(received, senders, count):
    for s in senders:
        assert received[s] == list(range(count)), f"messages of rank {s}: {received[s][:20]}..."


def test_buffer_receives_from_every_sender(comm):
    senders = range(1, comm.size)
    if comm.rank != 0:
        for seq in range(COUNT):
            n = 8 + seq % 97
            data = _payload(comm.rank, seq, n)
            data[:2] = (seq % 256, seq // 256)
            comm.Send(data, 0, tag=seq % 5)
        return
    received = {s: [] for s in senders}
    buf = np.zeros(128, dtype="u1")
    status = MPI.Status()
    for _ in range(COUNT * len(senders)):
        comm.Recv(buf, MPI.ANY_SOURCE, MPI.ANY_TAG, status)
        s, n = status.Get_source(), status.Get_count(MPI.BYTE)
        seq = int(buf[0]) + 256 * int(buf[1])
        assert status.Get_tag() == seq % 5 and n == 8 + seq % 97
        want = _payload(s, seq, n)
        assert np.array_equal(buf[2:n], want[2:])
        received[s].append(seq)
    _check_order(received, senders, COUNT)
    assert not comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)


def test_every_kind_of_message_through_any_source_probes(comm):
    """Eager, synchronous, pickled and rendezvous messages from all senders;
    the receiver probes with ANY_SOURCE and receives what the probe names."""
    senders = range(1, comm.size)
    rounds = 40
    if comm.rank != 0:
        reqs = []
        for seq in range(rounds):
            kind = seq % 4
            if kind == 0:
                comm.Send(np.array([seq], dtype="i8"), 0, tag=10)
            elif kind == 1:
                comm.Ssend(np.array([seq], dtype="i8"), 0, tag=11)
            elif kind == 2:
                comm.send({"seq": seq, "from": comm.rank}, 0, tag=12)
            else:
                big = _payload(comm.rank, seq, LARGE)
                big[:8] = np.frombuffer(np.int64(seq).tobytes(), dtype="u1")
                reqs.append(comm.Isend(big, 0, tag=13))
        MPI.Request.Waitall(reqs)
        return
    received = {s: [] for s in senders}
    status = MPI.Status()
    small = np.zeros(1, dtype="i8")
    big = np.zeros(LARGE, dtype="u1")
    for i in range(rounds * len(senders)):
        if i % 3 == 0:
            comm.Probe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
        else:
            while not comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, status):
                pass
        s, tag = status.Get_source(), status.Get_tag()
        if tag in (10, 11):
            comm.Recv(small, s, tag)
            seq = int(small[0])
        elif tag == 12:
            obj = comm.recv(source=s, tag=tag)
            assert obj["from"] == s
            seq = obj["seq"]
        else:
            assert tag == 13 and status.Get_count(MPI.BYTE) == LARGE
            msg = comm.mprobe(s, tag) if i % 2 else comm.Mprobe(s, tag)
            msg.Recv(big)
            seq = int(np.frombuffer(big[:8].tobytes(), dtype="i8")[0])
            assert np.array_equal(big[8:], _payload(s, seq, LARGE)[8:])
        assert seq % 4 == tag - 10
        received[s].append(seq)
    _check_order(received, senders, rounds)


def test_posted_any_source_receives_and_matched_probes(comm):
    """Irecv(ANY_SOURCE) posted ahead, and Mprobe(ANY_SOURCE): every message
    lands once, whichever path takes it."""
    senders = range(1, comm.size)
    per = 60
    if comm.rank != 0:
        for seq in range(per):
            comm.Send(np.array([comm.rank, seq], dtype="i8"), 0, tag=seq % 2)
        return
    received = {s: [] for s in senders}
    total = per * len(senders)
    bufs = [np.zeros(2, dtype="i8") for _ in range(total // 2)]
    reqs = [comm.Irecv(b, MPI.ANY_SOURCE, 0 if k % 2 == 0 else MPI.ANY_TAG)
            for k, b in enumerate(bufs)]
    statuses = [MPI.Status() for _ in reqs]
    MPI.Request.Waitall(reqs, statuses)
    for b, st in zip(bufs, statuses):
        assert st.Get_source() == b[0]
        received[int(b[0])].append(int(b[1]))
    for _ in range(total - len(bufs)):
        msg = comm.Mprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
        b = np.zeros(2, dtype="i8")
        msg.Recv(b)
        received[int(b[0])].append(int(b[1]))
    for s in senders:
        # Receives with tag 0 and with any tag interleave: per tag, in order.
        got = received[s]
        assert sorted(got) == list(range(per))
        for tag in (0, 1):
            seqs = [q for q in got if q % 2 == tag]
            assert seqs == sorted(seqs)
