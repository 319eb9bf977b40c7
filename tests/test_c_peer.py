"""docs/layout.md is enough to write a peer: a C program written from it
alone (examples/c_peer/ivmpi_echo.c) joins a standalone job as rank 1 and
echoes what rank 0, ivmpi in Python, sends: every size up to the eager
limit, enough bytes to wrap the ring several times, many messages in
flight, pickled objects."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ivmpi.region import Region

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "examples", "c_peer", "ivmpi_echo.c")
CC = shutil.which("cc") or shutil.which("gcc")

DRIVER = textwrap.dedent("""
    import numpy as np
    from ivmpi import MPI

    comm = MPI.COMM_WORLD
    assert comm.Get_size() == 2 and comm.Get_rank() == 0
    limit = comm._engine.eager_limit
    ring = comm._engine.geo.ring_bytes
    rng = np.random.default_rng(7)
    sizes = [0, 1, 7, 8, 9, 31, 32, 33, 1000, 4095, 4096, limit - 1, limit]
    while sum(sizes) < 3 * ring:
        sizes.append(int(rng.integers(0, limit + 1)))
    for tag, n in enumerate(sizes):            # one at a time
        data = rng.integers(0, 256, n, dtype=np.uint8)
        comm.Send(data, 1, tag)
        back = np.zeros(n, np.uint8)
        status = MPI.Status()
        comm.Recv(back, 1, tag, status)
        assert np.array_equal(back, data), n
        assert (status.Get_source(), status.Get_tag(), status.Get_count(MPI.BYTE)) == (1, tag, n)
    batch = [rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8) for _ in range(50)]
    for k, data in enumerate(batch):           # many in flight
        comm.Send(data, 1, 1000 + k)
    for k, data in enumerate(batch):
        back = np.zeros(len(data), np.uint8)
        comm.Recv(back, 1, 1000 + k)
        assert np.array_equal(back, data), k
    obj = {"ok": [1, 2.5, "x"], "n": None}
    comm.send(obj, 1, tag=2000)
    assert comm.recv(source=1, tag=2000) == obj
    comm.Send(b"", 1, 999)
    comm.Recv(bytearray(0), 1, 999)
    pickled = len(MPI.pickle.dumps(obj))
    print("messages", len(sizes) + len(batch) + 2,
          "bytes", sum(sizes) + sum(map(len, batch)) + pickled)
""")


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_a_peer_written_in_c_from_the_layout_document(tmp_path):
    exe = tmp_path / "ivmpi_echo"
    build = subprocess.run([CC, "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(exe),
                            SOURCE], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    region = tmp_path / "region"
    Region.create(str(region), 8 << 20).close()
    env = dict(os.environ, IVMPI_REGION=str(region), IVMPI_RANK="0", IVMPI_SIZE="2",
               IVMPI_TIMEOUT="60", IVMPI_START_TIMEOUT="60", IVMPI_OVERSUBSCRIBED="1",
               IVMPI_SYSFS_ROOT=str(tmp_path / "sys"),
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    peer = subprocess.Popen([str(exe), str(region), "1", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        driver = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True,
                                text=True, timeout=120)
        out, err = peer.communicate(timeout=60)
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    assert driver.returncode == 0, driver.stderr
    assert peer.returncode == 0, err
    _, messages, _, nbytes = driver.stdout.split()
    assert out.strip() == f"ivmpi_echo: rank 1 echoed {messages} messages, {nbytes} bytes"
