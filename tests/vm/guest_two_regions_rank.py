"""One rank of a job spanning two regions: two hosts' worth of memory.

mpirun starts it once in each of three guests joined by a virtual network:
guest0 and guest1 share one ivshmem file (region A), guest2 has another
(region B).  So ranks 0 and 1 form a node group and talk through region A;
every pair with rank 2 goes through the MPI library, over the network.

Each rank checks the groups and ivmpi.path_to for every peer, exchanges data
with every peer (point-to-point both ways, ANY_SOURCE, collectives on the
world and on its node group, all compared with the values expected), then
checks ivmpi.stats.paths: the peer of its group has ring traffic and no
library message, a peer of the other group has no ring and exactly the
library messages and bytes sent to and taken from it.  It reports the bytes
its eth0 carried while only the group's pair moved data (far fewer than the
payload) and while the other group's were moved too (at least their
payload).  Exits non-zero on any mismatch.

Also runs on one machine, the guests simulated by region files:

    mpirun -n 3 scripts/simulate-hosts 2+1 python tests/vm/guest_two_regions_rank.py
"""
import os
import socket
import sys
import time

import numpy as np

os.environ.setdefault("IVMPI_REGION", "pci")
import ivmpi  # noqa: E402
from ivmpi import MPI, hierarchy, stats  # noqa: E402

GROUPS = [[0, 1], [2]]
IN_GROUP_PAYLOAD = 8 << 20          # each way between ranks 0 and 1
# Eager, larger than the eager limit, several ring chunks.
SIZES = (8, 100_000, 1_500_000)


def payload(src, dst, tag, nbytes):
    return (np.arange(nbytes, dtype=np.int64) * 7 + src * 1000003 + dst * 101 + tag).astype(
        np.uint8)


def network_bytes():
    total = 0
    for counter in ("rx_bytes", "tx_bytes"):
        try:
            with open(f"/sys/class/net/eth0/statistics/{counter}") as f:
                total += int(f.read())
        except FileNotFoundError:   # a simulated host may have no eth0
            return 0
    return total


_START = time.monotonic()


def stage(what):
    """A progress line on stderr (the console), to see where a slow or hung run is."""
    print(f"rank {MPI.COMM_WORLD.Get_rank()}: {time.monotonic() - _START:6.1f} s {what}",
          file=sys.stderr, flush=True)


def check(ok, what):
    if not ok:
        raise SystemExit(f"rank {MPI.COMM_WORLD.Get_rank()}: {what}")


