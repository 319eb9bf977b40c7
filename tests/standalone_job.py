"""Running a job in standalone mode (IVMPI_RANK/IVMPI_SIZE, no launcher)
for the single-process tests: each rank a subprocess on one region file,
each printing one JSON report as its last line."""
import json
import os
import subprocess
import sys

from ivmpi.region import Region

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_standalone(tmp_path, worker, size, strict=False, region_bytes=8 << 20, timeout=120,
                   **env_extra):
    """The reports of `size` ranks running the Python source `worker`."""
    path = str(tmp_path / "region")
    Region.create(path, size=region_bytes).close()
    script = tmp_path / "worker.py"
    script.write_text(worker)
    procs = []
    for rank in range(size):
        env = dict(os.environ, IVMPI_RANK=str(rank), IVMPI_SIZE=str(size), IVMPI_REGION=path,
                   IVMPI_TIMEOUT="60", IVMPI_STRICT_ALIGN="1" if strict else "0",
                   PYTHONPATH=ROOT, **env_extra)
        env.pop("IVMPI_MPI4PY", None)
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports
