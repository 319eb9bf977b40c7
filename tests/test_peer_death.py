"""A rank that dies: the survivors get a PeerError naming it, in time.

Each test starts a 3-rank job in standalone mode (IVMPI_RANK/IVMPI_SIZE and
a region file, plain subprocesses: how ranks run inside VMs, and no MPI
launcher that would tear the job down when one rank dies).  Rank 2 kills
itself with SIGKILL at a chosen moment; ranks 0 and 1 report what they saw
as JSON on stdout, then prove that traffic between them still works.
The last tests run the same job under mpirun, which needs
`--enable-recovery` (otherwise Open MPI kills the whole job with the rank).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ivmpi.region import Region

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_TIMEOUT = 2.0
# A blocked rank notices a silent peer after IVMPI_PEER_TIMEOUT plus one
# check interval; the margin covers a loaded 2-core machine.
DEADLINE = PEER_TIMEOUT + 4.0

WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    import numpy as np
    from ivmpi import MPI
    from ivmpi.errors import PeerError

    scenario = sys.argv[1]
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    report = {"rank": rank}

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def blocked(call):
        start = time.monotonic()
        try:
            call()
            report["error"] = None
        except Exception as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
            report["peer_error"] = isinstance(exc, PeerError)
        report["seconds"] = time.monotonic() - start

    BIG = 32 << 20
    if scenario == "idle":
        if rank == 2:
            die()
        if rank == 0:
            blocked(lambda: comm.Recv(np.empty(4, "u1"), source=2, tag=1))
        else:
            blocked(lambda: comm.recv(source=MPI.ANY_SOURCE, tag=9))
    elif scenario == "rendezvous":
        if rank == 2:
            data = np.ones(BIG, "u1")
            req = comm.Isend(data, dest=0, tag=3)
            engine = comm._engine
            # Die once several MiB have crossed the ring: mid-transfer for sure.
            while engine.tx[0].head_index < (4 << 20):
                req.Test()
            die()
        if rank == 0:
            buf = np.zeros(BIG, "u1")
            blocked(lambda: comm.Recv(buf, source=2, tag=3))
            report["received_some"] = bool(buf[: 1 << 20].all())
        else:
            report["error"] = None
    elif scenario == "collective":
        for i in range(3):
            comm.allreduce(rank)
        if rank == 2:
            die()
        blocked(lambda: [comm.allreduce(rank) for _ in range(3)])

    # The survivors still talk to each other, on a fresh communicator too.
    other = 1 - rank
    payload = np.arange(100000, dtype="i8") * (rank + 1)
    got = np.empty_like(payload)
    comm.Sendrecv(payload, dest=other, sendtag=7, recvbuf=got, source=other, recvtag=7)
    small = comm.sendrecv({"from": rank}, dest=other, sendtag=8, source=other, recvtag=8)
    report["survivors_ok"] = bool((got == np.arange(100000) * (other + 1)).all()
                                  and small == {"from": other})
    print(json.dumps(report), flush=True)
""")