class Exchange:
    """Point-to-point between every pair, counting what each peer was sent
    and received (messages, bytes), as stats.paths counts the library's."""

    def __init__(self, comm):
        self.comm = comm
        self.sent = {p: [0, 0] for p in range(comm.size) if p != comm.rank}
        self.received = {p: [0, 0] for p in range(comm.size) if p != comm.rank}

    def _note(self, table, peer, nbytes):
        table[peer][0] += 1
        table[peer][1] += nbytes

    def every_pair(self, nbytes, tag):
        """Round k: send to rank+k, receive from rank-k (both paths mix in a round)."""
        comm = self.comm
        for k in range(1, comm.size):
            dst, src = (comm.rank + k) % comm.size, (comm.rank - k) % comm.size
            got = np.empty(nbytes, np.uint8)
            rreq = comm.Irecv(got, src, tag)
            sreq = comm.Isend(payload(comm.rank, dst, tag, nbytes), dst, tag)
            status = MPI.Status()
            rreq.Wait(status)
            sreq.Wait()
            check(status.Get_source() == src and status.Get_tag() == tag
                  and status.Get_count(MPI.BYTE) == nbytes,
                  f"status of {nbytes} bytes from {src}: source {status.Get_source()} "
                  f"tag {status.Get_tag()} count {status.Get_count(MPI.BYTE)}")
            check(np.array_equal(got, payload(src, comm.rank, tag, nbytes)),
                  f"{nbytes} bytes from rank {src} differ")
            self._note(self.sent, dst, nbytes)
            self._note(self.received, src, nbytes)

    def blocking_both_ways(self, nbytes, tag):
        """Blocking Send/Recv with each peer, the lower rank sending first."""
        comm = self.comm
        for peer in self.sent:
            got = np.empty(nbytes, np.uint8)
            out = payload(comm.rank, peer, tag, nbytes)
            if comm.rank < peer:
                comm.Send(out, peer, tag)
                comm.Recv(got, peer, tag)
            else:
                comm.Recv(got, peer, tag)
                comm.Send(out, peer, tag)
            check(np.array_equal(got, payload(peer, comm.rank, tag, nbytes)),
                  f"blocking {nbytes} bytes from rank {peer} differ")
            self._note(self.sent, peer, nbytes)
            self._note(self.received, peer, nbytes)

    def any_source(self, tag):
        """Every rank sends to every other; each takes them with ANY_SOURCE.
        Each sender's message has its own length, so a mix-up shows."""
        comm = self.comm
        length = lambda src: 3000 + 1000 * src  # noqa: E731
        sends = [comm.Isend(payload(comm.rank, p, tag, length(comm.rank)), p, tag)
                 for p in self.sent]
        seen = []
        buf = np.empty(length(comm.size), np.uint8)
        for _ in self.sent:
            status = MPI.Status()
            comm.Recv(buf, MPI.ANY_SOURCE, tag, status)
            src, count = status.Get_source(), status.Get_count(MPI.BYTE)
            check(src in self.sent and count == length(src),
                  f"ANY_SOURCE receive: source {src}, {count} bytes")
            check(np.array_equal(buf[:count], payload(src, comm.rank, tag, count)),
                  f"ANY_SOURCE message from rank {src} differs")
            seen.append(src)
            self._note(self.received, src, count)
        MPI.Request.Waitall(sends)
        for p in self.sent:
            self._note(self.sent, p, length(comm.rank))
        check(sorted(seen) == sorted(self.sent), f"ANY_SOURCE saw {seen}")


def collectives(comm, node):
    """Allreduce and Bcast on the world (the library's, across groups) and on
    the node group (the region's), against values computed here."""
    n = 100_000
    base = np.arange(n, dtype=np.float64)
    total = np.empty(n)
    comm.Allreduce(base * (comm.rank + 1), total, op=MPI.SUM)
    check(np.array_equal(total, base * sum(r + 1 for r in range(comm.size))),
          "Allreduce(SUM) on the world differs")
    top = np.empty(n, np.int64)
    comm.Allreduce(np.full(n, comm.rank * 10, np.int64), top, op=MPI.MAX)
    check((top == (comm.size - 1) * 10).all(), "Allreduce(MAX) on the world differs")
    for root in range(comm.size):
        buf = payload(root, 99, root, 1_000_000) if comm.rank == root \
            else np.zeros(1_000_000, np.uint8)
        comm.Bcast(buf, root=root)
        check(np.array_equal(buf, payload(root, 99, root, 1_000_000)),
              f"Bcast from rank {root} differs")
    check(comm.allgather(("rank", comm.rank)) == [("rank", r) for r in range(comm.size)],
          "allgather of objects differs")
    members = [r for g in GROUPS if comm.rank in g for r in g]
    mine = np.empty(n)
    node.Allreduce(base * (comm.rank + 1), mine, op=MPI.SUM)
    check(np.array_equal(mine, base * sum(r + 1 for r in members)),
          "Allreduce on the node group differs")
    word = node.bcast(("from", members[0]) if node.rank == 0 else None, root=0)
    check(word == ("from", members[0]), f"bcast on the node group gave {word}")


