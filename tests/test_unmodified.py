"""An unmodified mpi4py program (`from mpi4py import MPI`) runs over ivmpi.

The ways in (docs/api.md, "Running an unmodified mpi4py program"):
`python -m ivmpi prog.py`, `-m module`, `-c code`, and IVMPI_MPI4PY=1 through
the ivmpi-mpi4py.pth start-up hook.  The programs know nothing of ivmpi, so
a sitecustomize module put on PYTHONPATH reports, at each rank's exit, what
mpi4py.MPI was and the region's ring counters (ivmpi.stats.traffic): proof
that the messages went through the shared region.
"""
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from ivmpi.benchcompare import find_mpirun

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "unmodified.py"
PINGPONG_BYTES = 100 * 1024 * 8     # what examples/unmodified.py sends each way with Send

REPORT_HOOK = """
import atexit, json, os, sys

def _report():
    mpi = sys.modules.get("mpi4py.MPI")
    world = sys.modules.get("ivmpi.world")
    report = {"module": getattr(mpi, "__name__", None), "comm_world": None, "traffic": {}}
    started = world is not None and world._engine is not None
    if mpi is not None and (started or mpi.__name__ == "mpi4py.MPI"):
        kind = type(mpi.COMM_WORLD)
        report["comm_world"] = f"{kind.__module__}.{kind.__qualname__}"
    if started:
        import ivmpi.stats
        report["traffic"] = ivmpi.stats.traffic()
        report["copied"] = ivmpi.stats.single_copies()
    rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
    with open(os.path.join(os.environ["UNMODIFIED_REPORTS"], f"rank{rank}.json"), "w") as f:
        json.dump(report, f)

atexit.register(_report)
"""


MPIRUN = find_mpirun()
needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="no mpirun")


