"""An mpi4py program that knows nothing of ivmpi: ping-pong, a bcast, an allreduce.

It never says `from ivmpi import MPI`, yet its messages go through the
region when it is started in any of these ways:

    mpirun -n 2 python -m ivmpi examples/unmodified.py
    IVMPI_MPI4PY=1 mpirun -n 2 python examples/unmodified.py
    mpirun -n 2 python examples/unmodified.py      (plain mpi4py, for comparison)

Rank 0 prints one line naming the class of COMM_WORLD, which says whose
communicator carried the messages.
"""
import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
assert size >= 2, "run with at least 2 ranks"

# Ping-pong between ranks 0 and 1: a numpy buffer and a Python object.
ROUNDS = 100
buf = np.zeros(1024, dtype="f8")
for i in range(ROUNDS):
    if rank == 0:
        buf[:] = i
        comm.Send(buf, dest=1, tag=1)
        comm.Recv(buf, source=1, tag=2)
        assert (buf == i + 1).all(), "ping-pong: wrong data back"
        comm.send({"round": i}, dest=1, tag=3)
        assert comm.recv(source=1, tag=4) == {"round": i, "back": True}
    elif rank == 1:
        comm.Recv(buf, source=0, tag=1)
        buf += 1
        comm.Send(buf, dest=0, tag=2)
        msg = comm.recv(source=0, tag=3)
        comm.send(dict(msg, back=True), dest=0, tag=4)

# A bcast of an object from the last rank, and an allreduce of the ranks.
config = comm.bcast({"root": size - 1, "steps": [1, 2, 3]} if rank == size - 1 else None,
                    root=size - 1)
assert config == {"root": size - 1, "steps": [1, 2, 3]}
total = comm.allreduce(rank, op=MPI.SUM)
assert total == size * (size - 1) // 2
vector = np.full(8, rank + 1.0)
comm.Allreduce(MPI.IN_PLACE, vector, op=MPI.SUM)
assert (vector == size * (size + 1) / 2).all()

kind = type(comm)
if rank == 0:
    print(f"unmodified: {size} ranks, COMM_WORLD is {kind.__module__}.{kind.__qualname__}, "
          f"{ROUNDS} ping-pongs, bcast and allreduce verified")
