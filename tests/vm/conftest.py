"""Shared fixtures for the tests that boot QEMU guests (see docs/vms.md).

The first test installs QEMU and builds the guest kernel and initramfs if
they are missing (scripts/install-vm-deps does the same by hand).  The tests
are skipped only when that is impossible here, e.g. no root and no sudo; in
CI (CI set) that is a failure instead.
"""
import os
import uuid

import pytest

from ivmpi import vm


@pytest.fixture(scope="session")
def vm_ready():
    try:
        return vm.setup(install=True, log=lambda msg: print(msg))
    except vm.VmUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"QEMU guests are required in CI but unavailable: {exc}")
        pytest.skip(f"QEMU guests unavailable: {exc}")


@pytest.fixture
def shm_path():
    """A fresh /dev/shm path for one test's ivshmem backing file, removed afterwards."""
    path = f"/dev/shm/ivmpi-vmtest-{uuid.uuid4().hex[:12]}"
    yield path
    if os.path.exists(path):
        os.remove(path)

