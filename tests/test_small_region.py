"""A 1 GiB message through a region of 4 MiB: rendezvous streams it through
rings of a few hundred KiB, whatever the message size."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = textwrap.dedent("""
    import hashlib
    import numpy as np
    from ivmpi import MPI
    comm = MPI.COMM_WORLD
    geo = comm._engine.geo
    n = 1 << 30
    if comm.rank == 0:
        data = np.frombuffer(np.random.default_rng(5).bytes(1 << 20), np.uint8)
        data = np.tile(data, n >> 20)
        data[::4097] = np.arange(len(data[::4097]), dtype=np.uint64).astype(np.uint8)
        comm.Send(data, 1, 9)
        comm.send(hashlib.sha256(data).hexdigest(), 1, 10)
    else:
        got = np.empty(n, np.uint8)
        status = MPI.Status()
        comm.Recv(got, 0, 9, status)
        assert status.Get_count(MPI.BYTE) == n
        assert hashlib.sha256(got).hexdigest() == comm.recv(source=0, tag=10)
        print(f"ok: 1 GiB through a region of {geo.region_size} bytes, "
              f"rings of {geo.ring_bytes} bytes", flush=True)
""")


def test_one_gib_through_a_four_mib_region(tmp_path):
    script = tmp_path / "big.py"
    script.write_text(PROGRAM)
    env = dict(os.environ, IVMPI_REGION_SIZE="4M", IVMPI_TIMEOUT="120",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    proc = subprocess.run([mpirun, "--oversubscribe", "-n", "2", sys.executable, str(script)],
                          env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith("ok:")]
    assert line, proc.stdout + proc.stderr
    # The region really was small: 4 MiB, rings well under a MiB.
    assert "region of 4194304 bytes" in line[0]
    ring = int(line[0].split("rings of ")[1].split()[0])
    assert ring <= 1 << 20
