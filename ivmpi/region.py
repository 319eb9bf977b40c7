"""Finding and mapping the shared region.

A *spec* names the memory; ``locate(spec)`` turns it into a ``Target`` (which
file to map, at which offset, how big, where the BAR0 registers are) by
reading only metadata, and ``Region`` maps the target.  Every access to the
memory goes through ``ivmpi._fastcopy.Mapping`` so strict-align mode holds.

Spec forms (see docs/region.md):
    PATH                      a host file (/dev/shm/NAME) or any mmap-able file or char device
    shm:NAME                  /dev/shm/NAME (the legacy ``-device ivshmem,shm=NAME``)
    pci[:ADDR][:wc]           BAR2 of the ivshmem PCI device through sysfs resource2
    pci-wc[:ADDR]             the same through resource2_wc (write-combining)
    devmem:ADDRESS[:SIZE]     /dev/mem at BAR2's physical address
    uio:N                     /dev/uioN, map 1 (map 0 = registers)

The roots are read at call time so tests can point them at a fake tree:
IVMPI_SYSFS_ROOT (default /sys), IVMPI_DEV_ROOT (default /dev),
IVMPI_UIO_ROOT (default $IVMPI_SYSFS_ROOT/class/uio).
"""
import errno
import grp
import mmap
import os
import pwd
import re
import stat
import warnings
from dataclasses import dataclass
from typing import Optional

from .errors import RegionError

IVSHMEM_VENDOR = 0x1AF4
IVSHMEM_DEVICE = 0x1110
IVPOSITION_OFFSET = 8       # BAR0 register: this VM's peer id, 32-bit, read-only
BAR0_SIZE = 256
MIN_REGION_SIZE = 4096      # below one page nothing useful fits
DEVICE_BACKENDS = ("pci", "pci-wc", "devmem", "uio", "device")

PAGE_SIZE = mmap.PAGESIZE

DEFAULT_MODE = 0o600        # a new region file: only its owner may map it
GROUP_MODE = 0o660          # the default when a group is given (QEMU as another user)
ALLOW_OPEN_ENV = "IVMPI_ALLOW_OPEN_REGION"

CREATE_HINT = ("on the host run `ivmpi create /dev/shm/NAME --size 64M` and start each VM with "
               "`-object memory-backend-file,id=hostmem,share=on,mem-path=/dev/shm/NAME,size=64M "
               "-device ivshmem-plain,memdev=hostmem`; then pass the spec or set IVMPI_REGION")


# ----------------------------------------------------------------------------- roots

def sysfs_root() -> str:
    return os.environ.get("IVMPI_SYSFS_ROOT", "/sys")


def dev_root() -> str:
    return os.environ.get("IVMPI_DEV_ROOT", "/dev")


def uio_root() -> str:
    return os.environ.get("IVMPI_UIO_ROOT", os.path.join(sysfs_root(), "class", "uio"))


def pci_devices_dir() -> str:
    return os.path.join(sysfs_root(), "bus", "pci", "devices")


# ----------------------------------------------------------------------------- sizes

