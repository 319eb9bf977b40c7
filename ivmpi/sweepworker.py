"""One transport's side of ``ivmpi bench sweep``: time many calls in one launch.

    mpirun -n N python -m ivmpi.sweepworker --transport ivmpi|mpi4py \\
        --serve DIR [--target 0.003] [--repeats 3]

Each rank reads rows ``[call, buffer kind, size in bytes or null]`` one at a
time from its FIFO DIR/command-RANK (``null``: stop) and waits between them
in a blocking read (the driver, ivmpi.benchsweep, runs the transports' jobs
in lockstep).  For each row every rank builds its buffers, runs the call once to warm up,
then times blocks of iterations sized so that a block takes about
``--target`` seconds; a block's time is the slowest rank's, divided by the
iterations.  What one iteration is depends on the call: a round trip for the
ping-pong rows, one exchange for the exchange rows, one operation (started
and completed) for the collectives.

Rank 0 writes JSON lines to the FIFO DIR/results as it goes (a "start"
line before each row, a result or error line after), so the driver knows
how far a launch got when it crashes or hangs.  The control traffic (iteration
counts, times, errors) goes over a duplicate of the MPI library's own
COMM_WORLD, never through the transport under test.

The module level imports no MPI: the driver reads ``CASES`` from it.
"""
import argparse
import array
import ctypes
import json
import mmap
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

KINDS = ("numpy", "bytearray", "array", "mmap", "ctypes", "mpibuf", "dlpack", "view")
# The calls that also run with every other buffer kind.
KIND_CALLS = ("Send/Recv", "Bcast", "Allgather", "Allreduce")
# Kind "view": numpy arrays, passed as a new view (and new spec lists) in
# every call, as code that slices its arrays per call does, so that nothing
# keyed on the buffer objects can be reused.  It runs with every buffer call
# that is not persistent (a persistent request binds its buffers once).
VIEW_CALLS = ("Send/Recv", "Ssend/Recv", "Bsend/Recv", "Isend/Irecv", "Issend/Irecv",
              "Ibsend/Irecv", "Sendrecv")
TAG = 11
MAX_COUNT = 1 << 20


@dataclass
class Case:
    name: str
    group: str            # p2p, p2p-obj, coll, coll-obj, neighbor, win
    sized: bool           # takes a message size
    pairwise: bool        # needs exactly two ranks (point-to-point)
    setup: Callable       # setup(ctx) -> step; ctx.cleanup collects what to undo
    numpy_only: bool = False    # its own numpy buffers, whatever the row's kind


CASES = {}


def case(name, group, sized=True, pairwise=False, numpy_only=False):
    def register(setup):
        CASES[name] = Case(name, group, sized, pairwise, setup, numpy_only)
        return setup
    return register


