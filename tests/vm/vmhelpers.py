"""Helpers for the tests under tests/vm (imported by them; not a test module)."""
import os
import subprocess
import sys

import pytest

from ivmpi import vm
from ivmpi._vm_setup import sshd_files

HERE = os.path.dirname(os.path.abspath(__file__))
# Guests boot in a few seconds, but guests on emulated cores share two real
# cores with everything else: generous limits, still bounded.
GUEST_TIMEOUT = float(os.environ.get("IVMPI_VM_TIMEOUT", "240"))


def guest_script(name):
    """Path of a script under tests/vm/ that runs inside a guest."""
    return os.path.join(HERE, name)


def describe(results):
    """All guests' consoles, for assertion messages."""
    return "\n".join(f"--- {r.name}: exit {r.returncode} ---\n{r.console[-5000:]}"
                     for r in results)


def _make_keys(folder):
    os.makedirs(folder)
    for name in ("id_ed25519", "host_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ivmpi-vm-test",
                        "-f", os.path.join(folder, name)], check=True, timeout=60)
    return folder


def mpirun_guest(tmp_path, rank_script, *args, timeout=GUEST_TIMEOUT):
    """(command, env) every guest of an mpirun job runs: guest_mpirun.py with
    an sshd and keys made for this test, guest0 then starting rank_script
    under mpirun.  Skips when there is no sshd for the guests (off CI)."""
    try:
        sshd, libdir = sshd_files(log=print)
    except vm.VmUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no sshd for the guests: {exc}")
    keys = _make_keys(str(tmp_path / "keys"))
    command = [sys.executable, guest_script("guest_mpirun.py"), keys, sshd, libdir,
               guest_script(rank_script), *args]
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "IVMPI_TIMEOUT": str(int(timeout * 0.6))}
    return command, env
