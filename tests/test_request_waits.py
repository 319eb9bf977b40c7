"""Waits on many requests: they complete, or IVMPI_TIMEOUT ends them in time.

Each test starts a small standalone job (IVMPI_RANK/IVMPI_SIZE and a region
file, plain subprocesses) with a short IVMPI_TIMEOUT, so a wait that hangs
fails the test within seconds instead of hanging it.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from ivmpi.region import Region

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 2.0
# The wait must end soon after IVMPI_TIMEOUT; the margin covers a loaded machine.
DEADLINE = TIMEOUT + 6.0

WORKER = textwrap.dedent("""
    import json, sys, time
    from ivmpi import MPI
    from ivmpi.errors import IvmpiTimeoutError

    scenario = sys.argv[1]
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    report = {"rank": rank}

    if scenario == "self":
        # Object receives from ourselves, completed one group at a time by
        # synchronous sends to ourselves.
        c = comm.Dup()
        reqs = [c.irecv(source=rank, tag=i) for i in range(6)]
        rounds = []
        for group in ([5], [3, 1, 2], [0, 4]):
            for i in group:
                c.ssend("abc", dest=rank, tag=i)
            statuses = []
            idxs, objs = MPI.Request.waitsome(reqs, statuses)
            rounds.append([sorted(idxs), objs, sorted(s.tag for s in statuses)])
        report["rounds"] = rounds
        report["last"] = list(MPI.Request.waitsome(reqs))
        report["all_null"] = not any(reqs)
        # The same with Waitany on requests of which one is already done.
        reqs = [c.irecv(source=rank, tag=i) for i in range(3)]
        c.send("x", dest=rank, tag=2)
        while not reqs[2].Get_status():
            pass
        report["waitany"] = list(MPI.Request.waitany(reqs))
        for i in (0, 1):
            c.send("y", dest=rank, tag=i)
        MPI.Request.waitall(reqs)
        c.Free()
    elif rank == 1:
        # Keep rank 0 busy with traffic it never asked for, until it is done.
        deadline = time.monotonic() + 40
        while not comm.iprobe(source=0, tag=2) and time.monotonic() < deadline:
            comm.send(b"x", dest=0, tag=1)
            time.sleep(0.01)
        comm.recv(source=0, tag=2)
    else:
        start = time.monotonic()
        try:
            if scenario == "waitsome":
                MPI.Request.waitsome([comm.irecv(source=1, tag=5 + i) for i in range(3)])
            elif scenario == "waitany":
                MPI.Request.Waitany([comm.Irecv(bytearray(8), source=1, tag=5)])
            elif scenario == "waitall":
                MPI.Request.Waitall([comm.Irecv(bytearray(8), source=1, tag=5),
                                     comm.Irecv(bytearray(8), source=1, tag=6)])
            elif scenario == "probe":
                comm.probe(source=1, tag=5)
            elif scenario == "mprobe":
                MPI.Message.probe(comm, source=1, tag=5)
            report["error"] = None
        except IvmpiTimeoutError as exc:
            report["error"] = str(exc)
        report["seconds"] = time.monotonic() - start
        comm.send(None, dest=1, tag=2)
    print(json.dumps(report), flush=True)
""")


def run_job(tmp_path, scenario, size):
    path = str(tmp_path / "region")
    Region.create(path, 16 << 20).close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, IVMPI_SIZE=str(size), IVMPI_REGION=path, IVMPI_TIMEOUT=str(TIMEOUT),
               IVMPI_START_TIMEOUT="60", IVMPI_SYSFS_ROOT=str(tmp_path / "sys"),
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    procs = [subprocess.Popen([sys.executable, str(script), scenario],
                              env=dict(env, IVMPI_RANK=str(rank)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for rank in range(size)]
    reports = []
    try:
        for rank, proc in enumerate(procs):
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{err}"
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return reports


def test_waitsome_on_receives_from_self(tmp_path):
    """A request already complete when Waitsome/Waitany starts is reported
    (they used to wait only on the others, for ever)."""
    (report,) = run_job(tmp_path, "self", 1)
    assert report["rounds"] == [[[5], ["abc"], [5]],
                                [[1, 2, 3], ["abc"] * 3, [1, 2, 3]],
                                [[0, 4], ["abc"] * 2, [0, 4]]]
    assert report["last"] == [None, None]
    assert report["all_null"]
    assert report["waitany"] == [2, "x"]


@pytest.mark.parametrize("scenario, what", [
    ("waitsome", "Waitsome"), ("waitany", "Waitany"), ("waitall", "Irecv from rank 1"),
    ("probe", "Probe from rank 1"), ("mprobe", "Mprobe from rank 1")])
def test_timeout_fires_while_other_traffic_arrives(tmp_path, scenario, what):
    """Rank 0 waits for a message rank 1 never sends, while rank 1 keeps
    sending it others: IVMPI_TIMEOUT still ends the wait, naming it and the peer."""
    report, _ = run_job(tmp_path, scenario, 2)
    assert report["error"] is not None, report
    assert what in report["error"], report
    assert "IVMPI_TIMEOUT" in report["error"] and "rank 1" in report["error"], report
    assert TIMEOUT <= report["seconds"] < DEADLINE, report