_SIZE_RE = re.compile(r"^\s*(0x[0-9a-f]+|\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def parse_size(text) -> int:
    """'64M', '1G', '4096', '0x1000', '64MiB' -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise RegionError(f"cannot read size {text!r}: use bytes or a K/M/G suffix, e.g. 64M")
    return int(match.group(1), 0) << _SIZE_UNITS[match.group(2).lower()]


def format_size(n: int) -> str:
    """Bytes in the largest binary unit that divides them exactly: 64M, 4K, 1000."""
    for suffix, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def human_size(n: int) -> str:
    for suffix, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:g} {suffix}" if value == int(value) else f"{value:.1f} {suffix}"
    return f"{n} B"


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# ----------------------------------------------------------------------------- PCI discovery

def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> Optional[int]:
    text = _read_text(path)
    try:
        return int(text, 0) if text else None
    except ValueError:
        return None


def _bar_ranges(device_dir: str) -> list:
    """(start, size) per BAR from the sysfs `resource` file; (0, 0) when unassigned."""
    text = _read_text(os.path.join(device_dir, "resource")) or ""
    ranges = []
    for line in text.splitlines():
        fields = line.split()
        try:
            start, end = int(fields[0], 16), int(fields[1], 16)
        except (IndexError, ValueError):
            start, end = 0, 0
        ranges.append((start, end - start + 1) if end > start else (start, 0))
    return ranges


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


@dataclass(frozen=True)
class PciDevice:
    """One ivshmem PCI device as sysfs describes it."""
    address: str        # 0000:00:04.0
    path: str           # its sysfs directory
    bar2_start: int     # physical address of the shared memory (what lspci -v shows)
    bar2_size: int
    bar0_start: int
    revision: Optional[int]
    enabled: Optional[bool]

    def resource(self, n: int, wc: bool = False) -> str:
        return os.path.join(self.path, f"resource{n}" + ("_wc" if wc else ""))

    def read_ivposition(self) -> Optional[int]:
        """IVPosition from BAR0, or None when BAR0 cannot be mapped here."""
        path = self.resource(0)
        if not os.path.exists(path):
            return None
        try:
            with _MappedFile(path, 0, min(BAR0_SIZE, _file_size(path) or BAR0_SIZE),
                             strict=True) as bar0:
                return bar0.mem.load_u32(IVPOSITION_OFFSET)
        except (RegionError, OSError):
            return None


def _read_device(device_dir: str) -> PciDevice:
    ranges = _bar_ranges(device_dir)
    bar0_start = ranges[0][0] if len(ranges) > 0 else 0
    bar2_start, bar2_size = ranges[2] if len(ranges) > 2 else (0, 0)
    if not bar2_size:       # no resource file: sysfs sizes resource2 like the BAR
        bar2_size = _file_size(os.path.join(device_dir, "resource2"))
    enable = _read_int(os.path.join(device_dir, "enable"))
    return PciDevice(address=os.path.basename(device_dir), path=device_dir,
                     bar2_start=bar2_start, bar2_size=bar2_size, bar0_start=bar0_start,
                     revision=_read_int(os.path.join(device_dir, "revision")),
                     enabled=None if enable is None else bool(enable))


def find_ivshmem_devices() -> list:
    """Every ivshmem device (vendor 0x1af4, device 0x1110) under the sysfs PCI tree."""
    root = pci_devices_dir()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    devices = []
    for name in names:
        device_dir = os.path.join(root, name)
        if (_read_int(os.path.join(device_dir, "vendor")) == IVSHMEM_VENDOR
                and _read_int(os.path.join(device_dir, "device")) == IVSHMEM_DEVICE):
            devices.append(_read_device(device_dir))
    return devices


def _normalize_pci_address(address: str) -> str:
    address = address.strip().lower()
    if re.fullmatch(r"[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", address):
        address = "0000:" + address         # lspci's short form has no domain
    return address


def _list_devices(devices) -> str:
    return "; ".join(f"{d.address} (BAR2 {human_size(d.bar2_size)})" for d in devices)


def pick_ivshmem_device(address: Optional[str] = None) -> PciDevice:
    """The device at `address`, or the only ivshmem device; clear errors otherwise."""
    devices = find_ivshmem_devices()
    if address is not None:
        wanted = _normalize_pci_address(address)
        for device in devices:
            if device.address == wanted:
                return device
        if os.path.isdir(os.path.join(pci_devices_dir(), wanted)):
            raise RegionError(f"PCI device {wanted} is not an ivshmem device "
                              f"(vendor 1af4, device 1110)")
        found = f"ivshmem devices here: {_list_devices(devices)}" if devices else \
            "no ivshmem device is present"
        raise RegionError(f"no PCI device {wanted}; {found}")
    if not devices:
        raise RegionError(f"no ivshmem PCI device (1af4:1110) under {pci_devices_dir()}; "
                          f"is the VM started with -device ivshmem-plain? Otherwise {CREATE_HINT}")
    if len(devices) > 1:
        raise RegionError(f"{len(devices)} ivshmem devices: {_list_devices(devices)}; "
                          f"choose one with pci:ADDRESS (e.g. pci:{devices[0].address}) "
                          f"or set IVMPI_REGION")
    return devices[0]


def _enable_device(device: PciDevice) -> None:
    """Turn on memory decoding: without it BAR accesses read all-ones or fault."""
    if device.enabled is False:
        try:
            with open(os.path.join(device.path, "enable"), "w") as f:
                f.write("1")
        except PermissionError:
            raise RegionError(f"permission denied enabling PCI device {device.address}: "
                              f"run as root or write 1 to {device.path}/enable") from None
        except OSError as e:
            raise RegionError(f"cannot enable PCI device {device.address}: {e.strerror}") from None


# ----------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class Window:
    """A part of a file to map: the region itself or the BAR0 registers."""
    path: str
    offset: int = 0
    size: Optional[int] = None      # None: the file's size
    sync: bool = False              # O_SYNC, as /dev/mem wants for uncached access


@dataclass(frozen=True)
class Target:
    """Where a spec's memory is; produced by locate(), mapped by Region."""
    backend: str                    # file, pci, pci-wc, devmem, uio, device
    memory: Window
    registers: Optional[Window] = None
    revision: Optional[int] = None
    pci_address: Optional[str] = None
    before_map: Optional[PciDevice] = None  # a device to enable before mapping


def default_spec() -> str:
    """IVMPI_REGION, else the single ivshmem PCI device."""
    spec = os.environ.get("IVMPI_REGION", "").strip()
    if spec:
        return spec
    devices = find_ivshmem_devices()
    if not devices:
        raise RegionError(f"no region given, IVMPI_REGION is not set and no ivshmem PCI device "
                          f"is present: {CREATE_HINT}")
    if len(devices) > 1:
        pick_ivshmem_device()   # raises the error listing them
    return "pci:" + devices[0].address


def _locate_pci(device: PciDevice, wc: bool) -> Target:
    path = device.resource(2, wc)
    if not os.path.exists(path):
        hint = " (this kernel has no write-combining resource file; use pci)" if wc else ""
        raise RegionError(f"{path} does not exist{hint}")
    bar0 = device.resource(0)
    return Target(backend="pci-wc" if wc else "pci",
                  memory=Window(path, 0, device.bar2_size or None),
                  registers=Window(bar0, 0, BAR0_SIZE) if os.path.exists(bar0) else None,
                  revision=device.revision, pci_address=device.address, before_map=device)


def _parse_pci_spec(spec: str):
    """'pci', 'pci:ADDR', 'pci:ADDR:wc', 'pci:wc', 'pci-wc', 'pci-wc:ADDR' -> (address, wc)."""
    body, wc = spec[3:], False
    if body.startswith("-wc"):
        body, wc = body[3:], True
    body = body.lstrip(":")
    if body == "wc" or body.endswith(":wc"):
        body, wc = body[:-2].rstrip(":"), True
    return (body or None), wc


def _locate_devmem(spec: str) -> Target:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise RegionError(f"bad spec {spec!r}: use devmem:ADDRESS[:SIZE], "
                          f"e.g. devmem:0xfe000000:64M")
    try:
        address = int(parts[1], 16)
    except ValueError:
        raise RegionError(f"bad address in {spec!r}: give BAR2's physical address in hex "
                          f"(as lspci -v shows it)") from None
    if address % PAGE_SIZE:
        raise RegionError(f"address {address:#x} in {spec!r} is not page aligned")
    device = next((d for d in find_ivshmem_devices() if d.bar2_start == address and d.bar2_size),
                  None)
    if len(parts) == 3:
        size = parse_size(parts[2])
    elif device is not None:
        size = device.bar2_size
    else:
        raise RegionError(f"no ivshmem device has BAR2 at {address:#x}, so its size is unknown: "
                          f"use devmem:{address:#x}:SIZE")
    bar0 = device.resource(0) if device else None
    return Target(backend="devmem",
                  memory=Window(os.path.join(dev_root(), "mem"), address, size, sync=True),
                  registers=Window(bar0, 0, BAR0_SIZE) if bar0 and os.path.exists(bar0) else None,
                  revision=device.revision if device else None,
                  pci_address=device.address if device else None)


def _uio_map_size(n: int, k: int) -> Optional[int]:
    return _read_int(os.path.join(uio_root(), f"uio{n}", "maps", f"map{k}", "size"))


def _locate_uio(spec: str) -> Target:
    match = re.fullmatch(r"uio:(\d+)", spec)
    if not match:
        raise RegionError(f"bad spec {spec!r}: use uio:N for /dev/uioN")
    n = int(match.group(1))
    size = _uio_map_size(n, 1)
    if size is None:
        raise RegionError(f"/dev/uio{n} has no shared-memory map "
                          f"(no {uio_root()}/uio{n}/maps/map1/size): is it the ivshmem UIO driver?")
    device_file = os.path.join(dev_root(), f"uio{n}")
    registers_size = _uio_map_size(n, 0)
    # UIO selects map K by mmap offset K * pagesize.
    return Target(backend="uio",
                  memory=Window(device_file, 1 * PAGE_SIZE, size),
                  registers=Window(device_file, 0, min(registers_size, BAR0_SIZE))
                  if registers_size else None,
                  revision=_read_int(os.path.join(uio_root(), f"uio{n}", "device", "revision")))


def _locate_path(path: str) -> Target:
    path = os.path.abspath(os.path.expanduser(path))
    # A sysfs resource file given by path is the pci backend all the same.
    match = re.fullmatch(r"(.*)/resource2(_wc)?", path)
    if match and os.path.dirname(match.group(1)) == os.path.abspath(pci_devices_dir()):
        return _locate_pci(_read_device(match.group(1)), bool(match.group(2)))
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise RegionError(f"no such file: {path} "
                          f"(create it with `ivmpi create {path} --size 64M`)") from None
    except PermissionError:
        raise RegionError(f"permission denied: {path}: run as root or chmod the file") from None
    if stat.S_ISDIR(mode):
        raise RegionError(f"{path} is a directory, not a region file")
    backend = "device" if stat.S_ISCHR(mode) else "file"
    return Target(backend=backend, memory=Window(path))


def locate(spec: Optional[str] = None) -> Target:
    """Resolve a spec (None: the default) to a Target, reading only metadata."""
    if spec is None or not str(spec).strip():
        spec = default_spec()
    spec = os.fspath(spec).strip() if not isinstance(spec, str) else spec.strip()
    if spec in ("pci", "pci-wc") or spec.startswith(("pci:", "pci-wc:")):
        address, wc = _parse_pci_spec(spec)
        return _locate_pci(pick_ivshmem_device(address), wc)
    if spec.startswith("devmem:"):
        return _locate_devmem(spec)
    if spec.startswith("uio:"):
        return _locate_uio(spec)
    if spec.startswith("shm:"):
        name = spec[4:]
        if not name or "/" in name:
            raise RegionError(f"bad spec {spec!r}: use shm:NAME for /dev/shm/NAME")
        return _locate_path(os.path.join(dev_root(), "shm", name))
    return _locate_path(spec)


# ----------------------------------------------------------------------------- mapping

_TRUE = ("1", "on", "yes", "true")
_FALSE = ("0", "off", "no", "false")


def resolve_strict_align(backend: str, explicit: Optional[bool] = None) -> bool:
    """Explicit argument, else IVMPI_STRICT_ALIGN, else on for device mappings."""
    if explicit is not None:
        return bool(explicit)
    env = os.environ.get("IVMPI_STRICT_ALIGN", "").strip().lower()
    if env in _TRUE:
        return True
    if env in _FALSE:
        return False
    if env:
        raise RegionError(f"IVMPI_STRICT_ALIGN={env!r}: use 1 or 0")
    return backend in DEVICE_BACKENDS


def _mapping_class():
    try:
        from ._fastcopy import Mapping
    except ImportError as e:
        raise RegionError(f"the ivmpi copy core is not built ({e}): "
                          f"run scripts/bootstrap") from None
    return Mapping


def _open_error(path: str, e: OSError, verb: str) -> RegionError:
    if e.errno == errno.ELOOP:
        return RegionError(f"{path} is a symbolic link: refusing to follow it")
    if isinstance(e, PermissionError):
        return RegionError(f"permission denied: cannot {verb} {path}: "
                           f"run as root or chmod the resource file")
    if isinstance(e, FileNotFoundError):
        if verb == "create":
            return RegionError(f"cannot create {path}: no directory {os.path.dirname(path)}")
        return RegionError(f"no such file: {path}")
    return RegionError(f"cannot {verb} {path}: {e.strerror or e}")


# ----------------------------------------------------------------------------- permissions

class RegionWarning(UserWarning):
    """A region file that users other than its owner may read (or, allowed
    by IVMPI_ALLOW_OPEN_REGION, write or own)."""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def describe_access(st) -> str:
    """'mode 0600, owner alice:alice' for a stat result."""
    return (f"mode {stat.S_IMODE(st.st_mode):04o}, "
            f"owner {user_name(st.st_uid)}:{group_name(st.st_gid)}")


def _open_allowed() -> bool:
    return os.environ.get(ALLOW_OPEN_ENV, "").strip() == "1"


def check_host_file(fd: int, path: str) -> None:
    """Refuse a host region file that users other than the caller and root
    may write or own (they could act as a peer nobody started); warn when
    every user may read it.  Judged on the open fd: the file checked is the
    file mapped."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return
    mode = stat.S_IMODE(st.st_mode)
    me = os.geteuid()
    problems = []
    if mode & stat.S_IWOTH:
        problems.append(f"every user may write into it (fix: chmod o-rw {path})")
    if st.st_uid not in (me, 0):
        problems.append(f"it belongs to {user_name(st.st_uid)}, who may change it at will "
                        f"(fix, as root: chown {user_name(me)} {path})")
    if problems and not _open_allowed():
        raise RegionError(f"refusing to map {path} ({describe_access(st)}): "
                          + "; ".join(problems) + f"; or set {ALLOW_OPEN_ENV}=1 to map it anyway")
    if mode & 0o006 == stat.S_IROTH:
        problems.append(f"every user may read it, and every message of the job with it "
                        f"(fix: chmod o-r {path})")
    if problems:
        warnings.warn(f"{path} ({describe_access(st)}): " + "; ".join(problems),
                      RegionWarning, stacklevel=5)


def _creation_mode(mode, group) -> int:
    """The mode a region file is given: 0600, or 0660 with a group, or `mode`."""
    if mode is None:
        return DEFAULT_MODE if group is None else GROUP_MODE
    if isinstance(mode, str):
        try:
            mode = int(mode, 8)
        except ValueError:
            raise RegionError(f"cannot read mode {mode!r}: give octal digits, e.g. 0660") from None
    if mode & ~0o777 or mode & 0o600 != 0o600:
        raise RegionError(f"mode {mode:04o}: give permission bits that let the owner read and "
                          f"write, e.g. 0600 or 0660")
    if mode & stat.S_IWOTH and not _open_allowed():
        raise RegionError(f"mode {mode:04o} lets every user write into the region: use 0600, "
                          f"or 0660 with a group")
    return mode


def _group_id(group) -> int:
    if isinstance(group, int):
        return group
    name = str(group).strip()
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise RegionError(f"no group named {name!r} on this host (see `getent group`)") from None


def _set_access(fd: int, path: str, mode: int, gid: Optional[int]) -> None:
    """Group first, then mode: group bits never apply to a group not meant to have them."""
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
    except PermissionError:
        group = f" and group {group_name(gid)}" if gid is not None else ""
        raise RegionError(f"cannot give {path} mode {mode:04o}{group}: only the file's owner may, "
                          f"and only to a group the owner is in (see `id -Gn`); or run as root"
                          ) from None


@dataclass(frozen=True)
class DeviceAccess:
    """Who may open one guest file that maps the region."""
    path: str
    access: str             # describe_access()
    others: tuple           # besides root: 'user alice', 'group ivmpi', 'every user'
    needs_rawio: bool       # /dev/mem: the kernel also wants CAP_SYS_RAWIO


def _others(st) -> tuple:
    mode = stat.S_IMODE(st.st_mode)
    others = []
    if st.st_uid != 0 and mode & 0o600:
        others.append(f"user {user_name(st.st_uid)}")
    if st.st_gid != 0 and mode & 0o060:
        others.append(f"group {group_name(st.st_gid)}")
    if mode & 0o006:
        others.append("every user")
    return tuple(others)


def _ivshmem_uio_devices() -> list:
    try:
        names = sorted(os.listdir(uio_root()))
    except OSError:
        return []
    return [os.path.join(dev_root(), name) for name in names
            if _read_int(os.path.join(uio_root(), name, "device", "vendor")) == IVSHMEM_VENDOR
            and _read_int(os.path.join(uio_root(), name, "device", "device")) == IVSHMEM_DEVICE]


def guest_device_access() -> list:
    """A DeviceAccess for each guest file here through which the region can be
    mapped: resource2 and resource2_wc of each ivshmem device, its UIO
    devices, and /dev/mem."""
    paths = []
    for device in find_ivshmem_devices():
        paths += [device.resource(2), device.resource(2, wc=True)]
    paths += _ivshmem_uio_devices()
    devmem = os.path.join(dev_root(), "mem")
    paths.append(devmem)
    found = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.append(DeviceAccess(path, describe_access(st), _others(st), path == devmem))
    return found


class _MappedFile:
    """One mmap of a file window, wrapped in a Mapping; closes both."""

    def __init__(self, path: str, offset: int, size: Optional[int], strict: bool,
                 sync: bool = False, host_file: bool = False, nofollow: bool = False):
        flags = os.O_RDWR | (os.O_SYNC if sync else 0) | (os.O_NOFOLLOW if nofollow else 0)
        try:
            fd = os.open(path, flags)
        except OSError as e:
            raise _open_error(path, e, "open") from None
        try:
            if host_file:
                check_host_file(fd, path)
            size = self._window_size(fd, path, offset, size)
            try:
                self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED,
                                       mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
            except (OSError, ValueError) as e:
                raise RegionError(f"{path} cannot be memory-mapped "
                                  f"({size} bytes at offset {offset:#x}): "
                                  f"{getattr(e, 'strerror', None) or e}") from None
        finally:
            os.close(fd)    # the mmap keeps its own reference
        try:
            self.mem = _mapping_class()(self._mmap, strict=strict)
        except BaseException:
            self._mmap.close()
            raise
        self.size = size

    @staticmethod
    def _window_size(fd: int, path: str, offset: int, size: Optional[int]) -> int:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            available = st.st_size - offset
            if size is None:
                if st.st_size == 0:
                    raise RegionError(f"{path} is empty (0 bytes): create it with "
                                      f"`ivmpi create {path} --size 64M`")
                size = available
            elif available < size:
                raise RegionError(f"{path} is too small: {max(available, 0)} bytes at offset "
                                  f"{offset:#x}, {size} needed")
        elif size is None:
            # Some character devices report their size only through seeking.
            try:
                size = os.lseek(fd, 0, os.SEEK_END) - offset
            except OSError:
                size = 0
            if size <= 0:
                raise RegionError(f"cannot tell the size of {path}: pass size=, "
                                  f"e.g. Region.open({path!r}, size=64 << 20)")
        return size

    def close(self) -> None:
        mem, self.mem = self.mem, None
        if mem is not None:
            mem.release()
            try:
                self._mmap.close()
            except BufferError:
                raise RegionError("the region is still in use: release the memoryviews "
                                  "or arrays taken from it before closing") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Region:
    """The shared memory, mapped; see the module docstring for specs."""

    def __init__(self, target: Target, strict_align: Optional[bool] = None,
                 size: Optional[int] = None, follow_symlinks: bool = True):
        self.backend = target.backend
        self.path = target.memory.path
        self.pci_address = target.pci_address
        self.strict_align = resolve_strict_align(target.backend, strict_align)
        self._revision = target.revision
        self._registers = None
        window = target.memory
        if size is not None:
            window = Window(window.path, window.offset, parse_size(size), window.sync)
        if target.before_map is not None:
            _enable_device(target.before_map)
        # Host files are checked for who else may write them; guest device
        # files belong to root and are reported by `ivmpi info`.
        self._memory = _MappedFile(window.path, window.offset, window.size,
                                   self.strict_align, window.sync,
                                   host_file=target.backend == "file",
                                   nofollow=not follow_symlinks)
        # A host file is ordinary memory: the kernel's copies between ranks of
        # one kernel may read and write it (never a device's BAR).
        self._memory.mem.ordinary = target.backend == "file" and not self.strict_align
        self.size = self._memory.size
        if self.size < MIN_REGION_SIZE:
            self._memory.close()
            raise RegionError(f"{self.path} is too small: {self.size} bytes, "
                              f"at least {MIN_REGION_SIZE} needed")
        if target.registers is not None:
            regs = target.registers
            try:
                # MMIO registers take only 32-bit accesses: always strict.
                self._registers = _MappedFile(regs.path, regs.offset, regs.size, strict=True)
            except RegionError:
                self._registers = None  # the shared memory is usable without them

    # -- opening

    @classmethod
    def open(cls, spec: Optional[str] = None, strict_align: Optional[bool] = None,
             size: Optional[int] = None, follow_symlinks: bool = True) -> "Region":
        """Map the region named by `spec` (None: IVMPI_REGION or the single ivshmem device).

        `size` is needed only for a character device that does not report its size.
        A host file that users other than the caller and root may write or own is
        refused (IVMPI_ALLOW_OPEN_REGION=1 maps it anyway); one that every user
        may read is mapped with a RegionWarning.  `follow_symlinks=False`
        refuses a symbolic link at the path (per-job files)."""
        return cls(locate(spec), strict_align=strict_align, size=size,
                   follow_symlinks=follow_symlinks)

    @classmethod
    def create(cls, path, size, strict_align: Optional[bool] = None, mode=None, group=None,
               exclusive: bool = False) -> "Region":
        """Host side: make (or reuse) the memory backend file and map it.

        A new file gets `mode` whatever the umask: by default 0600 (only its
        owner may map it), or 0660 when `group` (a name or gid) is given, for a
        QEMU that runs as another user in that group.  An existing file of the
        same size is reused with its contents, and gets `mode` and `group` only
        when they are given; an empty one is sized; one of any other size is
        refused rather than changed, since a running VM may be using it.
        `exclusive`: the file must be new (a per-job file); an existing file or
        a symbolic link at `path` is refused."""
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        size = parse_size(size)
        if not is_power_of_two(size) or size < MIN_REGION_SIZE:
            raise RegionError(f"size {format_size(size)} ({size} bytes) is not a power of two "
                              f"of at least {MIN_REGION_SIZE} bytes (ivshmem needs one), e.g. 64M")
        new_mode = _creation_mode(mode, group)
        gid = None if group is None else _group_id(group)
        try:
            # Created private; the final mode comes from fchmod, never from the umask.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, DEFAULT_MODE)
            created = True
        except FileExistsError:
            if exclusive:
                what = "a symbolic link" if os.path.islink(path) else "an existing file"
                raise RegionError(f"{path} is {what}: a per-job region file is always new, "
                                  f"so it is refused") from None
            fd, created = None, False
        except OSError as e:
            raise _open_error(path, e, "create") from None
        try:
            if fd is None:
                fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise _open_error(path, e, "open") from None
        try:
            if created or mode is not None or group is not None:
                _set_access(fd, path, new_mode, gid)
            existing = os.fstat(fd).st_size
            if existing == 0:
                _allocate(fd, path, size)
            elif existing != size:
                raise RegionError(f"{path} already exists with size {human_size(existing)} "
                                  f"({existing} bytes), not {human_size(size)}: remove it or use "
                                  f"--size {format_size(existing)}")
        except BaseException:
            if created:
                os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls.open(path, strict_align=strict_align, follow_symlinks=not exclusive)

    # -- memory

    @property
    def mem(self):
        """The Mapping of the shared memory (for the layout and ring code)."""
        if self._memory.mem is None:
            raise RegionError(f"region {self.path} is closed")
        return self._memory.mem

    def write(self, offset: int, buf):
        return self.mem.write(offset, buf)

    def read(self, offset: int, out, nbytes=None):
        return self.mem.read(offset, out, nbytes)

    def read_bytes(self, offset: int, n: int) -> bytes:
        return self.mem.read_bytes(offset, n)

    # -- registers

    @property
    def ivposition(self) -> Optional[int]:
        """This VM's peer id from BAR0 (0 also when interrupts are not set up), or None."""
        if self._registers is None or self._registers.mem is None:
            return None
        return self._registers.mem.load_u32(IVPOSITION_OFFSET)

    @property
    def revision(self) -> Optional[int]:
        """The ivshmem device revision from sysfs, or None when not a PCI device."""
        return self._revision

    # -- closing

    @property
    def closed(self) -> bool:
        return self._memory.mem is None

    def close(self) -> None:
        if self._registers is not None:
            self._registers.close()
        self._memory.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self.closed else f"{human_size(self.size)}"
        return (f"<Region {self.path} backend={self.backend} {state} "
                f"strict_align={self.strict_align}>")


def _allocate(fd: int, path: str, size: int) -> None:
    """Size a new backend file, reserving its pages so a full /dev/shm fails here
    rather than with SIGBUS when a page is first touched."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as e:
        if e.errno == 28:   # ENOSPC
            raise RegionError(f"not enough space for {human_size(size)} at {path}") from None
        # Filesystems without fallocate: fall back to a sparse file.
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        raise RegionError(f"cannot size {path} to {size} bytes: {e.strerror}") from None
