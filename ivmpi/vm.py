"""Run commands inside QEMU guests that share an ivshmem region.

A guest has no disk image: it boots a Debian kernel with a tiny initramfs,
mounts the host's root read-only over 9p with an overlay in guest memory on
top, and runs the command with the host's Python and this checkout, in the
same cwd and with the same paths as on the host.  Each guest gets
``-device ivshmem-plain`` on one shared /dev/shm file, and a writable 9p
share of its own job folder (same path inside and outside) for results and
its exit code.

Command line (``python -m ivmpi.vm --help``)::

    python -m ivmpi.vm --shm /dev/shm/job --size 64M -- python examples/pingpong.py
    python -m ivmpi.vm --guests 2 --shm /dev/shm/job -- python examples/pingpong.py
    python -m ivmpi.vm setup          # install QEMU, fetch the kernel, build the initramfs

Python::

    from ivmpi import vm
    results = vm.run_guests([["python", "-c", "print(1)"]] * 2,
                            shm="/dev/shm/job", size="64M", timeout=120)
    assert all(r.returncode == 0 for r in results)
    # Two hosts' worth of memory: guests 0 and 1 share one file, guest 2 another.
    vm.run_guests(commands, shm=["/dev/shm/a", "/dev/shm/a", "/dev/shm/b"], network=True)
"""
import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from ._vm_setup import VmUnavailable, ensure as setup
from .errors import IvmpiError, IvmpiTimeoutError

__all__ = ["Guest", "GuestResult", "VmUnavailable", "GuestError", "run_guests", "run",
           "setup", "accelerator", "parse_size"]

DEFAULT_TIMEOUT = 300.0
BEGIN_MARK = "@@IVMPI-VM-BEGIN@@"
EXIT_MARK = "@@IVMPI-VM-EXIT "
FAIL_MARK = "@@IVMPI-VM-FAIL "
# Virtual network for guests that talk over IP: a QEMU hub shared through a
# UDP multicast socket on the host's loopback, one static address per guest.
NET_MCAST = "230.0.0.1"
NET_PREFIX = "10.77.0."


class GuestError(IvmpiError):
    """A guest could not boot or run its command (not: the command failed)."""


def parse_size(text):
    """'64M' -> 67108864; accepts K, M, G suffixes (powers of 1024) or bytes."""
    if isinstance(text, int):
        return text
    text = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMG" else text
    try:
        return int(number) * scale
    except ValueError:
        raise ValueError(f"not a size: {text!r} (examples: 4M, 64M, 1G)") from None


def accelerator():
    """'kvm' only when the CPU can virtualise and /dev/kvm opens; else 'tcg'.

    An opened /dev/kvm is not enough: without vmx/svm KVM initialises and
    then fails at run time, and QEMU does not fall back to TCG.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        if " vmx" not in flags and " svm" not in flags:
            return "tcg"
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return "kvm"
    except OSError:
        return "tcg"


def _checkout_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _guest_env(extra):
    """The environment a guest command starts with: the project's venv on PATH."""
    venv = os.environ.get("VIRTUAL_ENV")
    if not venv and sys.prefix != sys.base_prefix:
        venv = sys.prefix
    if not venv and os.path.exists(os.path.join(_checkout_root(), ".venv", "bin", "python")):
        venv = os.path.join(_checkout_root(), ".venv")
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {"HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "TERM": "dumb",
           "PATH": f"{venv}/bin:{path}" if venv else path}
    if venv:
        env["VIRTUAL_ENV"] = venv
    for key in ("IVMPI_TIMEOUT", "IVMPI_PEER_TIMEOUT", "OMPI_ALLOW_RUN_AS_ROOT",
                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update({k: str(v) for k, v in (extra or {}).items()})
    # The guest imports this very checkout, installed into the venv or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_checkout_root(),
                                                      env.get("PYTHONPATH")]))
    return env