class DLPackTensor:
    """A CPU tensor as torch or JAX hand one over: DLPack, no buffer protocol
    (here numpy's export of an array)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


class Context:
    """What one row's setup needs: the communicator, size, buffer kind, cleanups."""

    def __init__(self, comm, MPI, nbytes, kind):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.peer = 1 - self.rank if self.size == 2 else None
        self.nbytes, self.kind = nbytes or 0, kind
        self.count = self.nbytes // 8          # float64 elements
        self.cleanup = []

    def buffer(self, nbytes, numeric=False, blocks=1):
        """A buffer spec of `blocks` blocks of nbytes in this row's buffer kind,
        filled with nonzero data.  The count in a [buf, count, datatype] spec
        is per block, as the collectives read it.

        numeric: the data is float64 (reductions), so kinds without a type of
        their own say MPI.DOUBLE; otherwise they go as bytes.
        """
        MPI, count = self.MPI, nbytes // 8
        nbytes, total = nbytes * blocks, count * blocks
        if self.kind in ("numpy", "view"):
            import numpy
            return numpy.full(total, self.rank + 1.0)
        if self.kind == "array":
            return array.array("d", [self.rank + 1.0]) * total
        if self.kind == "dlpack":
            import numpy
            return DLPackTensor(numpy.full(total, self.rank + 1.0))
        if self.kind == "ctypes":
            return (ctypes.c_double * total)(*([self.rank + 1.0] * total))
        if self.kind == "bytearray":
            buf = bytearray(b"\x01" * nbytes)
            return [buf, MPI.DOUBLE] if numeric else buf
        if self.kind == "mmap":
            # As mpi4py's OSU benchmarks pass their buffers.
            buf = mmap.mmap(-1, max(nbytes, 1))
            buf.write(b"\x01" * nbytes)
            self.cleanup.append(buf.close)
            return [buf, count, MPI.DOUBLE] if numeric else [buf, nbytes // blocks, MPI.BYTE]
        if self.kind == "mpibuf":
            buf = MPI.Alloc_mem(max(nbytes, 1))
            buf[:nbytes] = b"\x01" * nbytes
            self.cleanup.append(lambda: MPI.Free_mem(buf))
            return [buf, count, MPI.DOUBLE] if numeric else [buf, nbytes // blocks, MPI.BYTE]
        raise ValueError(f"unknown buffer kind {self.kind!r}")

    def vector(self, blocks):
        """numpy float64 buffer of `blocks` blocks of this row's size, as a v-spec."""
        import numpy
        counts = [self.count] * blocks
        displs = [i * self.count for i in range(blocks)]
        buf = numpy.full(self.count * blocks, self.rank + 1.0)
        return [buf, counts, displs, self.MPI.DOUBLE]

    def wvector(self, blocks):
        """The same for the w-variants: byte displacements, one datatype per block."""
        buf, counts, displs, double = self.vector(blocks)
        return [buf, (counts, [d * 8 for d in displs]), [double] * blocks]


def renewer(args):
    """A function giving args anew: each numpy array as a new view of the
    same memory (a[...]), each list spec as a new list around a new view,
    as code that slices its arrays in every call passes them.  Counts and
    datatypes stay the same objects."""
    def one(spec):
        if hasattr(spec, "__array_interface__"):
            return lambda: spec[...]
        if type(spec) is list and spec and hasattr(spec[0], "__array_interface__"):
            first, rest = spec[0], spec[1:]
            return lambda: [first[...], *rest]
        return lambda: spec
    parts = [one(spec) for spec in args]
    return lambda: [part() for part in parts]


# ----------------------------------------------------- point-to-point patterns

def pingpong(ctx, send, recv):
    """Rank 0 sends and waits for the echo; rank 1 echoes. One iteration = a round trip."""
    if ctx.rank == 0:
        def step():
            send()
            recv()
    else:
        def step():
            recv()
            send()
    return step


def buffer_pingpong(ctx, method):
    sbuf, rbuf = ctx.buffer(ctx.nbytes), ctx.buffer(ctx.nbytes)
    send = getattr(ctx.comm, method)
    comm, peer = ctx.comm, ctx.peer
    if ctx.kind == "view":
        return pingpong(ctx, lambda: send(sbuf[...], peer, TAG),
                        lambda: comm.Recv(rbuf[...], peer, TAG))
    return pingpong(ctx, lambda: send(sbuf, peer, TAG), lambda: comm.Recv(rbuf, peer, TAG))


def attach_bsend_buffer(ctx, nbytes):
    MPI = ctx.MPI
    MPI.Attach_buffer(bytearray(2 * (nbytes + MPI.BSEND_OVERHEAD) + (1 << 16)))
    ctx.cleanup.append(MPI.Detach_buffer)


@case("Send/Recv", "p2p", pairwise=True)
def _send(ctx):
    return buffer_pingpong(ctx, "Send")


@case("Ssend/Recv", "p2p", pairwise=True)
def _ssend(ctx):
    return buffer_pingpong(ctx, "Ssend")


@case("Bsend/Recv", "p2p", pairwise=True)
def _bsend(ctx):
    attach_bsend_buffer(ctx, ctx.nbytes)
    return buffer_pingpong(ctx, "Bsend")


def ready_pingpong(ctx, rsend):
    """Ready mode needs the receive posted first: each side posts its next
    receive before it sends, so the peer's ready send always finds one."""
    comm, peer = ctx.comm, ctx.peer
    sbuf, rbuf = ctx.buffer(ctx.nbytes), ctx.buffer(ctx.nbytes)
    if ctx.rank == 0:
        def step():
            reply = comm.Irecv(rbuf, peer, TAG)
            rsend(sbuf, peer)
            reply.Wait()
        ctx.cleanup.append(lambda: comm.Send(sbuf, peer, TAG))  # the last posted receive
        return step
    posted = [comm.Irecv(rbuf, peer, TAG)]

    def step():
        posted[0].Wait()
        posted[0] = comm.Irecv(rbuf, peer, TAG)
        rsend(sbuf, peer)
    ctx.cleanup.append(lambda: posted[0].Wait())
    return step


@case("Rsend/Recv", "p2p", pairwise=True)
def _rsend(ctx):
    return ready_pingpong(ctx, lambda buf, peer: ctx.comm.Rsend(buf, peer, TAG))


@case("Irsend/Irecv", "p2p", pairwise=True)
def _irsend(ctx):
    return ready_pingpong(ctx, lambda buf, peer: ctx.comm.Irsend(buf, peer, TAG).Wait())


def exchange(ctx, isend_method):
    """Both ranks post a receive and a send, then wait for both. One iteration = one exchange."""
    comm, peer, waitall = ctx.comm, ctx.peer, ctx.MPI.Request.Waitall
    sbuf, rbuf = ctx.buffer(ctx.nbytes), ctx.buffer(ctx.nbytes)
    isend = getattr(comm, isend_method)
    if ctx.kind == "view":
        return lambda: waitall([comm.Irecv(rbuf[...], peer, TAG), isend(sbuf[...], peer, TAG)])

    def step():
        waitall([comm.Irecv(rbuf, peer, TAG), isend(sbuf, peer, TAG)])
    return step


@case("Isend/Irecv", "p2p", pairwise=True)
def _isend(ctx):
    return exchange(ctx, "Isend")


@case("Issend/Irecv", "p2p", pairwise=True)
def _issend(ctx):
    return exchange(ctx, "Issend")


@case("Ibsend/Irecv", "p2p", pairwise=True)
def _ibsend(ctx):
    attach_bsend_buffer(ctx, ctx.nbytes)
    return exchange(ctx, "Ibsend")


@case("Sendrecv", "p2p", pairwise=True)
def _sendrecv(ctx):
    comm, peer = ctx.comm, ctx.peer
    sbuf, rbuf = ctx.buffer(ctx.nbytes), ctx.buffer(ctx.nbytes)
    if ctx.kind == "view":
        return lambda: comm.Sendrecv(sbuf[...], peer, TAG, rbuf[...], peer, TAG)
    return lambda: comm.Sendrecv(sbuf, peer, TAG, rbuf, peer, TAG)


@case("Sendrecv_replace", "p2p", pairwise=True)
def _sendrecv_replace(ctx):
    comm, peer, buf = ctx.comm, ctx.peer, ctx.buffer(ctx.nbytes)
    return lambda: comm.Sendrecv_replace(buf, peer, TAG, peer, TAG)


@case("Isendrecv", "p2p", pairwise=True)
def _isendrecv(ctx):
    comm, peer = ctx.comm, ctx.peer
    sbuf, rbuf = ctx.buffer(ctx.nbytes), ctx.buffer(ctx.nbytes)
    return lambda: comm.Isendrecv(sbuf, peer, TAG, rbuf, peer, TAG).Wait()


@case("Isendrecv_replace", "p2p", pairwise=True)
def _isendrecv_replace(ctx):
    comm, peer, buf = ctx.comm, ctx.peer, ctx.buffer(ctx.nbytes)
    return lambda: comm.Isendrecv_replace(buf, peer, TAG, peer, TAG).Wait()


# Isend/Irecv exchanges completed by the calls on lists of requests other
# than Waitall: completion loops as programs write them.
def completed_exchange(ctx, complete):
    comm, peer, MPI = ctx.comm, ctx.peer, ctx.MPI
    sbuf, rbuf = ctx.buffer(ctx.nbytes), ctx.buffer(ctx.nbytes)
    return lambda: complete(MPI.Request, [comm.Irecv(rbuf, peer, TAG),
                                          comm.Isend(sbuf, peer, TAG)])


def _by_waitany(Request, requests):
    while Request.Waitany(requests) >= 0:
        pass


def _by_testall(Request, requests):
    while not Request.Testall(requests):
        pass


def _by_waitsome(Request, requests):
    while Request.Waitsome(requests) is not None:
        pass


def _by_test(Request, requests):
    for req in requests:
        while not req.Test():
            pass


for _name, _complete in (("Isend/Irecv+Waitany", _by_waitany),
                         ("Isend/Irecv+Testall", _by_testall),
                         ("Isend/Irecv+Waitsome", _by_waitsome),
                         ("Isend/Irecv+Test", _by_test)):
    case(_name, "p2p", pairwise=True)(
        lambda ctx, complete=_complete: completed_exchange(ctx, complete))


def persistent_exchange(ctx, init_method):
    comm, peer, MPI = ctx.comm, ctx.peer, ctx.MPI
    sbuf, rbuf = ctx.buffer(ctx.nbytes), ctx.buffer(ctx.nbytes)
    requests = [comm.Recv_init(rbuf, peer, TAG), getattr(comm, init_method)(sbuf, peer, TAG)]
    ctx.cleanup.append(lambda: [r.Free() for r in requests])

    def step():
        MPI.Prequest.Startall(requests)
        MPI.Request.Waitall(requests)
    return step


@case("Send_init/Recv_init", "p2p", pairwise=True)
def _send_init(ctx):
    return persistent_exchange(ctx, "Send_init")


@case("Ssend_init/Recv_init", "p2p", pairwise=True)
def _ssend_init(ctx):
    return persistent_exchange(ctx, "Ssend_init")


@case("Bsend_init/Recv_init", "p2p", pairwise=True)
def _bsend_init(ctx):
    attach_bsend_buffer(ctx, ctx.nbytes)
    return persistent_exchange(ctx, "Bsend_init")


def probe_pingpong(ctx, probe_and_receive):
    comm, peer = ctx.comm, ctx.peer
    sbuf, rbuf = ctx.buffer(ctx.nbytes), ctx.buffer(ctx.nbytes)
    return pingpong(ctx, lambda: comm.Send(sbuf, peer, TAG),
                    lambda: probe_and_receive(comm, peer, rbuf))


def _probe_recv(comm, peer, rbuf):
    comm.Probe(peer, TAG)
    comm.Recv(rbuf, peer, TAG)


def _iprobe_recv(comm, peer, rbuf):
    while not comm.Iprobe(peer, TAG):
        pass
    comm.Recv(rbuf, peer, TAG)


def _mprobe_recv(comm, peer, rbuf):
    comm.Mprobe(peer, TAG).Recv(rbuf)


def _improbe_recv(comm, peer, rbuf):
    message = None
    while message is None:
        message = comm.Improbe(peer, TAG)
    message.Recv(rbuf)


for _name, _receive in (("Probe+Recv", _probe_recv), ("Iprobe loop+Recv", _iprobe_recv),
                        ("Mprobe+Message.Recv", _mprobe_recv),
                        ("Improbe loop+Message.Recv", _improbe_recv)):
    case(_name, "p2p", pairwise=True)(
        lambda ctx, receive=_receive: probe_pingpong(ctx, receive))


# ---------------------------------------------- point-to-point of objects

def payload(ctx):
    return bytes(b"\x01" * ctx.nbytes)


@case("send/recv", "p2p-obj", pairwise=True)
def _obj_send(ctx):
    comm, peer, obj = ctx.comm, ctx.peer, payload(ctx)
    return pingpong(ctx, lambda: comm.send(obj, peer, TAG), lambda: comm.recv(None, peer, TAG))


@case("ssend/recv", "p2p-obj", pairwise=True)
def _obj_ssend(ctx):
    comm, peer, obj = ctx.comm, ctx.peer, payload(ctx)
    return pingpong(ctx, lambda: comm.ssend(obj, peer, TAG), lambda: comm.recv(None, peer, TAG))


@case("bsend/recv", "p2p-obj", pairwise=True)
def _obj_bsend(ctx):
    attach_bsend_buffer(ctx, ctx.nbytes + 1024)   # room for the pickle's header
    comm, peer, obj = ctx.comm, ctx.peer, payload(ctx)
    return pingpong(ctx, lambda: comm.bsend(obj, peer, TAG), lambda: comm.recv(None, peer, TAG))


def object_exchange(ctx, isend_method):
    comm, peer, obj = ctx.comm, ctx.peer, payload(ctx)
    isend = getattr(comm, isend_method)
    # mpi4py's irecv without a buffer takes at most 32 KiB: give it room.
    room = bytearray(ctx.nbytes + 1024)

    def step():
        incoming = comm.irecv(room, source=peer, tag=TAG)
        isend(obj, peer, TAG).wait()
        incoming.wait()
    return step


@case("isend/irecv", "p2p-obj", pairwise=True)
def _obj_isend(ctx):
    return object_exchange(ctx, "isend")


@case("issend/irecv", "p2p-obj", pairwise=True)
def _obj_issend(ctx):
    return object_exchange(ctx, "issend")


@case("isend/irecv+waitall", "p2p-obj", pairwise=True)
def _obj_waitall(ctx):
    comm, peer, obj, MPI = ctx.comm, ctx.peer, payload(ctx), ctx.MPI
    room = bytearray(ctx.nbytes + 1024)
    return lambda: MPI.Request.waitall([comm.irecv(room, source=peer, tag=TAG),
                                        comm.isend(obj, peer, TAG)])


@case("sendrecv", "p2p-obj", pairwise=True)
def _obj_sendrecv(ctx):
    comm, peer, obj = ctx.comm, ctx.peer, payload(ctx)
    return lambda: comm.sendrecv(obj, peer, TAG, None, peer, TAG)


def _obj_probe(comm, peer):
    comm.probe(peer, TAG)
    comm.recv(None, peer, TAG)


def _obj_iprobe(comm, peer):
    while not comm.iprobe(peer, TAG):
        pass
    comm.recv(None, peer, TAG)


def _obj_mprobe(comm, peer):
    comm.mprobe(peer, TAG).recv()


def _obj_improbe(comm, peer):
    message = None
    while message is None:
        message = comm.improbe(peer, TAG)
    message.recv()


for _name, _receive in (("probe+recv", _obj_probe), ("iprobe loop+recv", _obj_iprobe),
                        ("mprobe+Message.recv", _obj_mprobe),
                        ("improbe loop+Message.recv", _obj_improbe)):
    def _setup(ctx, receive=_receive):
        comm, peer, obj = ctx.comm, ctx.peer, payload(ctx)
        return pingpong(ctx, lambda: comm.send(obj, peer, TAG), lambda: receive(comm, peer))
    case(_name, "p2p-obj", pairwise=True)(_setup)


# ------------------------------------------------------------- collectives
# Sizes: the bytes each rank contributes per block (Gather, Allgather,
# Alltoall, Reduce_scatter: one block per rank), or the whole buffer (Bcast,
# Reduce, Allreduce, Scan).  Reductions are MPI.SUM over float64.

def collective_args(name, ctx):
    """(args, kwargs) of the blocking buffer collective `name` for this row."""
    MPI, n, rank, nbytes = ctx.MPI, ctx.size, ctx.rank, ctx.nbytes
    root = rank == 0
    buf = ctx.buffer
    if name == "Barrier":
        return (), {}
    if name == "Bcast":
        return (buf(nbytes),), {"root": 0}
    if name == "Gather":
        return (buf(nbytes), buf(nbytes, blocks=n) if root else None), {"root": 0}
    if name == "Gatherv":
        return (buf(nbytes), ctx.vector(n) if root else None), {"root": 0}
    if name == "Scatter":
        return (buf(nbytes, blocks=n) if root else None, buf(nbytes)), {"root": 0}
    if name == "Scatterv":
        return (ctx.vector(n) if root else None, buf(nbytes)), {"root": 0}
    if name == "Allgather":
        return (buf(nbytes), buf(nbytes, blocks=n)), {}
    if name == "Allgatherv":
        return (buf(nbytes), ctx.vector(n)), {}
    if name == "Alltoall":
        return (buf(nbytes, blocks=n), buf(nbytes, blocks=n)), {}
    if name == "Alltoallv":
        return (ctx.vector(n), ctx.vector(n)), {}
    if name == "Alltoallw":
        return (ctx.wvector(n), ctx.wvector(n)), {}
    if name == "Reduce":
        return (buf(nbytes, True), buf(nbytes, True) if root else None), {"op": MPI.SUM,
                                                                          "root": 0}
    if name in ("Allreduce", "Scan", "Exscan"):
        return (buf(nbytes, True), buf(nbytes, True)), {"op": MPI.SUM}
    if name == "Reduce_scatter":
        return (buf(nbytes, True, n), buf(nbytes, True), [ctx.count] * n), {"op": MPI.SUM}
    if name == "Reduce_scatter_block":
        return (buf(nbytes, True, n), buf(nbytes, True)), {"op": MPI.SUM}
    # Neighbourhood collectives on a ring (1-D periodic Cartesian): two neighbours.
    if name == "Neighbor_allgather":
        return (buf(nbytes), buf(nbytes, blocks=2)), {}
    if name == "Neighbor_allgatherv":
        return (buf(nbytes), ctx.vector(2)), {}
    if name == "Neighbor_alltoall":
        return (buf(nbytes, blocks=2), buf(nbytes, blocks=2)), {}
    if name == "Neighbor_alltoallv":
        return (ctx.vector(2), ctx.vector(2)), {}
    if name == "Neighbor_alltoallw":
        return (ctx.wvector(2), ctx.wvector(2)), {}
    raise ValueError(name)


COLLECTIVES = ("Barrier", "Bcast", "Gather", "Gatherv", "Scatter", "Scatterv", "Allgather",
               "Allgatherv", "Alltoall", "Alltoallv", "Alltoallw", "Reduce", "Allreduce",
               "Reduce_scatter", "Reduce_scatter_block", "Scan", "Exscan")
NEIGHBOR_COLLECTIVES = ("Neighbor_allgather", "Neighbor_allgatherv", "Neighbor_alltoall",
                        "Neighbor_alltoallv", "Neighbor_alltoallw")


def ring_of(ctx):
    """The row's communicator as a 1-D periodic Cartesian one (freed afterwards)."""
    cart = ctx.comm.Create_cart([ctx.size], periods=[True], reorder=False)
    ctx.cleanup.append(cart.Free)
    return cart


def collective_setup(name, form, neighbor):
    """setup(ctx) for the blocking, nonblocking ("I") or persistent ("init") form."""
    def setup(ctx):
        comm = ring_of(ctx) if neighbor else ctx.comm
        args, kwargs = collective_args(name, ctx)
        # Nonblocking and persistent requests point into these buffers and
        # count arrays: keep them alive for the whole row.
        ctx.cleanup.append(lambda: (args, kwargs))
        if form == "blocking":
            call = getattr(comm, name)
            if ctx.kind == "view":
                fresh = renewer(args)
                return lambda: call(*fresh(), **kwargs)
            return lambda: call(*args, **kwargs)
        if form == "I":
            start = getattr(comm, "I" + name[0].lower() + name[1:])
            if ctx.kind == "view":
                fresh = renewer(args)
                return lambda: start(*fresh(), **kwargs).Wait()
            return lambda: start(*args, **kwargs).Wait()
        request = getattr(comm, name + "_init")(*args, **kwargs)
        ctx.cleanup.append(request.Free)

        def step():
            request.Start()
            request.Wait()
        return step
    return setup


for _name in COLLECTIVES + NEIGHBOR_COLLECTIVES:
    _neighbor = _name in NEIGHBOR_COLLECTIVES
    _group = "neighbor" if _neighbor else "coll"
    _sized = _name != "Barrier"
    for _form, _label in (("blocking", _name), ("I", "I" + _name[0].lower() + _name[1:]),
                          ("init", _name + "_init")):
        case(_label, _group, sized=_sized)(collective_setup(_name, _form, _neighbor))


# ------------------------------------------ collectives as programs write them

def _added(a, b, datatype):
    """A user-defined sum of float64 (b += a)."""
    import numpy
    inout = numpy.frombuffer(b, dtype="f8")
    inout += numpy.frombuffer(a, dtype="f8")


@case("Allreduce (Op.Create)", "coll", numpy_only=True)
def _allreduce_user_op(ctx):
    import numpy
    op = ctx.MPI.Op.Create(_added, commute=True)
    ctx.cleanup.append(op.Free)
    send, recv = numpy.full(ctx.count, ctx.rank + 1.0), numpy.zeros(ctx.count)
    return lambda: ctx.comm.Allreduce(send, recv, op)


@case("Gatherv [buf, counts]", "coll", numpy_only=True)
def _gatherv_short_spec(ctx):
    import numpy
    send = numpy.full(ctx.count, ctx.rank + 1.0)
    spec = [numpy.zeros(ctx.count * ctx.size), [ctx.count] * ctx.size] if ctx.rank == 0 else None
    return lambda: ctx.comm.Gatherv(send, spec, 0)


@case("Allgatherv [buf, counts]", "coll", numpy_only=True)
def _allgatherv_short_spec(ctx):
    import numpy
    send = numpy.full(ctx.count, ctx.rank + 1.0)
    spec = [numpy.zeros(ctx.count * ctx.size), [ctx.count] * ctx.size]
    return lambda: ctx.comm.Allgatherv(send, spec)


def _relay(ctx, wait):
    """A message passed round all the ranks, each waiting for it with
    `wait(source, buffer)` (a polling loop): rank 0 sends, then waits for
    it to come back."""
    comm, rank, size = ctx.comm, ctx.rank, ctx.size
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    buf = ctx.buffer(ctx.nbytes)

    def step():
        if rank == 0:
            comm.Send(buf, nxt, TAG)
            wait(prv, buf)
        else:
            wait(prv, buf)
            comm.Send(buf, nxt, TAG)
    return step


def _test_loop(request):
    while not request.Test():
        pass


@case("Iprobe loop relay", "p2p", numpy_only=True)
def _iprobe_relay(ctx):
    comm = ctx.comm

    def wait(source, buf):
        while not comm.Iprobe(source, TAG):
            pass
        comm.Recv(buf, source, TAG)
    return _relay(ctx, wait)


@case("Irecv+Test loop relay", "p2p", numpy_only=True)
def _test_relay(ctx):
    comm = ctx.comm
    return _relay(ctx, lambda source, buf: _test_loop(comm.Irecv(buf, source, TAG)))


@case("Ibarrier+Test loop", "coll", sized=False, numpy_only=True)
def _ibarrier_test_loop(ctx):
    comm = ctx.comm
    return lambda: _test_loop(comm.Ibarrier())


@case("Iallreduce+Test loop", "coll", numpy_only=True)
def _iallreduce_test_loop(ctx):
    comm = ctx.comm
    send, recv = ctx.buffer(ctx.nbytes, numeric=True), ctx.buffer(ctx.nbytes, numeric=True)
    return lambda: _test_loop(comm.Iallreduce(send, recv))


@case("sparse exchange (NBX)", "p2p", numpy_only=True)
def _sparse_exchange(ctx):
    """Each rank sends to the next one and the one after (Issend), receives
    what its ANY_SOURCE probes find, and enters an Ibarrier once its sends
    are matched; done when the barrier is (the NBX algorithm).  Tags
    alternate: a rank ahead may send the next round's messages while this
    one still polls."""
    comm, MPI, rank, size = ctx.comm, ctx.MPI, ctx.rank, ctx.size
    dests = sorted({(rank + 1) % size, (rank + 2) % size} - {rank})
    buf, inbox = ctx.buffer(ctx.nbytes), ctx.buffer(ctx.nbytes)
    status = MPI.Status()
    rounds = [0]

    def step():
        tag = TAG + rounds[0] % 2
        rounds[0] += 1
        sends = [comm.Issend(buf, dest, tag) for dest in dests]
        barrier = None
        while True:
            if comm.Iprobe(MPI.ANY_SOURCE, tag, status):
                comm.Recv(inbox, status.Get_source(), tag)
            if barrier is None:
                if MPI.Request.Testall(sends):
                    barrier = comm.Ibarrier()
            elif barrier.Test():
                return
    return step


# ------------------------------------------------ one-sided communication

def window_of(ctx, nbytes):
    """A window made by Win.Allocate with nbytes (at least 8) on every rank,
    freed after the row, and this rank's target: the next rank."""
    win = ctx.MPI.Win.Allocate(max(nbytes, 8), 8, comm=ctx.comm)
    ctx.cleanup.append(win.Free)
    return win, (ctx.rank + 1) % ctx.size


def passive_epoch(ctx, win):
    """Every rank in a Lock_all epoch for the row, as one-sided codes run."""
    win.Lock_all()
    ctx.cleanup.append(win.Unlock_all)


def one_sided(name, sized=True):
    return case(name, "win", sized=sized, numpy_only=True)


def flushed(ctx, buf, move):
    """A row in a Lock_all epoch whose step is move(win, buf, target), then
    Flush(target)."""
    win, target = window_of(ctx, ctx.nbytes)
    passive_epoch(ctx, win)

    def step():
        move(win, buf, target)
        win.Flush(target)
    return step


@one_sided("Win Put+Flush")
def _win_put_flush(ctx):
    import numpy
    return flushed(ctx, numpy.full(ctx.count, ctx.rank + 1.0),
                   lambda win, buf, target: win.Put(buf, target))


@one_sided("Win Get+Flush")
def _win_get_flush(ctx):
    import numpy
    return flushed(ctx, numpy.zeros(ctx.count), lambda win, buf, target: win.Get(buf, target))


@one_sided("Win Accumulate+Flush")
def _win_accumulate_flush(ctx):
    import numpy
    SUM = ctx.MPI.SUM
    return flushed(ctx, numpy.ones(ctx.count),
                   lambda win, buf, target: win.Accumulate(buf, target, op=SUM))


@one_sided("Win Lock/Put/Unlock")
def _win_lock_put(ctx):
    import numpy
    win, target = window_of(ctx, ctx.nbytes)
    buf, EXCLUSIVE = numpy.full(ctx.count, ctx.rank + 1.0), ctx.MPI.LOCK_EXCLUSIVE

    def step():
        win.Lock(target, EXCLUSIVE)
        win.Put(buf, target)
        win.Unlock(target)
    return step


@one_sided("Win Lock/Get/Unlock")
def _win_lock_get(ctx):
    import numpy
    win, target = window_of(ctx, ctx.nbytes)
    buf, SHARED = numpy.zeros(ctx.count), ctx.MPI.LOCK_SHARED

    def step():
        win.Lock(target, SHARED)
        win.Get(buf, target)
        win.Unlock(target)
    return step


@one_sided("Win Lock_all/Get/Unlock_all", sized=False)
def _win_lock_all(ctx):
    import numpy
    win, target = window_of(ctx, 8)
    buf = numpy.zeros(1)

    def step():
        win.Lock_all()
        win.Get(buf, target)
        win.Unlock_all()
    return step


@one_sided("Win Fetch_and_op+Flush", sized=False)
def _win_fetch_and_op(ctx):
    import numpy
    win, target = window_of(ctx, 8)
    passive_epoch(ctx, win)
    one, old, SUM = numpy.ones(1, "i8"), numpy.zeros(1, "i8"), ctx.MPI.SUM

    def step():
        win.Fetch_and_op(one, old, 0, 0, SUM)     # one counter, on rank 0, for all
        win.Flush(0)
    return step


@one_sided("Win Put+Fence")
def _win_fence(ctx):
    import numpy
    win, target = window_of(ctx, ctx.nbytes)
    win.Fence()
    buf = numpy.full(ctx.count, ctx.rank + 1.0)

    def step():
        win.Put(buf, target)
        win.Fence()
    return step


# ------------------------------------------------ collectives of objects

def object_collective_setup(name):
    def setup(ctx):
        import numpy
        neighbor = name.startswith("neighbor")
        comm = ring_of(ctx) if neighbor else ctx.comm
        MPI, n, root = ctx.MPI, ctx.size, ctx.rank == 0
        obj = payload(ctx)
        numbers = numpy.full(ctx.count, ctx.rank + 1.0)
        call = getattr(comm, name)
        if name == "barrier":
            return call
        if name == "bcast":
            return lambda: call(obj if root else None, root=0)
        if name == "gather":
            return lambda: call(obj, root=0)
        if name == "scatter":
            return lambda: call([obj] * n if root else None, root=0)
        if name in ("allgather", "neighbor_allgather"):
            return lambda: call(obj)
        if name == "alltoall":
            return lambda: call([obj] * n)
        if name == "neighbor_alltoall":
            return lambda: call([obj] * 2)
        if name == "reduce":
            return lambda: call(numbers, op=MPI.SUM, root=0)
        if name in ("allreduce", "scan", "exscan"):
            return lambda: call(numbers, op=MPI.SUM)
        raise ValueError(name)
    return setup


OBJECT_COLLECTIVES = ("barrier", "bcast", "gather", "scatter", "allgather", "alltoall",
                      "reduce", "allreduce", "scan", "exscan", "neighbor_allgather",
                      "neighbor_alltoall")
for _name in OBJECT_COLLECTIVES:
    case(_name, "coll-obj", sized=_name != "barrier")(object_collective_setup(_name))


def applies(call, kind, nranks):
    """Whether the row (call, kind) runs on a communicator of nranks."""
    entry = CASES[call]
    if entry.pairwise and nranks != 2:
        return False
    if entry.numpy_only:
        return kind == "numpy"
    if kind == "view":
        return call in VIEW_CALLS or (entry.group in ("coll", "neighbor")
                                      and not call.endswith("_init") and call != "Barrier"
                                      and not call.startswith("Ibarrier"))
    return kind == "numpy" or call in KIND_CALLS


# ---------------------------------------------------------------- timing

class Timer:
    def __init__(self, control, MPI_LIB, target, repeats):
        self.control, self.MAX = control, MPI_LIB.MAX
        self.target, self.repeats = target, repeats

    def block(self, step, count):
        """Seconds for `count` iterations on the slowest rank."""
        self.control.Barrier()
        start = time.perf_counter()
        for _ in range(count):
            step()
        elapsed = time.perf_counter() - start
        return self.control.allreduce(elapsed, op=self.MAX)

    def measure(self, step):
        """(iterations per block, [seconds per iteration for each timed block])."""
        step()                                    # warm-up: first-touch, lazy set-up
        count = 1
        while True:
            elapsed = self.block(step, count)
            if elapsed >= self.target / 2 or count >= MAX_COUNT:
                break
            # Every rank sees the same slowest time, so all grow the count alike.
            growth = self.target / max(elapsed, 1e-9)
            count = min(MAX_COUNT, max(count * 2, int(count * min(growth, 100))))
        return count, [self.block(step, count) / count for _ in range(self.repeats)]


def error_prefix(call, kind, nbytes):
    """How a rank's error line on stderr names its row."""
    return f"{call} [{kind}] {nbytes}: "


def row_error(exc):
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:300]


def run_rows(comm, MPI, control, MPI_LIB, plan, progress, target, repeats):
    rank = comm.Get_rank()
    timer = Timer(control, MPI_LIB, target, repeats)
    for call, kind, nbytes in plan:
        key = [call, kind, nbytes]
        if rank == 0:
            progress.write(json.dumps({"start": key}) + "\n")
            progress.flush()
        ctx = Context(comm, MPI, nbytes, kind)
        error = count = times = None
        try:
            control.Barrier()
            step = CASES[call].setup(ctx)
            control.Barrier()
            count, times = timer.measure(step)
        except Exception as exc:
            error = row_error(exc)
            print(f"sweep-error: {error_prefix(call, kind, nbytes)}rank {rank}: {error}",
                  file=sys.stderr, flush=True)
        for undo in reversed(ctx.cleanup):
            try:
                undo()
            except Exception as exc:
                error = error or f"cleanup: {row_error(exc)}"
        errors = control.allgather(error)
        if rank == 0:
            found = [f"rank {r}: {e}" for r, e in enumerate(errors) if e]
            line = {"row": key, "error": "; ".join(found)} if found else \
                {"row": key, "count": count, "times": times}
            progress.write(json.dumps(line) + "\n")
            progress.flush()
        if any(errors):
            # A failed call may leave messages or requests in flight that would
            # disturb the next rows: stop; the driver starts a fresh job for the rest.
            return 3
    return 0


def serve_rows(comm, MPI, control, MPI_LIB, directory, target, repeats):
    """Run the rows that come through this rank's command FIFO, one at a
    time, until a null: between rows the rank waits in a blocking read,
    using no CPU while other jobs run theirs."""
    rank = comm.Get_rank()
    progress = open(os.path.join(directory, "results"), "w") if rank == 0 else None
    try:
        with open(os.path.join(directory, f"command-{rank}")) as commands:
            for line in commands:
                row = json.loads(line)
                if row is None:
                    return 0
                status = run_rows(comm, MPI, control, MPI_LIB, [row], progress, target,
                                  repeats)
                if status:
                    return status
    finally:
        if progress:
            progress.close()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ivmpi.sweepworker",
                                     description="Time the rows the sweep sends (run under mpirun).")
    parser.add_argument("--transport", choices=("ivmpi", "mpi4py"), required=True)
    parser.add_argument("--serve", metavar="DIR", required=True,
                        help="rows one at a time: rank r reads JSON rows from the FIFO "
                             "DIR/command-r (null: stop), rank 0 writes progress lines to "
                             "the FIFO DIR/results (ivmpi.benchsweep.ServingJob)")
    parser.add_argument("--target", type=float, default=0.003,
                        help="seconds a timed block should take (default 0.003)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per row")
    options = parser.parse_args(argv)
    from .bench import load_mpi
    MPI = load_mpi(options.transport)
    from .lib import MPI as MPI_LIB
    control = MPI_LIB.COMM_WORLD.Dup()
    comm = MPI.COMM_WORLD
    status = serve_rows(comm, MPI, control, MPI_LIB, options.serve, options.target,
                        options.repeats)
    if status:
        sys.stderr.flush()
        os._exit(status)      # no finalize: a communicator may be left mid-message
    control.Free()
    return 0


if __name__ == "__main__":
    sys.exit(main())
