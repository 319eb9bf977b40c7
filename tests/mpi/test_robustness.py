"""Bad arguments: the same error as mpi4py gives, a message at least as
clear, and a communicator that keeps working afterwards.

Each case is called on mpi4py's COMM_WORLD (to confirm Open MPI rejects it
too) and on an ivmpi communicator; every rank then takes part in a real
exchange on the same ivmpi communicator, which proves that the failed call
left nothing behind (no half-sent frame, no posted receive, no lost
message).
"""
import re

import numpy as np
import pytest
from mpi4py import MPI as _MPI

from ivmpi import MPI
from ivmpi.errors import BufferSpecError, IvmpiError

pytestmark = pytest.mark.mpi(min_size=2)

RANK = _MPI.COMM_WORLD.Get_rank()
SIZE = _MPI.COMM_WORLD.Get_size()
RIGHT, LEFT = (RANK + 1) % SIZE, (RANK - 1) % SIZE


def exchange(comm, tag):
    """A ring exchange of a buffer (eager and rendezvous sizes) and an object."""
    for n in (5, 100_000):
        out = np.arange(n, dtype="i8") + 1000 * RANK
        got = np.empty_like(out)
        comm.Sendrecv(out, dest=RIGHT, sendtag=tag, recvbuf=got, source=LEFT, recvtag=tag)
        assert (got == np.arange(n) + 1000 * LEFT).all()
    assert comm.sendrecv({"rank": RANK}, dest=RIGHT, sendtag=tag, source=LEFT,
                         recvtag=tag) == {"rank": LEFT}


def mpi4py_raises(call):
    """The exception mpi4py over Open MPI raises for the same call (or None)."""
    try:
        call(_MPI.COMM_WORLD)
    except Exception as exc:
        return exc
    return None


def check(comm, call, error_class, message, mpi_class=None, compare=True):
    if compare:
        assert mpi4py_raises(call) is not None, "Open MPI accepts this call"
    reference = mpi4py_raises(call) if mpi_class is not None else None
    with pytest.raises(error_class) as info:
        call(comm)
    assert re.search(message, str(info.value)), str(info.value)
    assert isinstance(info.value, (IvmpiError, _MPI.Exception)), type(info.value)
    if mpi_class is not None:
        # An MPI error: the very class mpi4py raises, with the same error class.
        assert isinstance(reference, _MPI.Exception), reference
        assert isinstance(info.value, _MPI.Exception)
        assert info.value.Get_error_class() == reference.Get_error_class() == mpi_class
    # Nothing left behind: a receive posted by the failed call would swallow
    # the next message (checked directly, so a failure does not hang).
    engine = comm._engine
    assert [op for op in engine.posted if op.context == comm._ctx] == []
    exchange(comm, tag=11)


# --- ranks and tags ---------------------------------------------------------------

@pytest.mark.parametrize("dest", [SIZE, SIZE + 3, -7])
def test_invalid_destination(comm, dest):
    for call, what in ((lambda c: c.Send(np.zeros(4), dest=dest, tag=1), "Send"),
                       (lambda c: c.Isend(np.zeros(4), dest=dest, tag=1), "Isend"),
                       (lambda c: c.send("x", dest=dest, tag=1), "send"),
                       (lambda c: c.Ssend(np.zeros(4), dest=dest, tag=1), "Ssend")):
        check(comm, call, _MPI.Exception,
              rf"^MPI_ERR_RANK: invalid rank: {what}: rank {dest} is not in 0\.\.{SIZE - 1}$",
              _MPI.ERR_RANK)


@pytest.mark.parametrize("source", [SIZE, -5])
def test_invalid_source(comm, source):
    check(comm, lambda c: c.Recv(np.zeros(4), source=source, tag=1), _MPI.Exception,
          rf"rank {source} is not in 0\.\.{SIZE - 1}", _MPI.ERR_RANK)
    check(comm, lambda c: c.Iprobe(source=source), _MPI.Exception,
          rf"Iprobe: rank {source} is not in", _MPI.ERR_RANK)


@pytest.mark.parametrize("tag", [-5, -2])
def test_negative_tags(comm, tag):
    check(comm, lambda c: c.Send(np.zeros(4), dest=RIGHT, tag=tag), _MPI.Exception,
          rf"^MPI_ERR_TAG: invalid tag: Send: tag {tag} is not in 0\.\.2147483647$", _MPI.ERR_TAG)
    check(comm, lambda c: c.Recv(np.zeros(4), source=LEFT, tag=tag), _MPI.Exception,
          rf"Recv: tag {tag} is not in 0\.\.2147483647 or ANY_TAG", _MPI.ERR_TAG)


