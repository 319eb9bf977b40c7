"""MPI_THREAD_MULTIPLE: several threads of each rank in one communicator (and
in different communicators of the job) at once.

Each test runs its threads with a deadline: a thread that is still running
when it passes fails the test instead of hanging the job, and a wait that
cannot complete raises after IVMPI_TIMEOUT (set here when the environment
does not).  Payloads carry (sender, thread, sequence number) so that a lost,
duplicated, misdelivered or reordered message is seen.
"""
import threading
import time

import numpy as np
import pytest

from ivmpi import MPI

pytestmark = pytest.mark.usefixtures("engine_timeout")

DEADLINE = 60.0      # seconds for the threads of one test


def run_threads(*targets, deadline=DEADLINE):
    """Run each target in a thread of its own; re-raise the first error."""
    errors = []

    def guard(target):
        try:
            target()
        except BaseException as exc:     # noqa: B036 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    if errors:
        raise errors[0]
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads {stuck} did not finish within {deadline} s"


def neighbours(comm):
    return (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size


def stamp(source, thread, seq, nbytes=24):
    """A payload that names its sender, thread and sequence number."""
    out = np.empty(max(3, nbytes // 8), dtype=np.int64)
    out[:] = seq * 7919 + thread * 131 + source
    out[:3] = (source, thread, seq)
    return out


def test_query_thread_reports_multiple():
    provided = MPI.Query_thread()
    assert provided == MPI.THREAD_MULTIPLE
    assert MPI.Is_thread_main()
    holder = []
    t = threading.Thread(target=lambda: holder.append(MPI.Is_thread_main()))
    t.start()
    t.join(10)
    assert holder == [False]


def test_worker_polls_irecv_while_main_communicates(comm):
    """A worker thread polls irecv().test() on `comm` while the main thread
    sends to every rank's worker and runs point-to-point and collectives on
    another communicator."""
    other = comm.Dup()
    right, left = neighbours(comm)
    count, tag = 200, 7
    got = {r: [] for r in range(comm.size)}

    def worker():
        status = MPI.Status()
        for _ in range(count * comm.size):
            req = comm.irecv(source=MPI.ANY_SOURCE, tag=tag)
            while True:
                done, msg = req.test(status)
                if done:
                    break
                time.sleep(0)
            assert status.Get_source() == msg[0] and status.Get_tag() == tag
            got[msg[0]].append(msg[1])

    def main():
        buf = np.zeros(4, dtype=np.int64)
        for i in range(count):
            for dest in range(comm.size):
                comm.send((comm.rank, i), dest=dest, tag=tag)
            other.Sendrecv(stamp(comm.rank, 0, i)[:4], right, 3, buf, left, 3)
            assert list(buf[:3]) == [left, 0, i]
            if i % 20 == 0:
                total = other.allreduce(i + comm.rank)
                assert total == comm.size * i + comm.size * (comm.size - 1) // 2
                assert other.bcast(i if other.rank == 0 else None) == i
                other.Barrier()

    run_threads(worker, main)
    for source, seqs in got.items():
        assert seqs == list(range(count)), f"from {source}"
    other.Free()


@pytest.mark.parametrize("nbytes", [24, 100_000])
def test_threads_exchange_on_own_tags(comm, nbytes):
    """Each thread runs many exchanges with both neighbours on a tag of its
    own (buffers and objects, fast path and general path, and rendezvous
    messages for the large size); every payload arrives once, in order."""
    right, left = neighbours(comm)
    nthreads, rounds = 4, 300 if nbytes < 1000 else 30

    def exchanges(t):
        recv = np.empty(max(3, nbytes // 8), dtype=np.int64)
        for i in range(rounds):
            mode = i % 3
            if mode == 0:
                comm.Sendrecv(stamp(comm.rank, t, i, nbytes), right, t, recv, left, t)
            elif mode == 1:
                reqs = [comm.Irecv(recv, left, t), comm.Isend(stamp(comm.rank, t, i, nbytes),
                                                              right, t)]
                MPI.Request.Waitall(reqs)
            else:
                obj = comm.sendrecv((comm.rank, t, i), dest=right, sendtag=t, source=left,
                                    recvtag=t)
                assert obj == (left, t, i)
                continue
            assert np.array_equal(recv, stamp(left, t, i, nbytes)), (t, i, recv[:3])

    run_threads(*[lambda t=t: exchanges(t) for t in range(nthreads)])


def test_blocked_receive_satisfied_by_another_thread(comm):
    """Thread A blocks in a receive from this very rank; only thread B can
    send the message, and does so after A is waiting."""
    buf = np.zeros(8, dtype=np.int64)
    data = np.arange(8, dtype=np.int64) + comm.rank
    waiting = threading.Event()

    def a():
        waiting.set()
        comm.Recv(buf, source=comm.rank, tag=1)

    def b():
        waiting.wait(10)
        time.sleep(0.2)
        comm.Send(data, dest=comm.rank, tag=1)

    run_threads(a, b, deadline=30)
    assert np.array_equal(buf, data)


@pytest.mark.parametrize("nbytes", [64, 1 << 20])
def test_blocked_receive_needs_another_threads_send(comm, nbytes):
    """Every rank's thread A waits for its left neighbour, whose message
    leaves only when that rank's thread B sends it, later (eager and
    rendezvous sizes: the rendezvous send waits for a clear-to-send that
    the receiving rank's blocked thread must answer)."""
    right, left = neighbours(comm)
    buf = np.zeros(nbytes // 8, dtype=np.int64)
    data = np.full(nbytes // 8, comm.rank, dtype=np.int64)

    def a():
        comm.Recv(buf, source=left, tag=2)

    def b():
        time.sleep(0.2)
        comm.Send(data, dest=right, tag=2)

    run_threads(a, b, deadline=30)
    assert (buf == left).all()


def test_iprobe_and_receive_from_several_threads(comm):
    """Threads probe (Iprobe, Improbe) for messages on their own tags and
    receive them, while the messages arrive in between."""
    right, left = neighbours(comm)
    nthreads, count = 4, 100
    status_size = {}

    def sender():
        for i in range(count):
            for t in range(nthreads):
                comm.Send(stamp(comm.rank, t, i, 8 * (3 + t)), dest=right, tag=100 + t)

    def receiver(t):
        status = MPI.Status()
        for i in range(count):
            if t % 2:
                message = None
                while message is None:
                    message = comm.Improbe(source=left, tag=100 + t, status=status)
                buf = np.empty(status.Get_count(MPI.INT64_T), dtype=np.int64)
                message.Recv(buf)
            else:
                while not comm.Iprobe(source=left, tag=100 + t, status=status):
                    pass
                buf = np.empty(status.Get_count(MPI.INT64_T), dtype=np.int64)
                comm.Recv(buf, source=left, tag=100 + t)
            status_size[t] = len(buf)
            assert np.array_equal(buf, stamp(left, t, i, 8 * (3 + t))), (t, i, buf[:3])

    run_threads(sender, *[lambda t=t: receiver(t) for t in range(nthreads)])
    assert status_size == {t: 3 + t for t in range(nthreads)}


def test_stress_mixed_threads(comm):
    """Several threads per rank, random message sizes (eager and rendezvous)
    and calls, to the neighbours, to this rank and from any source, in two
    communicators at once; the whole must finish within the deadline."""
    other = comm.Dup()
    right, left = neighbours(comm)
    nthreads, rounds = 3, 150

    def sizes(source, t):
        # Sender and receiver draw the same sizes.
        rng = np.random.default_rng(1000 * source + t)
        return rng.choice([0, 8, 64, 4096, 70_000], size=rounds, p=[.1, .4, .3, .15, .05])

    def ring(t, c):
        send_sizes, recv_sizes = sizes(comm.rank, t), sizes(left, t)
        pending = []
        for i in range(rounds):
            recv = np.empty(max(3, recv_sizes[i] // 8), dtype=np.int64)
            rreq = c.Irecv(recv, left, 200 + t)
            sreq = c.Isend(stamp(comm.rank, t, i, send_sizes[i]), right, 200 + t)
            if i % 2:
                while not rreq.Test():
                    time.sleep(0)
            else:
                rreq.Wait()
            pending.append(sreq)
            assert np.array_equal(recv, stamp(left, t, i, recv_sizes[i])), (t, i)
        MPI.Request.Waitall(pending)

    def to_self():
        buf = np.empty(3, dtype=np.int64)
        for i in range(rounds):
            req = comm.Isend(stamp(comm.rank, 9, i), comm.rank, 299)
            comm.Recv(buf, source=comm.rank, tag=299)
            req.Wait()
            assert list(buf) == [comm.rank, 9, i]

    def any_source():
        seen = {r: [] for r in range(comm.size)}
        status = MPI.Status()
        for _ in range(rounds * comm.size):
            msg = other.recv(source=MPI.ANY_SOURCE, tag=300, status=status)
            assert msg[0] == status.Get_source()
            seen[msg[0]].append(msg[1])
        for r, seq in seen.items():
            assert seq == list(range(rounds)), r

    def feed_any_source():
        for i in range(rounds):
            for dest in range(comm.size):
                other.send((comm.rank, i), dest=dest, tag=300)

    threads = [lambda t=t: ring(t, comm if t % 2 else other) for t in range(nthreads)]
    start = time.monotonic()
    run_threads(*threads, to_self, any_source, feed_any_source)
    assert time.monotonic() - start < DEADLINE
    other.Free()
