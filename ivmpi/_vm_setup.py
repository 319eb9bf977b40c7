"""What the QEMU harness needs before a guest can boot, built once and cached.

- QEMU and a static busybox, installed from Debian with apt-get.
- A Debian guest kernel, fetched with ``apt-get download`` and unpacked with
  ``dpkg -x`` (never installed on the host).  The ELF ``vmlinux`` is pulled
  out of the compressed bzImage once: QEMU boots it directly (PVH), which
  skips the kernel's self-decompression, ~3x faster under software emulation.
- A small initramfs: static busybox, the virtio/9p/overlay/net modules the
  guest needs to mount the host's root, and the init script below.

Everything lands in ``~/.cache/ivmpi/vm`` (or ``$IVMPI_VM_CACHE``); a rerun
whose files are present does nothing.
"""
import glob
import io
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys

from .errors import IvmpiError

# Modules the guest loads, in dependency order (computed from each module's
# ``depends=`` field).  The Debian kernel has virtio, 9p and overlay as
# modules; virtio_net is for guests joined by a virtual network.
WANTED_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_net"]

INIT_SCRIPT = r"""#!/bin/busybox sh
# Boot a guest whose root is the host's, read-only over 9p, made writable by an
# overlay in guest memory; run the job's run.sh; report its exit code; power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
stop() { sync; poweroff -f; sleep 5; reboot -f; }
fail() { echo "@@IVMPI-VM-FAIL $*@@"; stop; }
for m in $(cat /modules.order); do
    insmod "/modules/$m.ko" || fail "cannot load module $m"
done
job=""; ip=""; name=guest
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ivmpi_job=*) job="${arg#ivmpi_job=}" ;;
        ivmpi_ip=*) ip="${arg#ivmpi_ip=}" ;;
        ivmpi_name=*) name="${arg#ivmpi_name=}" ;;
    esac
done
[ -n "$job" ] || fail "no ivmpi_job= on the kernel command line"
mkdir -p /host /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
    || fail "cannot mount the host root (9p)"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "cannot mount the overlay"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/run
mkdir -p "/newroot$job"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 job "/newroot$job" \
    || fail "cannot mount the job folder (9p)"
hostname "$name"
echo "$name" > /newroot/etc/hostname
ip link set lo up
if [ -n "$ip" ]; then
    ip link set eth0 up && ip addr add "$ip" dev eth0 || fail "cannot configure eth0 as $ip"
fi
echo "@@IVMPI-VM-BEGIN@@"
chroot /newroot /bin/sh "$job/run.sh" </dev/null
rc=$?
echo "$rc" > "/newroot$job/exit_code"
echo "@@IVMPI-VM-EXIT $rc@@"
stop
"""


class VmUnavailable(IvmpiError):
    """QEMU or the guest kernel cannot be installed or used on this machine."""


def cache_dir():
    return os.environ.get("IVMPI_VM_CACHE") or os.path.expanduser("~/.cache/ivmpi/vm")


def qemu_binary():
    machine = platform.machine()
    if machine not in ("x86_64", "AMD64"):
        raise VmUnavailable(f"the VM harness runs x86_64 guests only; this host is {machine} "
                            "(see docs/vms.md for the aarch64 command line)")
    return shutil.which("qemu-system-x86_64")


def _as_root(cmd):
    if os.geteuid() == 0:
        return cmd
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"],
                                               capture_output=True).returncode == 0:
        return ["sudo", "-n", *cmd]
    raise VmUnavailable(f"`{' '.join(cmd)}` needs root, and this user is not root "
                        "and has no password-less sudo")


def _run(cmd, what, cwd=None, timeout=900):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VmUnavailable(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        raise VmUnavailable(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc.stdout


_apt_updated = False


def _apt_update():
    global _apt_updated
    if not _apt_updated:
        _run(_as_root(["apt-get", "update", "-qq"]), "apt-get update")
        _apt_updated = True


def install_packages(log=print):
    """Install QEMU and a static busybox from Debian unless they are present."""
    if qemu_binary() and os.path.exists("/bin/busybox") and _busybox_is_static():
        return
    if not shutil.which("apt-get"):
        raise VmUnavailable("QEMU is missing and there is no apt-get to install it "
                            "(install qemu-system-x86 and busybox-static)")
    log("ivmpi.vm: installing qemu-system-x86 and busybox-static with apt-get")
    _apt_update()
    _run(_as_root(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                   "qemu-system-x86", "busybox-static"]), "apt-get install")
    if not qemu_binary():
        raise VmUnavailable("apt-get installed qemu-system-x86 but qemu-system-x86_64 "
                            "is not on PATH")


def _busybox_is_static():
    with open("/bin/busybox", "rb") as f:
        head = f.read(1 << 16)
    # A dynamic binary names its interpreter (ld-linux) in the program headers.
    return b"ld-linux" not in head


def _kernel_package():
    def query():
        return subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                              capture_output=True, text=True).stdout
    out = query()
    if "Depends: linux-image-" not in out:
        _apt_update()
        out = query()
    match = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\b", out)
    if not match:
        raise VmUnavailable("apt-cache does not know linux-image-amd64; cannot find a "
                            "guest kernel")
    return match.group(1)