@pytest.mark.parametrize("call", ["sendrecv", "Sendrecv"])
def test_bad_send_half_of_sendrecv(comm, call):
    if call == "sendrecv":
        bad = lambda c: c.sendrecv(1, dest=RIGHT, sendtag=-5, source=LEFT)   # noqa: E731
    else:
        bad = lambda c: c.Sendrecv(np.zeros(70_000), dest=RIGHT, sendtag=-5,  # noqa: E731
                                   recvbuf=np.zeros(4), source=LEFT)
    check(comm, bad, _MPI.Exception, r"tag -5 is not in", _MPI.ERR_TAG)


def test_tag_above_the_upper_bound(comm):
    # mpi4py raises OverflowError converting the int; ivmpi names MPI's error.
    check(comm, lambda c: c.Send(np.zeros(4), dest=RIGHT, tag=2**31), _MPI.Exception,
          r"Send: tag 2147483648 is not in 0\.\.2147483647")


@pytest.mark.parametrize("root", [SIZE, -2])
def test_invalid_root(comm, root):
    check(comm, lambda c: c.bcast(1, root=root), _MPI.Exception, "MPI_ERR_ROOT", _MPI.ERR_ROOT)
    check(comm, lambda c: c.Bcast(np.zeros(4), root=root), _MPI.Exception, "MPI_ERR_ROOT",
          _MPI.ERR_ROOT)


# --- buffers ----------------------------------------------------------------------

def test_non_contiguous_send_buffer(comm):
    strided = np.arange(20, dtype="i4")[::2]
    check(comm, lambda c: c.Send(strided, dest=RIGHT, tag=1), BufferSpecError,
          r"message buffer \(ndarray of shape \(10,\)\) is not contiguous")
    check(comm, lambda c: c.Send([strided, _MPI.INT], dest=RIGHT, tag=1), BufferSpecError,
          r"is not contiguous")


def test_non_contiguous_receive_buffer(comm):
    strided = np.zeros((4, 4))[:, 1]
    check(comm, lambda c: c.Recv(strided, source=LEFT, tag=1), BufferSpecError,
          r"message buffer \(ndarray of shape \(4,\)\) is not contiguous")


@pytest.mark.parametrize("buf, name", [(np.frombuffer(b"x" * 16, "u1"), "ndarray"),
                                        (b"x" * 16, "bytes")])
def test_read_only_receive_buffer(comm, buf, name):
    check(comm, lambda c: c.Recv(buf, source=LEFT, tag=1), BufferSpecError,
          rf"^receive buffer \({name}\) is read-only$")
    check(comm, lambda c: c.Irecv(buf, source=LEFT, tag=1), BufferSpecError, "read-only")


def test_count_larger_than_the_buffer(comm):
    # mpi4py passes this to Open MPI, which reads (or writes) past the end of
    # the array; ivmpi refuses it.  Not compared: it corrupts mpi4py's heap.
    buf = np.zeros(4, "i4")
    check(comm, lambda c: c.Send([buf, 10, _MPI.INT], dest=RIGHT, tag=1), BufferSpecError,
          r"^count 10 of MPI_INT needs 40 bytes but the buffer has 16$", compare=False)
    check(comm, lambda c: c.Recv([buf, 10, _MPI.INT], source=LEFT, tag=1), BufferSpecError,
          r"count 10 of MPI_INT needs 40 bytes but the buffer has 16", compare=False)


@pytest.mark.parametrize("count", [-1, -100])
def test_negative_count(comm, count):
    check(comm, lambda c: c.Send([np.zeros(4), count, _MPI.DOUBLE], dest=RIGHT, tag=1),
          BufferSpecError, rf"^negative count {count}$")
    check(comm, lambda c: c.Recv([np.zeros(4), count, _MPI.DOUBLE], source=LEFT, tag=1),
          BufferSpecError, rf"negative count {count}")


def test_unknown_datatype(comm):
    check(comm, lambda c: c.Send([np.zeros(4, "i4"), "xyz"], dest=RIGHT, tag=1), BufferSpecError,
          r"^cannot map 'xyz' to an MPI datatype$")


@pytest.mark.parametrize("spec, message", [
    (None, r"expected a buffer or \[buffer, \.\.\.\] spec, got None"),
    ("abc", r"message buffer must support the buffer protocol, got str"),
])
def test_not_a_buffer(comm, spec, message):
    check(comm, lambda c: c.Send(spec, dest=RIGHT, tag=1), BufferSpecError, message)


def test_truncating_receive_leaves_the_communicator_usable(comm):
    """A receive too small for the message: MPI_ERR_TRUNCATE, then business as usual."""
    for n in (8, 200_000):                 # eager and rendezvous
        req = comm.Isend(np.ones(n, "u1"), dest=RIGHT, tag=5)
        with pytest.raises(_MPI.Exception) as info:
            comm.Recv(np.zeros(n // 2, "u1"), source=LEFT, tag=5)
        assert info.value.Get_error_class() == _MPI.ERR_TRUNCATE
        req.Wait()
        exchange(comm, tag=12)
