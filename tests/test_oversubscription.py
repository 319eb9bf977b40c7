"""Oversubscription (more ranks than cores) changes how ranks wait: they
yield the core between polls and never hold a collective's round for a
peer's answer.  Ranks bound one to a core each see one core in their own
affinity, yet together they are not oversubscribed."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ivmpi.benchcompare import find_mpirun
from ivmpi.world import usable_cores

ROOT = Path(__file__).resolve().parent.parent
MPIRUN = find_mpirun()


def test_cores_of_several_ranks_are_counted_together():
    one = usable_cores([[0]])
    assert one == 1
    assert usable_cores([[0], [0]]) == 1
    assert usable_cores([[0], [1]]) == usable_cores([[0, 1]]) >= one


PROGRAM = "import ivmpi.MPI as M; print('oversubscribed', M.COMM_WORLD._engine.oversubscribed)"


def _oversubscribed(placement, nranks):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("IVMPI_OVERSUBSCRIBED", None)
    proc = subprocess.run([MPIRUN, "-n", str(nranks), *placement, sys.executable, "-c", PROGRAM],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answers = {line.split()[1] for line in proc.stdout.splitlines()
               if line.startswith("oversubscribed ")}
    assert len(answers) == 1, proc.stdout
    return answers.pop() == "True"


@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_ranks_bound_one_to_a_core_are_not_oversubscribed():
    if usable_cores() < 2:
        pytest.skip("one core")
    assert not _oversubscribed(["--bind-to", "core", "--map-by", "core"], 2)
    assert not _oversubscribed(["--bind-to", "none"], 2)
    assert _oversubscribed(["--oversubscribe", "--bind-to", "none"], usable_cores() + 1)
