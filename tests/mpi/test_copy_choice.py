"""What start-up chose about one copy under the eager limit
(ivmpi.world._one_copy_pays), the same on every rank, and the sends that
follow it: where it does not pay, buffers up to the eager limit go eagerly
to ranks that could copy them, and one copy is left to larger messages."""
import os

import numpy as np
import pytest

from ivmpi import _fastcopy, world
from ivmpi.engine import COPY_MIN

pytestmark = pytest.mark.mpi(min_size=2)


def _copies(comm, peer):
    return comm._ranks[peer] in _fastcopy.single_copy_peers()


def _copied_from(comm, peer):
    return _fastcopy.single_copy_counts().get(comm._ranks[peer], (0, 0))[0]


def test_every_rank_chose_alike(comm):
    engine = comm._engine
    comm.Barrier()      # (the first collective makes comm._shared)
    chosen = (world._one_copy_under_eager, engine.copy_min, comm._fast.copy_min,
              comm._shared.give_copies)
    everyone = comm.allgather(chosen)
    assert everyone == [chosen] * comm.size
    if not os.environ.get("IVMPI_COPY_MIN"):
        under = world._one_copy_under_eager
        assert engine.copy_min == (COPY_MIN if under else engine.eager_limit + 1)
        assert comm._shared.give_copies == (under and not engine.oversubscribed)


def test_sends_follow_the_choice(comm):
    """Ranks 0 and 1, where they copy each other's memory: a buffer of the
    eager limit goes in one copy only where it pays, and one over the eager
    limit always; the data arrive whole either way."""
    if comm.rank > 1:
        return
    other = 1 - comm.rank
    if not _copies(comm, other):
        pytest.skip("this pair cannot copy from each other's memory here")
    eager = comm._engine.eager_limit
    pays = comm._fast.copy_min <= eager
    for n, copied in ((eager, pays), (eager + 8, True)):
        data = np.arange(n, dtype=np.uint8) ^ 0x5a
        got = np.zeros(n, dtype=np.uint8)
        before = _copied_from(comm, other)
        if comm.rank == 0:
            comm.Send(data, 1, 7)
            comm.Recv(got, 1, 8)
        else:
            comm.Recv(got, 0, 7)
            comm.Send(data, 0, 8)
        np.testing.assert_array_equal(got, data)
        assert _copied_from(comm, other) - before == (1 if copied else 0), (n, pays)
