"""Topologies in standalone mode (IVMPI_RANK/IVMPI_SIZE, no launcher): ivmpi
answers the queries itself and moves a Cartesian halo exchange (Shift and
Sendrecv) and the neighbourhood collectives through the region, where the
MPI library underneath spans one process only."""
import json
import os
import subprocess
import sys
import textwrap

from ivmpi.region import Region

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 3

WORKER = textwrap.dedent("""
    import json
    import numpy as np
    import mpi4py.MPI as real
    import ivmpi.stats
    from ivmpi import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    cart = comm.Create_cart([size], [True])
    left, right = cart.Shift(0, 1)
    before = ivmpi.stats.total(cart)

    # Halo exchange: interior cells hold the rank, one ghost cell each side.
    field = np.full(6, float(rank))
    field[0] = field[-1] = -1.0
    cart.Sendrecv(field[-2:-1], right, 0, field[:1], left, 0)
    cart.Sendrecv(field[1:2], left, 1, field[-1:], right, 1)

    send = np.array([10 * rank, 10 * rank + 1], "i4")
    blocking = np.full(2, -1, "i4")
    cart.Neighbor_alltoall(send, blocking)
    nonblocking = np.full(2, -1, "i4")
    cart.Ineighbor_alltoall(send, nonblocking).Wait()
    persistent = np.full(2, -1, "i4")
    request = cart.Neighbor_alltoall_init(send, persistent)
    request.Start()
    request.Wait()
    request.Free()

    # A line (not periodic): the ends have PROC_NULL neighbours, whose blocks stay.
    line = comm.Create_cart([size, 1], [False, True])
    gathered = np.full((4, 1), -1, "i4")
    line.Neighbor_allgather(np.array([rank], "i4"), gathered)

    sub = line.Sub([True, False])
    dup = cart.Dup()
    report = {
        "is_mpi4py": isinstance(cart, real.Cartcomm), "is_cart": cart.Get_topology() == MPI.CART,
        "topo": cart.Get_topo(), "shift": [left, right], "ghosts": [field[0], field[-1]],
        "blocking": blocking.tolist(), "nonblocking": nonblocking.tolist(),
        "persistent": persistent.tolist(), "gathered": gathered.ravel().tolist(),
        "line_edges": line.inedges, "objects": cart.neighbor_allgather(("rank", rank)),
        "sub": [sub.size, sub.rank, sub.Get_topo()], "dup": [type(dup).__name__, dup.Get_topo()],
        "graph": comm.Create_dist_graph_adjacent([left], [right]).neighbor_alltoall([rank]),
        "moved": ivmpi.stats.total(cart)["written"] - before["written"],
    }
    print(json.dumps(report))
""")


def test_standalone_cartesian_halo_and_neighbour_collectives(tmp_path):
    path = str(tmp_path / "region")
    Region.create(path, size=16 << 20).close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for rank in range(SIZE):
        env = dict(os.environ, IVMPI_RANK=str(rank), IVMPI_SIZE=str(SIZE), IVMPI_REGION=path,
                   IVMPI_TIMEOUT="60", PYTHONPATH=ROOT)
        env.pop("IVMPI_MPI4PY", None)
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for rank, report in enumerate(reports):
        left, right = (rank - 1) % SIZE, (rank + 1) % SIZE
        assert report["is_mpi4py"] and report["is_cart"]
        assert report["topo"] == [[SIZE], [1], [rank]]
        assert report["shift"] == [left, right]
        assert report["ghosts"] == [left, right]
        # From the left comes what it sent toward +1 (its block 1), and back.
        expected = [10 * left + 1, 10 * right]
        assert report["blocking"] == report["nonblocking"] == report["persistent"] == expected
        below = rank - 1 if rank > 0 else -1
        above = rank + 1 if rank < SIZE - 1 else -1
        assert report["gathered"] == [below, above, rank, rank]
        assert report["line_edges"][2:] == [rank, rank]
        assert report["objects"] == [["rank", left], ["rank", right]]
        assert report["sub"] == [SIZE, rank, [[SIZE], [0], [rank]]]
        assert report["dup"] == ["Cartcomm", [[SIZE], [1], [rank]]]
        assert report["graph"] == [left]
        assert report["moved"] > 0
