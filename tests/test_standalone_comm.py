"""Communicators in standalone mode (IVMPI_RANK/IVMPI_SIZE, no launcher):
still mpi4py communicators, with a handle good for local uses only, and a
clear error for the calls ivmpi leaves to an MPI library that does not span
the job."""
import json
import os
import subprocess
import sys
import textwrap

from ivmpi.region import Region

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json
    import mpi4py.MPI as real
    from ivmpi import MPI
    comm = MPI.COMM_WORLD
    dup = comm.Dup()
    report = {"is_mpi4py": isinstance(dup, real.Intracomm), "rank": dup.rank, "size": dup.size,
              "sum": dup.allreduce(dup.rank + 1),
              "group_size": dup.Get_group().Get_size(),
              "pack_size": real.DOUBLE.Pack_size(3, dup)}
    # A one-rank communicator needs no other process: its file opens.
    fh = MPI.File.Open(MPI.COMM_SELF, "/dev/null", MPI.MODE_RDONLY)
    report["self_file"] = isinstance(fh, real.File)
    fh.Close()
    for call in (lambda: dup.Create_intercomm(0, dup, 0),
                 lambda: dup.Spawn("python"),
                 lambda: MPI.File.Open(dup, "/dev/null", MPI.MODE_RDONLY)):
        try:
            call()
            report.setdefault("refused", []).append(None)
        except real.Exception as exc:
            report.setdefault("refused", []).append(str(exc))
    dup.Free()
    print(json.dumps(report))
""")


def test_standalone_communicators_refuse_what_needs_a_launcher(tmp_path):
    path = str(tmp_path / "region")
    Region.create(path, size=8 << 20).close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for rank in range(2):
        env = dict(os.environ, IVMPI_RANK=str(rank), IVMPI_SIZE="2", IVMPI_REGION=path,
                   IVMPI_TIMEOUT="60", PYTHONPATH=ROOT)
        env.pop("IVMPI_MPI4PY", None)
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for rank, report in enumerate(reports):
        assert report["is_mpi4py"]
        assert (report["rank"], report["size"], report["sum"]) == (rank, 2, 3)
        assert report["group_size"] == 2
        assert report["pack_size"] == 24
        assert report["self_file"]
        assert len(report["refused"]) == 3
        for message in report["refused"]:
            assert message is not None and "standalone mode" in message
