"""Nonblocking and persistent collectives in standalone mode (IVMPI_RANK /
IVMPI_SIZE, no launcher: how ranks run inside VMs), where no MPI library
spans the job and only the region can carry them; and the errors that end
a wait on one: IVMPI_TIMEOUT, and a peer that dies."""
import json
import os
import signal
import subprocess
import sys
import textwrap

from ivmpi.region import Region

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    import numpy as np
    from ivmpi import MPI
    import ivmpi.stats

    scenario = sys.argv[1]
    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    report = {"rank": rank}

    def blocked(call):
        try:
            call()
            report["error"] = None
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"

    if scenario == "work":
        dup = comm.Dup()
        before = sum(ivmpi.stats.total(dup).values())
        total = np.zeros(8)
        a = np.arange(8.0) * (rank + 1)
        reqs = [dup.Iallreduce(a, total),
                dup.Ibcast(data := (np.arange(70000, dtype="i4") if rank == size - 1
                                    else np.zeros(70000, "i4")), root=size - 1),
                dup.Ibarrier()]
        MPI.Request.Waitall(reqs[::-1])
        expected = np.zeros(8)
        dup.Allreduce(a, expected)
        report["allreduce"] = bool((total == expected).all())
        report["bcast"] = bool((data == np.arange(70000)).all())
        persistent = dup.Allreduce_init(a, total, MPI.MAX)
        rounds = []
        for k in range(3):
            a[:] = k + rank
            persistent.Start()
            persistent.Wait()
            rounds.append(total.tolist())
        report["rounds"] = rounds
        # All-to-all-w: a column of the sender's matrix to each rank, received
        # as two contiguous doubles; the persistent form with new data.
        col = MPI.DOUBLE.Create_vector(2, 1, 3).Commit()
        send = np.arange(12.0) + 100 * rank
        recv = np.full(2 * size, -1.0)
        args = ([send, ([1] * size, [48 * p for p in range(size)]), [col] * size],
                [recv, ([2] * size, [16 * p for p in range(size)]), [MPI.DOUBLE] * size])
        dup.Ialltoallw(*args).Wait()
        report["alltoallw"] = recv.tolist()
        persistent = dup.Alltoallw_init(*args)
        send += 1000
        persistent.Start()
        persistent.Wait()
        report["alltoallw_init"] = recv.tolist()
        col.Free()
        report["moved"] = sum(ivmpi.stats.total(dup).values()) - before
        dup.Free()
    elif scenario == "timeout":
        # Rank 1 joins no collective: rank 0's wait ends at IVMPI_TIMEOUT.
        if rank == 0:
            blocked(lambda: comm.Iallreduce(np.ones(4), np.zeros(4)).Wait())
        if rank == 0:
            comm.send("over", dest=1)
        else:       # polls, so that its own waits are not timed out meanwhile
            while not comm.Iprobe(source=0):
                time.sleep(0.05)
            comm.recv(source=0)
    elif scenario == "death":
        if rank == 1:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        blocked(lambda: comm.Ibarrier().Wait())
    print(json.dumps(report))
""")


def run_job(tmp_path, scenario, **env_extra):
    path = str(tmp_path / "region")
    Region.create(path, size=16 << 20).close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for rank in range(2):
        env = dict(os.environ, IVMPI_RANK=str(rank), IVMPI_SIZE="2", IVMPI_REGION=path,
                   IVMPI_TIMEOUT="60", PYTHONPATH=ROOT)
        env.update(env_extra)
        env.pop("IVMPI_MPI4PY", None)
        procs.append(subprocess.Popen([sys.executable, str(script), scenario], env=env,
                                      text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        lines = out.strip().splitlines()
        results.append((proc.returncode, json.loads(lines[-1]) if lines else None, err))
    return results


def test_nonblocking_and_persistent_collectives_without_a_launcher(tmp_path):
    results = run_job(tmp_path, "work")
    for code, report, err in results:
        assert code == 0, err
        assert report["allreduce"] and report["bcast"]
        assert report["rounds"] == [[k + 1.0] * 8 for k in range(3)]
        me = report["rank"]
        columns = [[100.0 * p + 6 * me, 100.0 * p + 6 * me + 3] for p in range(2)]
        assert report["alltoallw"] == columns[0] + columns[1]
        assert report["alltoallw_init"] == [x + 1000 for x in columns[0] + columns[1]]
        assert report["moved"] > 70000 * 4     # written or read through the rings


def test_timeout_ends_the_wait(tmp_path):
    (code0, report0, err0), (code1, _, err1) = run_job(tmp_path, "timeout", IVMPI_TIMEOUT="2")
    assert code0 == 0 and code1 == 0, err0 + err1
    error = report0["error"]
    assert error.startswith("IvmpiTimeoutError: Iallreduce on rank 0 did not complete "
                            "within IVMPI_TIMEOUT=2 s"), error
    assert "peer: rank 1" in error


def test_dead_peer_ends_the_wait(tmp_path):
    (code0, report0, err0), (code1, _, _) = run_job(tmp_path, "death",
                                                    IVMPI_PEER_TIMEOUT="1")
    assert code1 == -signal.SIGKILL
    assert code0 == 0, err0
    error = report0["error"]
    assert error.startswith("PeerError") and "Ibarrier" in error, error
