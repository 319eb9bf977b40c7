"""The exit timer that bounds MPI_Finalize once a peer is lost."""
import subprocess
import sys
import time

SCRIPT = """
import sys, time
from ivmpi._fastcopy import start_exit_watchdog
start_exit_watchdog(float(sys.argv[1]), 3, "watchdog fired\\n")
start_exit_watchdog(0.0, 4, "a second start is ignored\\n")
time.sleep(float(sys.argv[2]))
print("finished normally", flush=True)
"""


def run(delay, work):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(delay), str(work)],
                          capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


def test_fires_when_the_process_hangs():
    proc, seconds = run(0.3, 30)
    assert proc.returncode == 3, proc
    assert proc.stderr == "watchdog fired\n"
    assert "finished normally" not in proc.stdout
    assert seconds < 20


def test_harmless_when_the_process_exits_in_time():
    proc, _ = run(30, 0.05)
    assert proc.returncode == 0, proc
    assert proc.stdout == "finished normally\n"
    assert proc.stderr == ""