def fetch_kernel(cache, log=print):
    """Unpack a Debian kernel package into cache/kernel; return its root."""
    root = os.path.join(cache, "kernel")
    if glob.glob(os.path.join(root, "boot", "vmlinuz-*")):
        return root
    package = _kernel_package()
    log(f"ivmpi.vm: fetching the guest kernel {package}")
    download = os.path.join(cache, "download")
    os.makedirs(download, exist_ok=True)
    for old in glob.glob(os.path.join(download, "*.deb")):
        os.remove(old)
    cmd = ["apt-get", "download", "-q", package]
    try:
        _run(cmd, "apt-get download", cwd=download)
    except VmUnavailable:
        _apt_update()
        _run(cmd, "apt-get download", cwd=download)
    debs = glob.glob(os.path.join(download, "*.deb"))
    if not debs:
        raise VmUnavailable(f"apt-get download {package} produced no .deb")
    staging = root + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    _run(["dpkg", "-x", debs[0], staging], "dpkg -x")
    os.rename(staging, root)  # atomic: a half-unpacked kernel is never used
    shutil.rmtree(download, ignore_errors=True)
    return root


def fetch_debs(cache, name, packages, log=print):
    """Unpack Debian packages (not installed) into cache/name; return that root.

    For programs a guest needs but the host should not run, e.g. sshd.
    """
    root = os.path.join(cache, name)
    if os.path.isdir(root):
        return root
    log(f"ivmpi.vm: fetching {' '.join(packages)}")
    download = os.path.join(cache, "download-" + name)
    shutil.rmtree(download, ignore_errors=True)
    os.makedirs(download)
    cmd = ["apt-get", "download", "-q", *packages]
    try:
        _run(cmd, "apt-get download", cwd=download)
    except VmUnavailable:
        _apt_update()
        _run(cmd, "apt-get download", cwd=download)
    staging = root + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(glob.glob(os.path.join(download, "*.deb"))):
        _run(["dpkg", "-x", deb, staging], "dpkg -x")
    os.rename(staging, root)
    shutil.rmtree(download, ignore_errors=True)
    return root


def sshd_files(log=print):
    """(sshd binary, library folder) unpacked from Debian's openssh-server.

    Guests that must accept ssh (mpirun across VMs) run it from the cache, so
    the host never gets an sshd service of its own.
    """
    if not (shutil.which("ssh") and shutil.which("ssh-keygen")):
        log("ivmpi.vm: installing openssh-client with apt-get")
        _apt_update()
        _run(_as_root(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                       "openssh-client"]), "apt-get install openssh-client")
    root = fetch_debs(cache_dir(), "openssh", ["openssh-server", "libwrap0"], log)
    return os.path.join(root, "usr", "sbin", "sshd"), os.path.join(root, "usr", "lib", "x86_64-linux-gnu")


def extract_vmlinux(bzimage, out_path):
    """Write the ELF kernel hidden in an xz-compressed bzImage to out_path."""
    with open(bzimage, "rb") as f:
        data = f.read()
    start = data.find(b"\xfd7zXZ\x00")
    while start >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            tmp = out_path + ".partial"
            with open(tmp, "wb") as f:
                f.write(elf)
            os.rename(tmp, out_path)
            return out_path
        start = data.find(b"\xfd7zXZ\x00", start + 1)
    raise VmUnavailable(f"no xz-compressed ELF kernel found in {bzimage}")


def _module_files(kernel_root):
    files = {}
    for path in glob.glob(os.path.join(kernel_root, "lib", "modules", "*", "kernel", "**",
                                       "*.ko*"), recursive=True):
        name = os.path.basename(path).split(".ko")[0].replace("-", "_")
        files[name] = path
    return files