def run_job(tmp_path, scenario, timeout=60):
    path = str(tmp_path / "region")
    Region.create(path, 16 << 20).close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, IVMPI_SIZE="3", IVMPI_REGION=path, IVMPI_PEER_TIMEOUT=str(PEER_TIMEOUT),
               IVMPI_HEARTBEAT="0.1", IVMPI_TIMEOUT=str(timeout), IVMPI_START_TIMEOUT="60",
               # Three ranks on two cores: waits yield, and a stream returns to its
               # caller whenever the ring is full, so rank 2 dies mid-transfer.
               IVMPI_OVERSUBSCRIBED="1",
               IVMPI_SYSFS_ROOT=str(tmp_path / "sys"),
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    procs = [subprocess.Popen([sys.executable, str(script), scenario],
                              env=dict(env, IVMPI_RANK=str(rank)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for rank in range(3)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert results[2][0] == -signal.SIGKILL, results[2]
    reports = []
    for rank in (0, 1):
        code, out, err = results[rank]
        assert code == 0, f"rank {rank} exited with {code}:\n{err}"
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def assert_reports_dead_rank2(report):
    assert report["peer_error"], report
    assert "rank 2" in report["error"], report
    assert report["seconds"] < DEADLINE, report


def test_peer_dies_while_idle(tmp_path):
    r0, r1 = run_job(tmp_path, "idle")
    for report in (r0, r1):
        assert_reports_dead_rank2(report)
        assert report["survivors_ok"]
    assert r0["error"].startswith("PeerError: Recv from rank 2: rank 2 has shown no heartbeat for")
    assert r0["error"].endswith(" s (IVMPI_PEER_TIMEOUT=2): it died, hangs, or its machine is paused")
    assert r1["error"].startswith("PeerError: irecv from any source: rank 2 has shown no heartbeat")


def test_peer_dies_during_rendezvous(tmp_path):
    r0, r1 = run_job(tmp_path, "rendezvous")
    assert_reports_dead_rank2(r0)
    assert r0["received_some"], r0
    assert r0["survivors_ok"] and r1["survivors_ok"]


COLLECTIVE_TIMEOUT = 6


def test_peer_dies_during_a_collective(tmp_path):
    """Every survivor of a collective names the dead rank within
    IVMPI_PEER_TIMEOUT, including one that was waiting on the other survivor:
    a collective's waits watch all its members."""
    r0, r1 = run_job(tmp_path, "collective", timeout=COLLECTIVE_TIMEOUT)
    for report in (r0, r1):
        assert_reports_dead_rank2(report)
    assert r0["survivors_ok"] and r1["survivors_ok"]


FINALIZE_TIMEOUT = 3


def run_under_mpirun(tmp_path, scenario):
    """The same job under Open MPI's launcher.  `--enable-recovery` keeps
    mpirun from tearing the whole job down when one rank is killed.  Open
    MPI's MPI_Finalize then waits for the dead rank in about one run of
    three; the survivors' exit timer (IVMPI_FINALIZE_TIMEOUT) must end the
    job anyway, well inside the subprocess timeout."""
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun):
        pytest.skip("no mpirun next to the interpreter")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items()
           if k not in ("IVMPI_RANK", "IVMPI_SIZE", "IVMPI_REGION")}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               IVMPI_PEER_TIMEOUT=str(PEER_TIMEOUT), IVMPI_HEARTBEAT="0.1", IVMPI_TIMEOUT="60",
               IVMPI_FINALIZE_TIMEOUT=str(FINALIZE_TIMEOUT),
               # As in run_job: the stream must return to the dying rank's
               # loop when the ring is full, whatever the core count.
               IVMPI_OVERSUBSCRIBED="1",
               # ... and it must stream at all: no copies from its memory.
               IVMPI_SINGLE_COPY="0",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    result = subprocess.run(
        [mpirun, "--oversubscribe", "--enable-recovery", "-n", "3",
         "-x", "IVMPI_PEER_TIMEOUT", "-x", "IVMPI_HEARTBEAT", "-x", "IVMPI_TIMEOUT",
         "-x", "IVMPI_FINALIZE_TIMEOUT", "-x", "PYTHONPATH", "-x", "IVMPI_OVERSUBSCRIBED",
         "-x", "IVMPI_SINGLE_COPY",
         sys.executable, str(script), scenario],
        env=env, capture_output=True, text=True, timeout=90)
    reports = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            reports[report["rank"]] = report
    assert sorted(reports) == [0, 1], result.stdout + result.stderr
    return reports[0], reports[1]


@pytest.mark.parametrize("scenario", ["idle", "rendezvous"])
def test_peer_dies_under_mpirun(tmp_path, scenario):
    r0, r1 = run_under_mpirun(tmp_path, scenario)
    assert_reports_dead_rank2(r0)
    assert r0["survivors_ok"] and r1["survivors_ok"]
