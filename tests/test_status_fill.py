"""Statuses filled in C (ivmpi/_status.pxi): the same as mpi4py's setters."""
import pytest

from ivmpi import _fastcopy, request
from ivmpi.lib import MPI


def test_the_layout_of_this_mpi4py_is_learned():
    assert _fastcopy.learn_status_layout(MPI.Status, request._set_status, MPI.__pyx_capi__)


@pytest.mark.parametrize("source, tag, count", [
    (0, 0, 0), (3, 77, 123456), (MPI.PROC_NULL, MPI.ANY_TAG, 0),
    (MPI.ANY_SOURCE, MPI.ANY_TAG, 0), ((1 << 31) - 1, (1 << 31) - 1, (1 << 31) - 1)])
def test_a_status_filled_in_c_reads_as_the_setters_write_it(source, tag, count):
    fast, slow = MPI.Status(), MPI.Status()
    for status in (fast, slow):
        # From a status that held something else: cancelled, an error, a large count.
        request._set_status(status, 9, 9, 1 << 40, error=MPI.ERR_TRUNCATE, cancelled=True)
    assert _fastcopy.fill_status_fast(fast, source, tag, count)
    request._set_status(slow, source, tag, count)
    for status in (fast, slow):
        assert (status.Get_source(), status.Get_tag(), status.Get_error()) == (
            source, tag, MPI.SUCCESS)
        assert status.Get_count(MPI.BYTE) == status.Get_elements(MPI.BYTE) == count
        assert not status.Is_cancelled()
    assert fast.py2f() == slow.py2f()


def test_what_the_c_fill_does_not_take_goes_to_the_setters():
    class Mine(MPI.Status):
        pass
    mine = Mine()
    assert not _fastcopy.fill_status_fast(mine, 1, 2, 3)       # a subclass
    status = MPI.Status()
    assert not _fastcopy.fill_status_fast(status, 1, 2, 1 << 31)       # a count past 2**31
    for target in (mine, status):
        request.fill_status(target, 1, 2, 1 << 33)
        assert (target.Get_source(), target.Get_tag(), target.Get_elements(MPI.BYTE)) == (
            1, 2, 1 << 33)
    request.fill_status(status, 4, 5, 6, error=MPI.ERR_OTHER, cancelled=True)
    assert (status.Get_error(), status.Is_cancelled(), status.Get_count()) == (
        MPI.ERR_OTHER, True, 6)


def test_a_layout_it_cannot_explain_is_not_used():
    """A fill that does not write where the setters do (here: one that
    ignores the count) leaves the C fill off, then the real one back on."""
    def wrong(status, source, tag, count, error=MPI.SUCCESS, cancelled=False):
        request._set_status(status, source, tag, 0, error, cancelled)
    try:
        assert not _fastcopy.learn_status_layout(MPI.Status, wrong, MPI.__pyx_capi__)
        assert not _fastcopy.fill_status_fast(MPI.Status(), 1, 2, 3)
    finally:
        assert _fastcopy.learn_status_layout(MPI.Status, request._set_status,
                                             MPI.__pyx_capi__)