def _env(tmp_path, **extra):
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(REPORT_HOOK)
    reports = tmp_path / "reports"
    reports.mkdir(exist_ok=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               IVMPI_TIMEOUT=os.environ.get("IVMPI_TIMEOUT", "60"), UNMODIFIED_REPORTS=str(reports),
               PYTHONPATH=os.pathsep.join(filter(None, [str(hook), str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("IVMPI_MPI4PY", None)
    env.update(extra)
    return env


def mpirun(tmp_path, args, nranks=2, cwd=None, timeout=120, check=True, **env):
    proc = subprocess.run([MPIRUN, "--oversubscribe", "-n", str(nranks), sys.executable, *args],
                          env=_env(tmp_path, **env), cwd=cwd or tmp_path, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def reports(tmp_path, nranks=2):
    found = {}
    for rank in range(nranks):
        path = tmp_path / "reports" / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no report"
        found[rank] = json.loads(path.read_text())
    return found


def assert_through_region(tmp_path, out):
    """Both ranks ran ivmpi's COMM_WORLD, and the rings between them carried
    at least the ping-pong's bytes each way."""
    assert "verified" in out and "COMM_WORLD is ivmpi." in out, out
    seen = reports(tmp_path)
    for rank, report in seen.items():
        assert report["module"] == "ivmpi.MPI", report
        assert report["comm_world"].startswith("ivmpi."), report
        peer = report["traffic"][str(1 - rank)]
        assert peer["written"] >= PINGPONG_BYTES and peer["read"] >= PINGPONG_BYTES, report
    # What one side wrote, the other read: the rings are drained at exit.
    assert seen[0]["traffic"]["1"]["written"] == seen[1]["traffic"]["0"]["read"]
    assert seen[1]["traffic"]["0"]["written"] == seen[0]["traffic"]["1"]["read"]


@needs_mpirun
def test_python_m_ivmpi_script(tmp_path):
    out = mpirun(tmp_path, ["-m", "ivmpi", str(EXAMPLE)]).stdout
    assert_through_region(tmp_path, out)


@needs_mpirun
def test_python_m_ivmpi_module(tmp_path):
    out = mpirun(tmp_path, ["-m", "ivmpi", "-m", "unmodified"], cwd=EXAMPLE.parent).stdout
    assert_through_region(tmp_path, out)


@needs_mpirun
def test_python_m_ivmpi_code(tmp_path):
    out = mpirun(tmp_path, ["-m", "ivmpi", "-c", EXAMPLE.read_text()]).stdout
    assert_through_region(tmp_path, out)


def _installed_hook():
    return Path(sysconfig.get_paths()["purelib"]) / "ivmpi-mpi4py.pth"


@needs_mpirun
def test_environment_variable(tmp_path):
    assert _installed_hook().exists(), \
        f"{_installed_hook()} is missing: reinstall ivmpi (scripts/bootstrap, or pip install -e .)"
    out = mpirun(tmp_path, [str(EXAMPLE)], IVMPI_MPI4PY="1").stdout
    assert_through_region(tmp_path, out)


@needs_mpirun
def test_plain_mpi4py_is_untouched(tmp_path):
    """The control: without either, the program runs on mpi4py and no ring moves."""
    out = mpirun(tmp_path, [str(EXAMPLE)], IVMPI_MPI4PY="0").stdout
    assert "COMM_WORLD is mpi4py.MPI.Intracomm" in out, out
    for report in reports(tmp_path).values():
        assert report == {"module": "mpi4py.MPI", "comm_world": "mpi4py.MPI.Intracomm",
                          "traffic": {}}


def test_hook_costs_nothing_when_unset():
    code = "import sys; print('ivmpi' in sys.modules, 'mpi4py' in sys.modules)"
    env = dict(os.environ)
    env.pop("IVMPI_MPI4PY", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split() == ["False", "False"]


PICKLE_PROGRAM = """
import pickle
from mpi4py import MPI

MAGIC = b"counted:"
calls = {"dumps": 0, "loads": 0, "protocols": set()}

def dumps(obj, protocol=None):
    calls["dumps"] += 1
    calls["protocols"].add(protocol)
    return MAGIC + pickle.dumps(obj, protocol)

def loads(data):
    # The default unpickler cannot read this format: both ends must use ours.
    calls["loads"] += 1
    data = bytes(data)
    assert data.startswith(MAGIC), data[:16]
    return pickle.loads(data[len(MAGIC):])

MPI.pickle.__init__(dumps, loads, 2)
comm = MPI.COMM_WORLD
rank = comm.Get_rank()

def used(name, sending, action):
    before = calls["dumps" if sending else "loads"]
    result = action()
    assert calls["dumps" if sending else "loads"] > before, f"{name} did not use MPI.pickle"
    return result

small, large = {"rank": 0, "x": list(range(10))}, {"blob": b"x" * 300000}
if rank == 0:
    used("send", True, lambda: comm.send(small, dest=1, tag=1))
    used("send (large)", True, lambda: comm.send(large, dest=1, tag=2))
    used("isend", True, lambda: comm.isend(small, dest=1, tag=3).wait())
elif rank == 1:
    assert used("recv", False, lambda: comm.recv(source=0, tag=1)) == small
    assert used("recv (large)", False, lambda: comm.recv(source=0, tag=2)) == large
    assert used("irecv", False, lambda: comm.irecv(source=0, tag=3).wait()) == small
got = used("bcast", rank == 0, lambda: comm.bcast(small if rank == 0 else None, root=0))
assert got == small
# Rank 1 sent no object: nothing else (ivmpi's start-up included) used MPI.pickle.
assert rank != 1 or calls["dumps"] == 0, calls
# Every pickle was made with the protocol asked for (rank 1 may have made none).
assert calls["protocols"] == {2} if rank == 0 else calls["protocols"] <= {2}, calls["protocols"]
print(f"pickle: rank {rank} honoured MPI.pickle, protocol 2, {calls['dumps']} dumps, "
      f"{calls['loads']} loads", flush=True)
"""


@needs_mpirun
@pytest.mark.parametrize("how", ["ivmpi", "mpi4py"])
def test_custom_pickle_is_honoured(tmp_path, how):
    program = tmp_path / "custom_pickle.py"
    program.write_text(PICKLE_PROGRAM)
    args = ["-m", "ivmpi", str(program)] if how == "ivmpi" else [str(program)]
    out = mpirun(tmp_path, args).stdout
    assert out.count("honoured MPI.pickle, protocol 2") == 2, out
    expected = "ivmpi.MPI" if how == "ivmpi" else "mpi4py.MPI"
    assert all(r["module"] == expected for r in reports(tmp_path).values())


COMPAT_PROGRAM = """
import mpi4py
mpi4py.rc.thread_level = "serialized"
import mpi4py.MPI
from mpi4py.MPI import COMM_WORLD
from mpi4py import MPI
from mpi4py.util import dtlib, pkl5
import numpy as np

assert MPI is mpi4py.MPI and MPI.__name__ == "ivmpi.MPI", MPI
assert COMM_WORLD is MPI.COMM_WORLD and type(COMM_WORLD).__module__.startswith("ivmpi.")
assert MPI.Query_thread() == MPI.THREAD_SERIALIZED          # mpi4py.rc reached the library
assert dtlib.to_numpy_dtype(dtlib.from_numpy_dtype("f8")) == np.dtype("f8")
assert dtlib.to_numpy_dtype(MPI.INT64_T) == np.dtype("i8")
comm = pkl5.Intracomm(COMM_WORLD)
big = np.arange(100000, dtype="f8")
if comm.rank == 0:
    comm.send(big, dest=1, tag=5)
elif comm.rank == 1:
    assert (comm.recv(source=0, tag=5) == big).all()
assert comm.bcast({"n": comm.size} if comm.rank == 0 else None, root=0) == {"n": comm.size}
print(f"compat: rank {comm.rank} ok", flush=True)
"""


@needs_mpirun
def test_mpi4py_modules_under_the_substitution(tmp_path):
    program = tmp_path / "compat.py"
    program.write_text(COMPAT_PROGRAM)
    out = mpirun(tmp_path, [str(program)], IVMPI_MPI4PY="1").stdout
    assert out.count("ok") == 2, out
    big_bytes = 100000 * 8
    seen = reports(tmp_path)
    # pkl5's 800 kB array went from rank 0 to rank 1 through the ring, or
    # (ranks of one kernel) announced there and copied from rank 0's memory.
    copied = seen[1]["copied"].get("0", {}).get("bytes", 0)
    assert seen[0]["traffic"]["1"]["written"] + copied >= big_bytes, seen
    assert seen[1]["traffic"]["0"]["read"] + copied >= big_bytes, seen


@needs_mpirun
def test_uncaught_exception_aborts_the_job(tmp_path):
    """Rank 1 fails while rank 0 is busy outside MPI: the job ends at once
    (MPI_Abort), not when rank 0 is done."""
    program = tmp_path / "fails.py"
    program.write_text(textwrap.dedent("""
        import time
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        comm.Barrier()
        if comm.rank == 1:
            raise ValueError("rank 1 gives up")
        time.sleep(300)
    """))
    proc = mpirun(tmp_path, ["-m", "ivmpi", str(program)], timeout=60, check=False)
    assert proc.returncode != 0
    assert "ValueError: rank 1 gives up" in proc.stderr, proc.stderr


# Without mpirun: a program sees what `python` would give it.

SHOW = ("import sys; from mpi4py import MPI; "
        "print(sys.argv, sys.path[0], __name__, globals().get('__file__'), MPI.__name__)")


def _python(args, cwd):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("IVMPI_MPI4PY", None)
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("form", ["script", "module", "code"])
def test_same_view_as_python(tmp_path, form):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "prog.py").write_text(SHOW + "\nraise KeyError('from the program')\n")
    target = {"script": ["sub/prog.py"], "module": ["-m", "sub.prog"], "code": ["-c", SHOW]}[form]
    plain = _python([*target, "a", "-b"], tmp_path)
    ours = _python(["-m", "ivmpi", *target, "a", "-b"], tmp_path)
    assert plain.stdout.replace("mpi4py.MPI", "ivmpi.MPI") == ours.stdout, (plain, ours)
    assert "ivmpi.MPI" in ours.stdout
    # Same status and the same traceback, which starts at the program's own frame.
    assert ours.returncode == plain.returncode
    assert _program_frames(ours.stderr) == _program_frames(plain.stderr), ours.stderr


def _program_frames(stderr):
    # `python -m` shows runpy's frames above the program's; ivmpi does not.
    return [line for line in stderr.splitlines() if "<frozen runpy>" not in line]


def test_the_command_still_answers(tmp_path):
    proc = _python(["-m", "ivmpi", "--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("ivmpi "), proc
    proc = _python(["-m", "ivmpi", "info", "--help"], tmp_path)
    assert proc.returncode == 0 and "usage" in proc.stdout, proc


def test_missing_script(tmp_path):
    proc = _python(["-m", "ivmpi", "absent.py"], tmp_path)
    assert proc.returncode == 2 and "can't open file" in proc.stderr, proc
