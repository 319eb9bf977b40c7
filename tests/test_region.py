"""Region: host files, and the guest backends against fake sysfs and /dev trees."""
import mmap
import os
import struct
import uuid

import numpy as np
import pytest

from ivmpi import Region
from ivmpi.errors import BoundsError, IvmpiError, RegionError
from ivmpi import region as region_mod

PAGE = mmap.PAGESIZE
MIB = 1 << 20


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No test sees the real machine's region settings or sysfs."""
    for name in ("IVMPI_REGION", "IVMPI_STRICT_ALIGN", "IVMPI_UIO_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IVMPI_SYSFS_ROOT", str(tmp_path / "sys"))
    monkeypatch.setenv("IVMPI_DEV_ROOT", str(tmp_path / "dev"))
    (tmp_path / "sys" / "bus" / "pci" / "devices").mkdir(parents=True)
    (tmp_path / "dev" / "shm").mkdir(parents=True)


def make_file(path, size, data=b""):
    """A file of `size` bytes, private as region files are (test_security.py
    covers the others)."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(data)
    os.chmod(path, 0o600)
    return str(path)


def add_pci_device(tmp_path, address="0000:00:04.0", bar2_size=MIB, bar2_start=0xFE000000,
                   vendor=0x1AF4, device=0x1110, revision=1, enabled=True,
                   ivposition=None, wc=True):
    """A sysfs PCI device directory with regular files standing in for the BARs."""
    d = tmp_path / "sys" / "bus" / "pci" / "devices" / address
    d.mkdir(parents=True)
    (d / "vendor").write_text(f"{vendor:#06x}\n")
    (d / "device").write_text(f"{device:#06x}\n")
    (d / "revision").write_text(f"{revision:#04x}\n")
    (d / "enable").write_text("1\n" if enabled else "0\n")
    bar0_start = 0xFEBF1000
    lines = [(bar0_start, bar0_start + 255, 0x40200), (0, 0, 0),
             (bar2_start, bar2_start + bar2_size - 1, 0x14220C)] + [(0, 0, 0)] * 4
    (d / "resource").write_text("".join(f"{a:#018x} {b:#018x} {c:#018x}\n" for a, b, c in lines))
    if ivposition is not None:
        make_file(d / "resource0", 256, b"\0" * 8 + struct.pack("<I", ivposition))
    make_file(d / "resource2", bar2_size)
    if wc:
        make_file(d / "resource2_wc", bar2_size)
    return d


# ----------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("text,value", [("64M", 64 * MIB), ("4096", 4096), ("1G", 1 << 30),
                                        ("16k", 16384), ("0x1000", 4096), ("64MiB", 64 * MIB),
                                        ("2MB", 2 * MIB)])
def test_parse_size(text, value):
    assert region_mod.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "12Q", "-4", "1.5M"])
def test_parse_size_rejects(text):
    with pytest.raises(RegionError, match="size"):
        region_mod.parse_size(text)


def test_format_size():
    assert region_mod.format_size(64 * MIB) == "64M"
    assert region_mod.format_size(1 << 30) == "1G"
    assert region_mod.format_size(8192) == "8K"
    assert region_mod.format_size(1000) == "1000"


# ----------------------------------------------------------------------------- host files

def test_create_write_read_close(tmp_path):
    path = tmp_path / "region"
    r = Region.create(path, size="1M")
    assert (r.size, r.backend, r.strict_align, r.path) == (MIB, "file", False, str(path))
    assert os.path.getsize(path) == MIB
    r.write(100, b"hello region")
    assert r.read_bytes(100, 12) == b"hello region"
    out = bytearray(12)
    r.read(100, out)
    assert bytes(out) == b"hello region"
    assert r.ivposition is None and r.revision is None
    r.close()
    r.close()   # idempotent
    assert r.closed
    with pytest.raises(RegionError, match="closed"):
        r.write(0, b"x")


def test_context_manager_and_reopen_sees_data(tmp_path):
    path = tmp_path / "region"
    data = np.arange(512, dtype=np.uint64)
    with Region.create(path, size=64 * 1024) as r:
        r.write(8, data)
    assert r.closed
    with Region.open(str(path)) as r2:
        out = np.zeros(512, dtype=np.uint64)
        r2.read(8, out)
        assert np.array_equal(out, data)
    # create on the existing file of the same size reuses it and keeps the data
    with Region.create(path, size=64 * 1024) as r3:
        assert r3.read_bytes(8, 16) == data[:2].tobytes()


def test_bounds_are_checked(tmp_path):
    with Region.create(tmp_path / "region", size=4096) as r:
        with pytest.raises(BoundsError):
            r.write(4090, b"0123456789")
        with pytest.raises(BoundsError):
            r.read_bytes(4096, 1)


def test_shm_spec_and_unique_dev_shm_name(tmp_path):
    # shm:NAME resolves under the /dev root; here the fake one from clean_env
    name = f"ivmpi-test-{uuid.uuid4().hex}"
    make_file(tmp_path / "dev" / "shm" / name, 8192)
    with Region.open(f"shm:{name}") as r:
        assert r.path == str(tmp_path / "dev" / "shm" / name)
        assert r.size == 8192 and r.backend == "file"


def test_real_dev_shm_file(monkeypatch):
    monkeypatch.delenv("IVMPI_DEV_ROOT")
    path = f"/dev/shm/ivmpi-test-{uuid.uuid4().hex}"
    try:
        with Region.create(path, size="64K") as r:
            r.write(0, b"abc")
        with Region.open(f"shm:{os.path.basename(path)}") as r:
            assert r.read_bytes(0, 3) == b"abc"
    finally:
        os.unlink(path)


@pytest.mark.parametrize("size", [3 * MIB, 1000, 0, 2048])
def test_create_refuses_bad_sizes(tmp_path, size):
    with pytest.raises(RegionError, match="power of two"):
        Region.create(tmp_path / "region", size=size)
    assert not (tmp_path / "region").exists()


def test_create_refuses_to_resize_existing(tmp_path):
    path = make_file(tmp_path / "region", 2 * MIB)
    with pytest.raises(RegionError, match="already exists with size 2 MiB"):
        Region.create(path, size="1M")
    with pytest.raises(RegionError, match="already exists"):
        Region.create(path, size="4M")
    assert os.path.getsize(path) == 2 * MIB


def test_create_sizes_an_empty_existing_file(tmp_path):
    path = make_file(tmp_path / "region", 0)
    with Region.create(path, size="8K") as r:
        assert r.size == 8192


def test_open_missing_empty_small_directory(tmp_path):
    with pytest.raises(RegionError, match="no such file.*ivmpi create"):
        Region.open(str(tmp_path / "nope"))
    with pytest.raises(RegionError, match="directory"):
        Region.open(str(tmp_path))


def test_open_empty_and_too_small(tmp_path):
    with pytest.raises(RegionError, match="empty"):
        Region.open(make_file(tmp_path / "empty", 0))
    with pytest.raises(RegionError, match="too small"):
        Region.open(make_file(tmp_path / "small", 100))


def test_char_device_size_and_not_mmapable():
    # /dev/null is a character device of no size that refuses mmap
    with pytest.raises(RegionError, match="cannot tell the size of /dev/null.*size="):
        Region.open("/dev/null")
    with pytest.raises(RegionError, match="/dev/null cannot be memory-mapped"):
        Region.open("/dev/null", size=4096)


def test_spec_prefixes_need_their_colon(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_file(tmp_path / "uio0", 8192)
    make_file(tmp_path / "pci-wcx", 8192)
    assert region_mod.locate("uio0").backend == "file"
    assert region_mod.locate("pci-wcx").memory.path == str(tmp_path / "pci-wcx")


def test_permission_denied_names_the_fix(tmp_path, monkeypatch):
    path = make_file(tmp_path / "region", 8192)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(region_mod.os, "open", denied)
    with pytest.raises(RegionError, match="permission denied.*run as root or chmod"):
        Region.open(path)


# ----------------------------------------------------------------------------- strict mode

def test_strict_defaults_and_env(monkeypatch):
    assert region_mod.resolve_strict_align("file") is False
    for backend in ("pci", "pci-wc", "devmem", "uio"):
        assert region_mod.resolve_strict_align(backend) is True
    monkeypatch.setenv("IVMPI_STRICT_ALIGN", "1")
    assert region_mod.resolve_strict_align("file") is True
    assert region_mod.resolve_strict_align("file", False) is False     # the argument wins
    monkeypatch.setenv("IVMPI_STRICT_ALIGN", "0")
    assert region_mod.resolve_strict_align("pci") is False
    assert region_mod.resolve_strict_align("pci", True) is True
    monkeypatch.setenv("IVMPI_STRICT_ALIGN", "maybe")
    with pytest.raises(RegionError, match="IVMPI_STRICT_ALIGN"):
        region_mod.resolve_strict_align("file")


def test_strict_reaches_the_mapping(tmp_path, monkeypatch):
    path = make_file(tmp_path / "region", 8192)
    with Region.open(path) as r:
        assert r.strict_align is False and r.mem.strict is False
    monkeypatch.setenv("IVMPI_STRICT_ALIGN", "1")
    with Region.open(path) as r:
        assert r.strict_align is True and r.mem.strict is True
    with Region.open(path, strict_align=False) as r:
        assert r.mem.strict is False


# ----------------------------------------------------------------------------- pci

def test_pci_discovery(tmp_path):
    add_pci_device(tmp_path, bar2_size=2 * MIB, bar2_start=0xFD000000)
    add_pci_device(tmp_path, address="0000:00:03.0", vendor=0x8086, device=0x100E)  # a NIC
    devices = region_mod.find_ivshmem_devices()
    assert [d.address for d in devices] == ["0000:00:04.0"]
    d = devices[0]
    assert (d.bar2_size, d.bar2_start, d.revision, d.enabled) == (2 * MIB, 0xFD000000, 1, True)
    target = region_mod.locate("pci")
    assert target.backend == "pci" and target.memory.path.endswith("0000:00:04.0/resource2")
    assert target.memory.size == 2 * MIB


def test_pci_bar_size_from_file_when_no_resource_listing(tmp_path):
    d = add_pci_device(tmp_path, bar2_size=64 * 1024)
    (d / "resource").unlink()
    assert region_mod.find_ivshmem_devices()[0].bar2_size == 64 * 1024


@pytest.mark.parametrize("spec,wc", [("pci:0000:00:05.0", False), ("pci:00:05.0", False),
                                     ("pci:0000:00:05.0:wc", True), ("pci-wc:0000:00:05.0", True)])
def test_pci_pick_by_address(tmp_path, spec, wc):
    add_pci_device(tmp_path, address="0000:00:04.0")
    add_pci_device(tmp_path, address="0000:00:05.0", bar2_size=4 * MIB)
    target = region_mod.locate(spec)
    assert target.pci_address == "0000:00:05.0"
    assert target.backend == ("pci-wc" if wc else "pci")
    assert target.memory.path.endswith("0000:00:05.0/resource2" + ("_wc" if wc else ""))
    assert target.memory.size == 4 * MIB


def test_pci_several_devices_error_lists_them(tmp_path):
    add_pci_device(tmp_path, address="0000:00:04.0", bar2_size=MIB)
    add_pci_device(tmp_path, address="0000:00:05.0", bar2_size=4 * MIB)
    for spec in ("pci", None):
        with pytest.raises(RegionError) as info:
            region_mod.locate(spec)
        message = str(info.value)
        assert "0000:00:04.0 (BAR2 1 MiB)" in message
        assert "0000:00:05.0 (BAR2 4 MiB)" in message
        assert "pci:ADDRESS" in message


def test_pci_no_device_errors(tmp_path):
    with pytest.raises(RegionError, match="no ivshmem PCI device"):
        region_mod.locate("pci")
    with pytest.raises(RegionError, match="ivmpi create /dev/shm/NAME --size 64M"):
        region_mod.locate(None)
    add_pci_device(tmp_path, address="0000:00:03.0", vendor=0x8086, device=0x100E)
    with pytest.raises(RegionError, match="not an ivshmem device"):
        region_mod.locate("pci:0000:00:03.0")
    with pytest.raises(RegionError, match="no PCI device 0000:00:09.0"):
        region_mod.locate("pci:0000:00:09.0")


def test_pci_wc_missing(tmp_path):
    add_pci_device(tmp_path, wc=False)
    with pytest.raises(RegionError, match="resource2_wc does not exist"):
        region_mod.locate("pci-wc")


def test_default_spec_from_env(tmp_path, monkeypatch):
    path = make_file(tmp_path / "region", 8192)
    add_pci_device(tmp_path)    # IVMPI_REGION wins over the device
    monkeypatch.setenv("IVMPI_REGION", path)
    assert region_mod.locate(None).memory.path == path
    monkeypatch.delenv("IVMPI_REGION")
    assert region_mod.locate(None).backend == "pci"


def test_pci_open_enables_and_reads_registers(tmp_path):
    d = add_pci_device(tmp_path, ivposition=3, enabled=False, revision=1)
    with Region.open() as r:
        assert (d / "enable").read_text().strip() == "1"
        assert (r.backend, r.strict_align, r.size) == ("pci", True, MIB)
        assert r.pci_address == "0000:00:04.0"
        assert r.ivposition == 3 and r.revision == 1
        r.write(0, b"through resource2")
    with open(d / "resource2", "rb") as f:
        assert f.read(17) == b"through resource2"
    assert region_mod.find_ivshmem_devices()[0].read_ivposition() == 3


def test_pci_wc_open_and_resource_path(tmp_path):
    d = add_pci_device(tmp_path, ivposition=7)
    with Region.open("pci-wc") as r:
        assert r.backend == "pci-wc" and r.path.endswith("resource2_wc") and r.ivposition == 7
    # naming the sysfs resource file directly is the same backend
    with Region.open(str(d / "resource2")) as r:
        assert r.backend == "pci" and r.strict_align and r.ivposition == 7


def test_pci_without_bar0(tmp_path):
    add_pci_device(tmp_path, ivposition=None)
    with Region.open("pci") as r:
        assert r.ivposition is None and r.revision == 1


# ----------------------------------------------------------------------------- uio

def add_uio(tmp_path, n=0, size=64 * 1024, ivposition=5):
    maps = tmp_path / "sys" / "class" / "uio" / f"uio{n}" / "maps"
    for k, map_size in ((0, 256), (1, size)):
        (maps / f"map{k}").mkdir(parents=True)
        (maps / f"map{k}" / "size").write_text(f"{map_size:#x}\n")
    # map 0 (registers) at offset 0, map 1 (shared memory) at offset 1 * pagesize
    registers = b"\0" * 8 + struct.pack("<I", ivposition)
    path = make_file(tmp_path / "dev" / f"uio{n}", PAGE + size, registers)
    return path


def test_uio_locate(tmp_path):
    path = add_uio(tmp_path, n=2)
    target = region_mod.locate("uio:2")
    assert target.backend == "uio" and target.memory.path == path
    assert (target.memory.offset, target.memory.size) == (PAGE, 64 * 1024)
    assert target.registers.offset == 0
    with pytest.raises(RegionError, match="no shared-memory map"):
        region_mod.locate("uio:3")
    with pytest.raises(RegionError, match="uio:N"):
        region_mod.locate("uio:x")


def test_uio_open(tmp_path):
    path = add_uio(tmp_path)
    with Region.open("uio:0") as r:
        assert (r.backend, r.size, r.strict_align, r.ivposition) == ("uio", 64 * 1024, True, 5)
        r.write(0, b"map one")
    with open(path, "rb") as f:
        f.seek(PAGE)
        assert f.read(7) == b"map one"


# ----------------------------------------------------------------------------- devmem

DEVMEM_ADDRESS = 0x200000   # small, so the fake /dev/mem stays a small sparse file


def test_devmem_locate(tmp_path):
    with pytest.raises(RegionError, match="size is unknown"):
        region_mod.locate(f"devmem:{DEVMEM_ADDRESS:#x}")
    add_pci_device(tmp_path, bar2_start=DEVMEM_ADDRESS, bar2_size=2 * MIB)
    target = region_mod.locate(f"devmem:{DEVMEM_ADDRESS:x}")    # size from the PCI device
    assert (target.backend, target.memory.offset, target.memory.size) == \
        ("devmem", DEVMEM_ADDRESS, 2 * MIB)
    assert target.memory.sync and target.memory.path == str(tmp_path / "dev" / "mem")
    assert region_mod.locate(f"devmem:{DEVMEM_ADDRESS:#x}:64K").memory.size == 64 * 1024
    for bad in ("devmem:", "devmem:zz", "devmem:0x1001:4K", "devmem:0x1000:4Q"):
        with pytest.raises(RegionError):
            region_mod.locate(bad)


def test_devmem_open(tmp_path):
    mem = make_file(tmp_path / "dev" / "mem", DEVMEM_ADDRESS + MIB)
    with Region.open(f"devmem:{DEVMEM_ADDRESS:#x}:1M") as r:
        assert (r.backend, r.size, r.strict_align) == ("devmem", MIB, True)
        r.write(16, b"physical")
    with open(mem, "rb") as f:
        f.seek(DEVMEM_ADDRESS + 16)
        assert f.read(8) == b"physical"
    with pytest.raises(RegionError, match="too small"):
        Region.open(f"devmem:{DEVMEM_ADDRESS:#x}:2M")


def test_errors_are_ivmpi_errors():
    assert issubclass(RegionError, IvmpiError)


def test_job_start_up_picks_its_region_as_region_open_does(tmp_path, monkeypatch):
    """The communicator's default follows the same rule: IVMPI_REGION, else the
    single device; several devices are an error listing them (never a silent
    per-job file, which ranks in other VMs could not share); none at all on a
    plain host means a per-job file (None here)."""
    from ivmpi import world
    assert world._open_region(None) is None
    add_pci_device(tmp_path, address="0000:00:04.0", bar2_size=MIB)
    with world._open_region(None) as region:
        assert region.backend == "pci" and region.size == MIB
    add_pci_device(tmp_path, address="0000:00:05.0", bar2_size=4 * MIB)
    with pytest.raises(RegionError, match="0000:00:05.0"):
        world._open_region(None)
    path = tmp_path / "dev" / "shm" / "job"
    make_file(path, MIB)
    monkeypatch.setenv("IVMPI_REGION", str(path))
    with world._open_region(None) as region:
        assert region.backend == "file" and region.path == str(path)
