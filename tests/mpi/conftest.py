"""Shared fixtures for the multi-rank tests (run under mpirun with --with-mpi).

Every test gets `comm`, a fresh Dup of ivmpi's COMM_WORLD: a test that leaves a
message behind cannot disturb the next one, and the Barrier at teardown keeps
the ranks in step from test to test.
"""
import numpy as np
import pytest

from ivmpi import MPI


@pytest.fixture(scope="session")
def world():
    return MPI.COMM_WORLD


@pytest.fixture
def engine_timeout(world):
    """A wait that cannot complete fails the test instead of hanging the job
    (for test modules that ask for it with usefixtures)."""
    engine = world._engine
    saved = engine.timeout
    if not saved:
        engine.timeout = 30.0
    yield
    engine.timeout = saved


@pytest.fixture
def copies_under_eager(world):
    """Buffers from COPY_MIN bytes go in one copy under the eager limit too
    (to ranks that copy from our memory), as where the kernel's copy is
    cheap: start-up leaves that to messages over the eager limit where it
    is not (world._one_copy_pays), and the path is tested either way.
    For communicators made during the test (comm is).  Collective."""
    from ivmpi.engine import COPY_MIN
    engine = world._engine
    saved = engine.copy_min, world._fast.copy_min, world._fast.step_copy_min
    world.Barrier()
    engine.copy_min = world._fast.copy_min = world._fast.step_copy_min = COPY_MIN
    world.Barrier()
    yield
    world.Barrier()
    engine.copy_min, world._fast.copy_min, world._fast.step_copy_min = saved
    world.Barrier()


@pytest.fixture
def comm(world):
    c = world.Dup()
    yield c
    c.Barrier()
    c.Free()


@pytest.fixture(scope="session")
def pattern():
    """pattern(nbytes, seed): reproducible bytes, different for every seed."""
    def make(nbytes, seed):
        return np.frombuffer(np.random.default_rng(seed).bytes(nbytes), dtype=np.uint8)
    return make


@pytest.fixture
def streamed(world):
    """Large messages stream through the rings for the test's duration:
    no pair copies from its sender's memory (ivmpi/_single_copy.pxi), as
    between ranks in different VMs.  Collective: every rank turns it off
    before any sends, and back on after every rank is done."""
    from ivmpi import _fastcopy
    saved = _fastcopy.single_copy_tables()
    world.Barrier()
    _fastcopy.set_single_copy([0] * len(saved[0]), [False] * len(saved[1]))
    world.Barrier()
    yield
    world.Barrier()
    _fastcopy.set_single_copy(*saved)
    world.Barrier()
