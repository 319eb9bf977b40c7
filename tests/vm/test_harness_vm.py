"""The harness itself: exit codes, output, environment, timeouts, the command line."""
import os
import subprocess
import sys
import time

import pytest

from ivmpi import vm
from ivmpi.errors import IvmpiTimeoutError

from vmhelpers import GUEST_TIMEOUT, describe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_exit_code_output_env_and_hung_guest(vm_ready, tmp_path):
    """Two guests at once: one reports back, the other hangs and is killed."""
    script = ('echo "var=$IVMPI_TEST_VAR cwd=$(pwd) python=$(command -v python)"; '
              'python -c "import ivmpi, sys; print(\'import-ok\', ivmpi.__file__)"; '
              'echo written-in-guest > "$IVMPI_VM_JOBDIR/result.txt"; exit 3')
    worker = vm.Guest(["sh", "-c", script], env={"IVMPI_TEST_VAR": "a b'c"}, cwd=ROOT,
                      name="worker", jobdir=str(tmp_path / "worker")).start()
    hung = vm.Guest(["sh", "-c", "echo about-to-hang; sleep 1000"], name="hung",
                    jobdir=str(tmp_path / "hung")).start()
    try:
        [result] = vm.wait_guests([worker], GUEST_TIMEOUT)
        deadline = time.monotonic() + GUEST_TIMEOUT
        while "about-to-hang" not in hung.console and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(IvmpiTimeoutError) as err:
            vm.wait_guests([hung], 2.0)
    finally:
        worker.kill()
        hung.kill()
    assert result.returncode == 3, describe([result])
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    assert f"var=a b'c cwd={ROOT} python={venv_python}" in result.output, describe([result])
    assert f"import-ok {ROOT}/ivmpi/__init__.py" in result.output, describe([result])
    assert (tmp_path / "worker" / "result.txt").read_text() == "written-in-guest\n"
    # The timeout error names the guest and carries what its console showed.
    assert "guest(s) hung did not finish" in str(err.value)
    assert "about-to-hang" in str(err.value)
    assert hung.poll() is not None


def test_command_line_runs_ranks_in_guests(vm_ready, shm_path):
    """`python -m ivmpi.vm --guests 2`: rank variables, shown output, exit code."""
    cmd = [sys.executable, "-m", "ivmpi.vm", "--shm", shm_path, "--size", "4M",
           "--guests", "2", "--timeout", str(GUEST_TIMEOUT), "--",
           "sh", "-c", 'echo "rank=$IVMPI_RANK of $IVMPI_SIZE region=$IVMPI_REGION '
                       'dev=$(cat /sys/bus/pci/devices/*/device | grep -c 0x1110)"; '
                       'exit $((IVMPI_RANK * 5))']
    proc = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=GUEST_TIMEOUT + 30)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 5, shown
    assert "rank=0 of 2 region=pci dev=1" in proc.stdout, shown
    assert "rank=1 of 2 region=pci dev=1" in proc.stdout, shown
    assert "guest1: exit code 5" in proc.stderr, shown
    assert os.path.getsize(shm_path) == 4 << 20