def main():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    check(size == 3, f"{size} ranks, expected 3")
    host = socket.gethostname()
    if "IVMPI_SIMULATED_HOSTS" not in os.environ:
        check(host == f"guest{rank}", f"runs on {host}")      # one rank per guest
    group = next(g for g in GROUPS if rank in g)

    stage("started")
    # Who shares what: found from the regions' identity words at start-up.
    check(ivmpi.node_groups() == GROUPS, f"node groups {ivmpi.node_groups()}")
    paths = {p: ivmpi.path_to(comm, p) for p in range(size)}
    check(paths == {p: "self" if p == rank else "region" if p in group else "mpi"
                    for p in range(size)}, f"paths {paths}")
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    check(node.allgather(rank) == group, "Split_type(COMM_TYPE_SHARED) is not the group")
    check(all(ivmpi.path_to(node, r) in ("self", "region") for r in range(node.size)),
          "the node group's communicator leaves the region")

    stage("groups and paths checked")
    # The group's pair alone moves data: it must not cross the network.
    exchange = Exchange(comm)
    comm.Barrier()
    before = network_bytes()
    if rank in (0, 1):
        peer = 1 - rank
        got = np.empty(IN_GROUP_PAYLOAD, np.uint8)
        rreq = comm.Irecv(got, peer, 1)
        comm.Send(payload(rank, peer, 1, IN_GROUP_PAYLOAD), peer, 1)
        rreq.Wait()
        check(np.array_equal(got, payload(peer, rank, 1, IN_GROUP_PAYLOAD)),
              f"the {IN_GROUP_PAYLOAD} bytes from rank {peer} differ")
        exchange._note(exchange.sent, peer, IN_GROUP_PAYLOAD)
        exchange._note(exchange.received, peer, IN_GROUP_PAYLOAD)
    comm.Barrier()
    in_group_network = network_bytes() - before
    in_group_moved = 2 * IN_GROUP_PAYLOAD if rank in (0, 1) else 0

    stage("in-group payload moved")
    # Every pair: the library carries the other group's share over the network.
    before = network_bytes()
    for i, nbytes in enumerate(SIZES):
        exchange.every_pair(nbytes, 10 + i)
        exchange.blocking_both_ways(nbytes, 20 + i)
    exchange.any_source(30)
    comm.Barrier()
    cross_network = network_bytes() - before
    others = [p for p in range(size) if p not in group]
    cross_moved = sum(exchange.sent[p][1] + exchange.received[p][1] for p in others)

    stage("point-to-point with every peer done")
    collectives(comm, node)
    comm.Barrier()
    # Guests have a kernel each: the world's collectives took two levels
    # (on simulated hosts, one kernel, the library's flat call).
    two = hierarchy.stats(comm)["two_level"]
    if "IVMPI_SIMULATED_HOSTS" in os.environ:
        check(not two, f"two-level collectives on one kernel: {two}")
    else:
        check(two.get("Allreduce", 0) == 2 and two.get("Bcast", 0) == size,
              f"the collectives across guests were not two-level: {two}")
    stage("collectives done")

    # The counters: which path each peer's traffic took.
    for peer, entry in stats.paths(comm).items():
        sent, received = exchange.sent[peer], exchange.received[peer]
        if peer in group:
            check(entry["path"] == "region", f"peer {peer}: {entry}")
            check((entry["mpi"]["sent"], entry["mpi"]["received"]) == ([0, 0], [0, 0]),
                  f"in-group peer {peer} used the library: {entry}")
            ring = entry["region"]
            check(ring is not None and ring["written"] >= sent[1]
                  and ring["read"] >= received[1],
                  f"in-group peer {peer}: rings {ring} for {sent[1]} bytes sent, "
                  f"{received[1]} received")
        else:
            check(entry["path"] == "mpi", f"peer {peer}: {entry}")
            check(entry["region"] is None, f"other-group peer {peer} has a ring: {entry}")
            check((entry["mpi"]["sent"], entry["mpi"]["received"]) == (sent, received),
                  f"other-group peer {peer}: library counted {entry['mpi']}, sent {sent} "
                  f"received {received}")
    node.Free()
    print(f"TWO-REGIONS-OK rank={rank} host={host} group={'+'.join(map(str, group))} "
          f"paths={','.join(paths[p] for p in range(size))} "
          f"in_group_moved={in_group_moved} in_group_network={in_group_network} "
          f"cross_moved={cross_moved} cross_network={cross_network}", flush=True)


if __name__ == "__main__":
    main()