def _read_module(path):
    with open(path, "rb") as f:
        data = f.read()
    return lzma.decompress(data) if path.endswith(".xz") else data


def _module_depends(blob):
    match = re.search(rb"\x00depends=([^\x00]*)\x00", blob)
    if not match or not match.group(1):
        return []
    return [d.decode().replace("-", "_") for d in match.group(1).split(b",")]


def module_load_order(kernel_root, wanted=WANTED_MODULES):
    """[(name, module bytes)] for `wanted` and their dependencies, dependencies first."""
    files = _module_files(kernel_root)
    order, blobs = [], {}

    def visit(name, chain):
        if name in blobs:
            return
        if name not in files:
            raise VmUnavailable(f"kernel module {name} (needed by {chain}) not in {kernel_root}")
        blobs[name] = _read_module(files[name])
        for dep in _module_depends(blobs[name]):
            visit(dep, f"{name}")
        order.append(name)

    for name in wanted:
        visit(name, "the guest init")
    return [(name, blobs[name]) for name in order]


def _cpio_entry(out, name, mode, data=b"", ino=[0]):
    ino[0] += 1
    name_bytes = name.encode() + b"\x00"
    fields = [ino[0], mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0]
    out.write(b"070701" + b"".join(b"%08X" % v for v in fields))
    out.write(name_bytes)
    out.write(b"\x00" * (-(110 + len(name_bytes)) % 4))
    out.write(data)
    out.write(b"\x00" * (-len(data) % 4))


def build_initramfs(kernel_root, busybox, out_path):
    """Write a newc cpio with busybox, the modules and the init script."""
    modules = module_load_order(kernel_root)
    with open(busybox, "rb") as f:
        busybox_bytes = f.read()
    out = io.BytesIO()
    for d in ("bin", "dev", "proc", "sys", "modules", "host", "rw", "newroot", "tmp"):
        _cpio_entry(out, d, 0o040755)
    _cpio_entry(out, "bin/busybox", 0o100755, busybox_bytes)
    _cpio_entry(out, "init", 0o100755, INIT_SCRIPT.encode())
    _cpio_entry(out, "modules.order", 0o100644,
                "".join(f"{name}\n" for name, _ in modules).encode())
    for name, blob in modules:
        _cpio_entry(out, f"modules/{name}.ko", 0o100644, blob)
    _cpio_entry(out, "TRAILER!!!", 0)
    tmp = out_path + ".partial"
    with open(tmp, "wb") as f:
        f.write(out.getvalue())
    os.rename(tmp, out_path)
    return out_path


def ensure(install=True, log=print):
    """Make sure QEMU, the guest kernel and the initramfs exist; return their paths.

    Returns a dict with keys ``qemu``, ``kernel``, ``initrd``.  Raises
    VmUnavailable (with the reason) when they cannot be had.
    """
    if install:
        install_packages(log)
    qemu = qemu_binary()
    if not qemu:
        raise VmUnavailable("qemu-system-x86_64 is not installed (run scripts/install-vm-deps)")
    cache = cache_dir()
    os.makedirs(cache, exist_ok=True)
    if install:
        kernel_root = fetch_kernel(cache, log)
    else:
        kernel_root = os.path.join(cache, "kernel")
    bzimages = sorted(glob.glob(os.path.join(kernel_root, "boot", "vmlinuz-*")))
    if not bzimages:
        raise VmUnavailable(f"no guest kernel in {kernel_root} (run scripts/install-vm-deps)")
    vmlinux = os.path.join(cache, "vmlinux")
    if not os.path.exists(vmlinux):
        log("ivmpi.vm: extracting the ELF kernel from the bzImage")
        extract_vmlinux(bzimages[-1], vmlinux)
    initrd = os.path.join(cache, "initramfs.cpio")
    # Rebuilt when this file changes, so an edited init script takes effect.
    if not os.path.exists(initrd) or os.path.getmtime(initrd) < os.path.getmtime(__file__):
        if not os.path.exists("/bin/busybox"):
            raise VmUnavailable("/bin/busybox is missing (install busybox-static)")
        build_initramfs(kernel_root, "/bin/busybox", initrd)
    return {"qemu": qemu, "kernel": vmlinux, "initrd": initrd}


if __name__ == "__main__":
    print(ensure(log=lambda msg: print(msg, file=sys.stderr)))
