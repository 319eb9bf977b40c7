"""One rank of the mpirun-across-guests job: ivmpi over the ivshmem region.

mpirun starts it in two guests joined by a virtual network.  It moves
PAYLOAD bytes each way with ivmpi, checks them, and reports how many bytes
crossed its guest's network interface meanwhile (the kernel's eth0
counters): the data must have gone through the region, not the network.
"""
import os
import socket

import numpy as np

os.environ.setdefault("IVMPI_REGION", "pci")
from ivmpi import MPI  # noqa: E402

PAYLOAD = 16 << 20


def network_bytes():
    total = 0
    for counter in ("rx_bytes", "tx_bytes"):
        with open(f"/sys/class/net/eth0/statistics/{counter}") as f:
            total += int(f.read())
    return total


def main():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    assert size == 2, size
    host = socket.gethostname()
    assert host == f"guest{rank}", (host, rank)  # one rank per guest
    want = np.frombuffer(np.random.default_rng(4242).bytes(PAYLOAD), dtype=np.uint8)
    got = np.empty_like(want)
    comm.Barrier()
    before = network_bytes()
    if rank == 0:
        comm.Send(want, dest=1, tag=1)
        comm.Recv(got, source=1, tag=2)
    else:
        comm.Recv(got, source=0, tag=1)
        comm.Send(got, dest=0, tag=2)
    comm.Barrier()
    crossed = network_bytes() - before
    if not np.array_equal(got, want):
        raise SystemExit(f"rank {rank}: payload differs at byte "
                         f"{int(np.flatnonzero(got != want)[0])}")
    print(f"PAYLOAD-OK rank={rank} host={host} moved={2 * PAYLOAD} network_bytes={crossed}",
          flush=True)


if __name__ == "__main__":
    main()
