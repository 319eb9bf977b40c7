"""The examples run under mpirun, verify their own results, and give the same
verified result when their import is swapped to mpi4py (Open MPI's transport)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ivmpi.benchcompare import find_mpirun

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
IMPORT_IVMPI = "from ivmpi import MPI"
IMPORT_MPI4PY = "from mpi4py import MPI"


MPIRUN = find_mpirun()
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="no mpirun")


def run(script, nranks, timeout=120, args=()):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               IVMPI_TIMEOUT=os.environ.get("IVMPI_TIMEOUT", "60"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([MPIRUN, "--oversubscribe", "-n", str(nranks), sys.executable, str(script),
                           *args],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{script.name} -n {nranks} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def with_mpi4py(name, tmp_path):
    """A copy of the example whose only change is the import line."""
    source = (EXAMPLES / name).read_text()
    assert source.count(IMPORT_IVMPI) == 1, f"{name} must import MPI from ivmpi exactly once"
    copy = tmp_path / name
    copy.write_text(source.replace(IMPORT_IVMPI, IMPORT_MPI4PY))
    return copy


def summary(output, prefix):
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"expected one '{prefix}' line in:\n{output}"
    return lines[0]


def test_every_example_says_mpi4py_runs_it_too():
    for script in EXAMPLES.glob("*.py"):
        text = script.read_text()
        assert IMPORT_IVMPI in text and IMPORT_MPI4PY in text, script.name


def test_pingpong(tmp_path):
    out = run(EXAMPLES / "pingpong.py", 2)
    line = summary(out, "pingpong:")
    assert "data verified" in line and "latency" in line and "bandwidth" in line
    # One row per size: bytes, rounds, latency, bandwidth (positive numbers).
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [8, 64, 512, 4096, 32768, 262144, 1 << 20, 4 << 20]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)
    native = run(with_mpi4py("pingpong.py", tmp_path), 2)
    assert "data verified" in summary(native, "pingpong:")


def test_allreduce(tmp_path):
    line = summary(run(EXAMPLES / "allreduce.py", 2), "allreduce:")
    assert line.startswith("allreduce: 2 ranks x 1000000 elements verified")
    assert summary(run(with_mpi4py("allreduce.py", tmp_path), 2), "allreduce:") == line


@pytest.mark.parametrize("nranks", [2, 3])
def test_halo(tmp_path, nranks):
    line = summary(run(EXAMPLES / "halo.py", nranks), "halo:")
    assert line.startswith(f"halo: {nranks} ranks") and "verified against serial" in line
    assert summary(run(with_mpi4py("halo.py", tmp_path), nranks), "halo:") == line


def _serial_heat2d(ny, nx, steps):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import heat2d
    finally:
        sys.path.remove(str(EXAMPLES))
    return heat2d.serial(ny, nx, steps)[0]


@pytest.mark.parametrize("nranks", [2, 4])
def test_heat2d(tmp_path, nranks):
    # 4 ranks make a 2x2 grid: halos of rows and of columns (strided subarrays).
    out = tmp_path / "field.bin"
    args = ("--size", "60x44", "--steps", "40", "--out", str(out))
    line = summary(run(EXAMPLES / "heat2d.py", nranks, args=args), "heat2d:")
    assert line.startswith(f"heat2d: {nranks} ranks") and "verified against serial" in line
    # The file MPI-IO wrote, checked here too, independently of the example's own check.
    field = np.fromfile(out, dtype=np.float64)
    expected = _serial_heat2d(60, 44, 40)
    assert field.shape == (60 * 44,) and np.array_equal(field.reshape(60, 44), expected)
    out.unlink()
    native = summary(run(with_mpi4py("heat2d.py", tmp_path), nranks, args=args), "heat2d:")
    assert native == line
