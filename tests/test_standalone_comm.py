"""Communicators in standalone mode (IVMPI_RANK/IVMPI_SIZE, no launcher):
still mpi4py communicators, with a handle good for local uses only, and a
clear error for the calls ivmpi leaves to an MPI library that does not span
the job."""
import textwrap

import pytest

from standalone_job import run_standalone

WORKER = textwrap.dedent("""
    import json
    import mpi4py.MPI as real
    from ivmpi import MPI
    comm = MPI.COMM_WORLD
    dup = comm.Dup()
    report = {"is_mpi4py": isinstance(dup, real.Intracomm), "rank": dup.rank, "size": dup.size,
              "sum": dup.allreduce(dup.rank + 1),
              "group_size": dup.Get_group().Get_size(),
              "pack_size": real.DOUBLE.Pack_size(3, dup)}
    # A one-rank communicator needs no other process: its file opens.
    fh = MPI.File.Open(MPI.COMM_SELF, "/dev/null", MPI.MODE_RDONLY)
    report["self_file"] = isinstance(fh, real.File)
    fh.Close()
    for call in (lambda: dup.Create_intercomm(0, dup, 0),
                 lambda: dup.Spawn("python"),
                 lambda: MPI.File.Open(dup, "/dev/null", MPI.MODE_RDONLY)):
        try:
            call()
            report.setdefault("refused", []).append(None)
        except real.Exception as exc:
            report.setdefault("refused", []).append(str(exc))
    dup.Free()
    print(json.dumps(report))
""")


def test_standalone_communicators_refuse_what_needs_a_launcher(tmp_path):
    reports = run_standalone(tmp_path, WORKER, 2)
    for rank, report in enumerate(reports):
        assert report["is_mpi4py"]
        assert (report["rank"], report["size"], report["sum"]) == (rank, 2, 3)
        assert report["group_size"] == 2
        assert report["pack_size"] == 24
        assert report["self_file"]
        assert len(report["refused"]) == 3
        for message in report["refused"]:
            assert message is not None and "standalone mode" in message


HOLES_WORKER = textwrap.dedent("""
    import json
    import numpy as np
    from ivmpi import MPI
    comm = MPI.COMM_WORLD
    rank, other = comm.rank, 1 - comm.rank
    column = MPI.DOUBLE.Create_vector(256, 1, 256).Create_resized(0, 8).Commit()
    face = MPI.DOUBLE.Create_subarray([48, 48, 48], [48, 48, 1], [0, 0, 47]).Commit()
    fields = MPI.Datatype.Create_struct([3, 1], [1, 13], [MPI.BYTE, MPI.INT16_T])
    mixed = fields.Create_resized(0, 16).Commit()
    grid = np.arange(256 * 256, dtype="f8").reshape(256, 256) + 1e6 * rank
    cube = np.arange(48 ** 3, dtype="f8").reshape(48, 48, 48) + 1e6 * rank
    raw = (np.arange(64 * 16, dtype="u1") + rank).reshape(64, 16)
    report = {}
    out = np.full_like(grid, -1)
    comm.Sendrecv([grid, (1, 1), column], other, 1, [out, (1, 7), column], other, 1)
    report["column"] = bool((out[:, 7] == grid[:, 1] + 1e6 * (other - rank)).all()
                            and (np.delete(out, 7, axis=1) == -1).all())
    out = np.full_like(cube, -1)
    comm.Sendrecv([cube, 1, face], other, 2, [out, 1, face], other, 2)
    report["face"] = bool((out[..., 47] == cube[..., 47] + 1e6 * (other - rank)).all()
                          and (out[..., :47] == -1).all())
    got = np.zeros_like(raw)
    comm.Sendrecv([raw, 64, mixed], other, 3, [got, 64, mixed], other, 3)
    theirs = (np.arange(64 * 16, dtype="u1") + other).reshape(64, 16)
    picked = [1, 2, 3, 13, 14]
    report["struct"] = bool((got[:, picked] == theirs[:, picked]).all()
                            and (np.delete(got, picked, axis=1) == 0).all())
    print(json.dumps(report))
""")


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict-align"])
def test_standalone_sends_with_holes(tmp_path, strict):
    """Derived datatypes with holes (gathered into and scattered out of the
    ring by the fast paths, odd offsets included) arrive intact, also when
    every region access must be aligned."""
    for report in run_standalone(tmp_path, HOLES_WORKER, 2, strict=strict, region_bytes=16 << 20):
        assert report == {"column": True, "face": True, "struct": True}