def prepare_shm(shm, size):
    """Create (or grow) the backing file so that QEMU and host ranks agree on its size."""
    if size & (size - 1) or size < 4096:
        raise ValueError(f"ivshmem size must be a power of two >= 4096 bytes, got {size}")
    fd = os.open(shm, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


class GuestResult:
    """What a finished guest left: exit code, the command's output, the whole console."""

    def __init__(self, name, returncode, output, console, jobdir, timed_out=False, error=None):
        self.name = name
        self.returncode = returncode
        self.output = output
        self.console = console
        self.jobdir = jobdir
        self.timed_out = timed_out
        self.error = error

    def __repr__(self):
        return f"GuestResult({self.name!r}, returncode={self.returncode})"

    def check(self):
        """Raise GuestError (with the console) unless the command exited 0."""
        if self.returncode != 0:
            raise GuestError(f"guest {self.name}: {self.error or f'exit code {self.returncode}'}"
                             f"\n--- console of {self.name} ---\n{self.console[-6000:]}")
        return self


class Guest:
    """One QEMU guest running one command.

    command: argv list, or a string run by /bin/sh -c.
    shm/size: the ivshmem backing file and its size (None: no ivshmem device).
    env: extra environment variables for the command.
    cwd: the command's working directory (default: this process's cwd).
    jobdir: host folder shared writable at the same path (default: a temporary
        one, removed after wait() unless keep_jobdir).
    ip: static address on the guests' virtual network (None: no network).
    echo: a file to copy the console to while it runs (e.g. sys.stdout).
    """

    def __init__(self, command, *, shm=None, size="64M", env=None, cwd=None, name="guest",
                 jobdir=None, ip=None, memory="512M", echo=None, keep_jobdir=False):
        self.command = command
        self.shm = shm
        self.size = parse_size(size)
        self.env = _guest_env(env)
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.name = name
        self.ip = ip
        self.memory = memory
        self.echo = echo
        self.keep_jobdir = keep_jobdir or jobdir is not None
        self.jobdir = os.path.abspath(jobdir) if jobdir else None
        self._proc = None
        self._reader = None
        self._console = []
        self._started = None

    # -- building the command line -------------------------------------------
    def qemu_command(self, paths):
        accel = accelerator()
        cmdline = (f"console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init "
                   f"ivmpi_job={self.jobdir} ivmpi_name={self.name}")
        if self.ip:
            cmdline += f" ivmpi_ip={self.ip}/24"
        cmd = [paths["qemu"], "-M", "q35", "-accel", accel,
               "-cpu", "host" if accel == "kvm" else "max", "-smp", "1", "-m", self.memory,
               "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
               "-serial", "stdio", "-monitor", "none",
               "-kernel", paths["kernel"], "-initrd", paths["initrd"], "-append", cmdline,
               "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,"
                         "multidevs=remap",
               "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
               "-fsdev", f"local,id=job,path={self.jobdir},security_model=none",
               "-device", "virtio-9p-pci,fsdev=job,mount_tag=job"]
        if self.shm:
            cmd += ["-object", f"memory-backend-file,id=ivshmem,share=on,"
                               f"mem-path={self.shm},size={self.size}",
                    "-device", "ivshmem-plain,memdev=ivshmem"]
        if self.ip:
            last = int(self.ip.rsplit(".", 1)[1])
            cmd += ["-netdev", f"socket,id=net0,mcast={NET_MCAST}:{_net_port()},localaddr=127.0.0.1",
                    "-device", f"virtio-net-pci,netdev=net0,mac=52:54:00:77:00:{last:02x}"]
        return cmd

    def _write_run_script(self):
        command = self.command
        if not isinstance(command, str):
            command = shlex.join(str(c) for c in command)
        lines = ["# written by ivmpi.vm: the command this guest runs"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        lines += [f"export IVMPI_VM_JOBDIR={shlex.quote(self.jobdir)}",
                  f"cd {shlex.quote(self.cwd)} || exit 127", command]
        with open(os.path.join(self.jobdir, "run.sh"), "w") as f:
            f.write("\n".join(lines) + "\n")

    # -- running ---------------------------------------------------------------
    def start(self, paths=None):
        paths = paths or setup(install=False)
        if self.jobdir is None:
            self.jobdir = tempfile.mkdtemp(prefix=f"ivmpi-vm-{self.name}-")
        os.makedirs(self.jobdir, exist_ok=True)
        if any(c.isspace() for c in self.jobdir):
            raise ValueError(f"job folder path must not contain spaces: {self.jobdir!r}")
        for stale in ("exit_code",):
            if os.path.exists(os.path.join(self.jobdir, stale)):
                os.remove(os.path.join(self.jobdir, stale))
        if self.shm:
            prepare_shm(self.shm, self.size)
        self._write_run_script()
        self._started = time.monotonic()
        self._proc = subprocess.Popen(self.qemu_command(paths), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self._reader = threading.Thread(target=self._read_console, daemon=True)
        self._reader.start()
        return self

    def _read_console(self):
        for raw in iter(self._proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").replace("\r", "")
            self._console.append(line)
            # The harness's own markers and the power-off message are noise to a user.
            if self.echo is not None and "@@IVMPI-VM-" not in line \
                    and "reboot: Power down" not in line:
                self.echo.write(line)
                self.echo.flush()

    def poll(self):
        return self._proc.poll()

    def kill(self):
        if self._proc and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()

    @property
    def console(self):
        return "".join(self._console)

    def wait(self, timeout=DEFAULT_TIMEOUT):
        """Wait for the guest to power off; kill it after `timeout` seconds."""
        timed_out = False
        try:
            self._proc.wait(timeout=max(0.0, timeout - (time.monotonic() - self._started)))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
        return self._result(timed_out)

    def _result(self, timed_out):
        self._reader.join(timeout=5)
        console = self.console
        returncode, error = self._exit_code(console)
        if timed_out:
            returncode, error = None, "timed out"
        begin = console.find(BEGIN_MARK)
        end = console.find(EXIT_MARK, max(begin, 0))
        output = console[begin + len(BEGIN_MARK) + 1 if begin >= 0 else 0:
                         end if end >= 0 else len(console)]
        result = GuestResult(self.name, returncode, output, console, self.jobdir,
                             timed_out=timed_out, error=error)
        if not self.keep_jobdir:
            shutil.rmtree(self.jobdir, ignore_errors=True)
        return result

    def _exit_code(self, console):
        try:
            with open(os.path.join(self.jobdir, "exit_code")) as f:
                return int(f.read().strip()), None
        except (OSError, ValueError):
            pass
        # Markers are found by substring search: firmware escape codes can
        # eat the start of a console line.
        fail = console.find(FAIL_MARK)
        if fail >= 0:
            return 255, "guest init failed: " + console[fail + len(FAIL_MARK):].split("@@")[0]
        return 255, f"guest stopped without reporting an exit code (QEMU exit " \
                    f"{self._proc.returncode})"


_net_port_value = None


def _net_port():
    # One multicast port per host process, so that concurrent jobs' networks
    # stay apart.
    global _net_port_value
    if _net_port_value is None:
        _net_port_value = 20000 + os.getpid() % 30000
    return _net_port_value


def _per_guest(value, count, what):
    """value for every guest, or a list/tuple giving each guest its own."""
    if not isinstance(value, (list, tuple)):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"{what} lists {len(value)} entries for {count} guests")
    return list(value)


def start_guests(commands, *, shm=None, size="64M", env=None, rank_env=True, network=False,
                 names=None, echo=None, jobdirs=None, **kwargs):
    """Start one guest per command; return the Guests.

    shm (and size) is one ivshmem file for all guests, or a list with one
    entry per guest (None: that guest has no device).  Guests given the same
    file share it; guests given different files are separate hosts to ivmpi
    (docs/routing.md).  With rank_env, guest i gets IVMPI_RANK=i,
    IVMPI_SIZE=len(commands), IVMPI_REGION=pci (ivmpi's standalone mode).
    With network, guest i gets address 10.77.0.(i+1) on a shared virtual
    network.
    """
    commands = list(commands)
    shms = _per_guest(shm, len(commands), "shm")
    sizes = _per_guest(size, len(commands), "size")
    paths = setup(install=False)
    guests = []
    try:
        for i, command in enumerate(commands):
            genv = dict(env or {})
            if rank_env:
                genv.setdefault("IVMPI_RANK", str(i))
                genv.setdefault("IVMPI_SIZE", str(len(commands)))
                genv.setdefault("IVMPI_REGION", "pci")
            name = names[i] if names else f"guest{i}"
            guest = Guest(command, shm=shms[i], size=sizes[i], env=genv, name=name,
                          ip=f"{NET_PREFIX}{i + 1}" if network else None,
                          echo=echo, jobdir=jobdirs[i] if jobdirs else None, **kwargs)
            guests.append(guest.start(paths))
    except BaseException:
        for guest in guests:
            guest.kill()
        raise
    return guests


def wait_guests(guests, timeout=DEFAULT_TIMEOUT, check_timeout=True):
    """Wait for all guests; kill those still running at `timeout`.

    Raises IvmpiTimeoutError naming the hung guests, with their consoles,
    unless check_timeout is false.
    """
    deadline = time.monotonic() + timeout
    results = []
    for guest in guests:
        try:
            guest._proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            results.append(guest._result(False))
        except subprocess.TimeoutExpired:
            guest.kill()
            results.append(guest._result(True))
    hung = [r for r in results if r.timed_out]
    if hung and check_timeout:
        consoles = "\n".join(f"--- console of {r.name} ---\n{r.console[-6000:]}" for r in hung)
        raise IvmpiTimeoutError(f"guest(s) {', '.join(r.name for r in hung)} did not finish "
                                f"within {timeout:.0f} s and were killed\n{consoles}")
    return results


def run_guests(commands, *, timeout=DEFAULT_TIMEOUT, check_timeout=True, **kwargs):
    """Run one guest per command concurrently; return their GuestResults.

    Keyword arguments are those of start_guests().  A guest still running
    after `timeout` seconds is killed and IvmpiTimeoutError raised.
    """
    guests = start_guests(commands, **kwargs)
    try:
        return wait_guests(guests, timeout, check_timeout)
    finally:
        for guest in guests:
            guest.kill()


def run(command, *, timeout=DEFAULT_TIMEOUT, **kwargs):
    """Run one command in one guest (see Guest); return its GuestResult."""
    return run_guests([command], timeout=timeout, rank_env=False, **kwargs)[0]


# -- command line --------------------------------------------------------------
def _parser():
    p = argparse.ArgumentParser(
        prog="python -m ivmpi.vm",
        description="Run a command in QEMU guests sharing an ivshmem region. "
                    "`python -m ivmpi.vm setup` installs QEMU and builds the guest files.",
        usage="%(prog)s [options] -- COMMAND [ARG...]\n       %(prog)s setup")
    p.add_argument("--shm", help="ivshmem backing file, e.g. /dev/shm/job "
                                 "(default: a fresh file, removed afterwards)")
    p.add_argument("--size", default="64M", help="region size, a power of two (default 64M)")
    p.add_argument("--guests", type=int, default=1,
                   help="number of guests; guest i gets IVMPI_RANK=i, IVMPI_SIZE, "
                        "IVMPI_REGION=pci")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="kill the guests after this many seconds (default %(default)s)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set a variable in the guests (repeatable)")
    p.add_argument("--memory", default="512M", help="guest memory (default 512M)")
    p.add_argument("--network", action="store_true",
                   help="join the guests by a virtual network (10.77.0.1, .2, ...)")
    p.add_argument("--quiet", action="store_true", help="do not show the guest consoles")
    p.add_argument("command", nargs=argparse.REMAINDER)
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["setup"]:
        try:
            paths = setup(install=True, log=lambda m: print(m, file=sys.stderr))
        except VmUnavailable as exc:
            print(f"ivmpi.vm: {exc}", file=sys.stderr)
            return 1
        print(f"ivmpi.vm: ready ({accelerator()}): {paths['qemu']}, {paths['kernel']}, "
              f"{paths['initrd']}")
        return 0
    args = _parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _parser().error("no command given (put it after --)")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            _parser().error(f"--env expects NAME=VALUE, got {item!r}")
        env[key] = value
    try:
        setup(install=True, log=lambda m: print(m, file=sys.stderr))
    except VmUnavailable as exc:
        print(f"ivmpi.vm: {exc}", file=sys.stderr)
        return 1
    own_shm = args.shm is None
    shm = args.shm or f"/dev/shm/ivmpi-vm-{os.getpid()}"
    try:
        results = run_guests([command] * args.guests, shm=shm, size=args.size, env=env,
                             timeout=args.timeout, network=args.network, memory=args.memory,
                             echo=None if args.quiet else sys.stdout, check_timeout=False)
    finally:
        if own_shm and os.path.exists(shm):
            os.remove(shm)
    status = 0
    for r in results:
        if r.timed_out:
            print(f"ivmpi.vm: {r.name} did not finish within {args.timeout:.0f} s and was "
                  f"killed; its console:\n{r.console[-6000:]}", file=sys.stderr)
            status = status or 124
        elif r.returncode != 0:
            print(f"ivmpi.vm: {r.name}: {r.error or f'exit code {r.returncode}'}",
                  file=sys.stderr)
            if r.error and args.quiet:
                print(r.console[-6000:], file=sys.stderr)
            status = status or r.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
