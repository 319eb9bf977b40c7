"""Every buffer kind in every simple spec form moves the bytes it names, on
every point-to-point path: blocking, posted, matched probe, persistent,
synchronous; and a spec that does not fit its buffer is an error, as in
mpi4py."""
import array
import ctypes
import mmap

import numpy as np
import pytest

from ivmpi import MPI
from ivmpi.errors import BufferSpecError
from test_buffer_kinds import DLPackOnly, InterfaceOnly

pytestmark = pytest.mark.mpi(min_size=2)

N = 16          # doubles per buffer


def _make(kind, values):
    """A buffer of N doubles holding values, in the given kind."""
    values = np.asarray(values, "f8")
    if kind == "numpy":
        return values.copy()
    if kind == "bytearray":
        return bytearray(values.tobytes())
    if kind == "array":
        return array.array("d", values)
    if kind == "ctypes":
        return (ctypes.c_double * N)(*values)
    if kind == "mmap":
        m = mmap.mmap(-1, N * 8)
        m.write(values.tobytes())
        return m
    if kind == "memoryview":
        return memoryview(bytearray(values.tobytes()))
    if kind == "2d":
        return values.reshape(4, N // 4).copy()
    if kind == "fortran":       # the values in memory order
        return values.copy().reshape(4, N // 4, order="F")
    if kind == "dlpack":
        return DLPackOnly(values.copy())
    if kind == "cai":
        return InterfaceOnly(values.copy())
    raise ValueError(kind)


def _doubles(buf):
    if isinstance(buf, (DLPackOnly, InterfaceOnly)):
        return buf.array
    if isinstance(buf, np.ndarray):
        return buf.ravel(order="K")
    return np.frombuffer(bytes(memoryview(buf).cast("B")), "f8")


FORMS = {
    "plain": lambda b: (b, 0, N),
    "[buf, DOUBLE]": lambda b: ([b, MPI.DOUBLE], 0, N),
    "[buf, 'd']": lambda b: ([b, "d"], 0, N),
    "[buf, count, 'd']": lambda b: ([b, 6, "d"], 0, 6),
    "[buf, count, DOUBLE]": lambda b: ([b, 5, MPI.DOUBLE], 0, 5),
    "[buf, (count, displ), DOUBLE]": lambda b: ([b, (5, 3), MPI.DOUBLE], 3, 5),
    "[buf, count, displ, DOUBLE]": lambda b: ([b, 4, 7, MPI.DOUBLE], 7, 4),
    "[buf, (count, displ), BYTE]": lambda b: ([b, (16, 8), MPI.BYTE], 1, 2),
}
KINDS = ["numpy", "bytearray", "array", "ctypes", "mmap", "memoryview", "2d", "fortran", "dlpack",
         "cai"]


def _exchange(comm, how, sspec, rspec, tag):
    peer = 1 - comm.rank
    if how == "Send/Recv":
        if comm.rank == 0:
            comm.Send(sspec, peer, tag)
        else:
            comm.Recv(rspec, peer, tag)
    elif how == "Ssend/Irecv":
        if comm.rank == 0:
            comm.Ssend(sspec, peer, tag)
        else:
            comm.Irecv(rspec, peer, tag).Wait()
    elif how == "Sendrecv":
        comm.Sendrecv(sspec, peer, tag, rspec, peer, tag)
    elif how == "Mprobe":
        if comm.rank == 0:
            comm.Isend(sspec, peer, tag).Wait()
        else:
            comm.Mprobe(peer, tag).Recv(rspec)
    elif how == "persistent":
        req = comm.Send_init(sspec, peer, tag) if comm.rank == 0 else \
            comm.Recv_init(rspec, peer, tag)
        for _ in range(2):
            req.Start()
            req.Wait()
        req.Free()


@pytest.mark.parametrize("how", ["Send/Recv", "Ssend/Irecv", "Sendrecv", "Mprobe", "persistent"])
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("kind", KINDS)
def test_spec_forms_move_exactly_the_named_elements(comm, kind, form, how):
    if comm.rank > 1:
        return
    source = np.arange(N, dtype="f8") + 100
    target = np.full(N, -1.0)
    sbuf, rbuf = _make(kind, source), _make(kind, target)
    sspec, start, count = FORMS[form](sbuf)
    rspec, _, _ = FORMS[form](rbuf)
    _exchange(comm, how, sspec, rspec, 31)
    if comm.rank == 1 or how == "Sendrecv":
        expected = target.copy()
        expected[start:start + count] = source[start:start + count]
        assert list(_doubles(rbuf)) == list(expected)


@pytest.mark.parametrize("spec", [
    lambda b: [b, (4, N + 1), MPI.DOUBLE],      # displacement past the end
    lambda b: [b, (4, N - 3), MPI.DOUBLE],      # runs past the end
    lambda b: [b, N + 1, MPI.DOUBLE],
    lambda b: [b, 3, N - 2, MPI.DOUBLE],
], ids=["displ", "displ+count", "count", "4-form"])
@pytest.mark.parametrize("kind", ["numpy", "bytearray", "mmap", "dlpack"])
def test_specs_that_do_not_fit_are_errors(comm, kind, spec):
    buf = _make(kind, np.zeros(N))
    with pytest.raises(BufferSpecError):
        comm.Send(spec(buf), 1 - comm.rank if comm.rank < 2 else 0, 32)
    with pytest.raises(BufferSpecError):
        comm.Recv(spec(buf), 1 - comm.rank if comm.rank < 2 else 0, 32)
    # Nothing was sent or left posted.
    assert not comm.Iprobe(MPI.ANY_SOURCE, 32)
