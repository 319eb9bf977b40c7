"""The `ivmpi` command.

Subcommands register themselves with the ``@subcommand`` decorator below:
write ``def add_arguments(parser)`` (optional) and a ``run(args) -> int``
function, decorate ``run``, and ``main`` wires it into argparse.  Errors that
are the user's (an IvmpiError or an OSError) become one line on stderr and
exit status 1; argparse's usage errors exit with 2.
"""
import argparse
import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

from ._version import __version__
from .errors import IvmpiError


@dataclass
class Subcommand:
    name: str
    help: str
    run: Callable
    add_arguments: Optional[Callable] = None


SUBCOMMANDS = []


def subcommand(name: str, help: str, add_arguments: Optional[Callable] = None):
    """Register `run(args) -> int` as `ivmpi NAME`."""
    def register(run):
        SUBCOMMANDS.append(Subcommand(name, help, run, add_arguments))
        return run
    return register


# ----------------------------------------------------------------------------- create

def _create_arguments(parser):
    parser.add_argument("path", help="the memory backend file, e.g. /dev/shm/ivmpi")
    parser.add_argument("--size", default="64M",
                        help="a power of two, with K/M/G suffix (default 64M)")
    parser.add_argument("--mode", default=None,
                        help="octal permissions of the file (default 0600: only you may map "
                             "it; 0660 with --group)")
    parser.add_argument("--group", default=None,
                        help="give the file to this group, for a QEMU that runs as another user "
                             "in it (libvirt's libvirt-qemu or qemu user: e.g. kvm)")


def qemu_options(path: str, size: int) -> list:
    """The QEMU command-line options that give a VM this file as its ivshmem region."""
    from .region import format_size
    lines = [f"-object memory-backend-file,id=hostmem,share=on,mem-path={path},"
             f"size={format_size(size)} -device ivshmem-plain,memdev=hostmem"]
    shm_dir, name = os.path.split(path)
    if shm_dir == "/dev/shm" and size >= 1 << 20:
        # The legacy device takes a shm_open name and a size in MiB.
        lines.append(f"-device ivshmem,shm={name},size={size >> 20}")
    return lines


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Warnings (a world-readable region file) as one line each on stderr, like errors."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        print(f"ivmpi {command}: warning: {warning.message}", file=sys.stderr)


def who_may_map(path: str) -> str:
    """A line saying who the file's mode lets map it, and what to do when QEMU runs as
    someone else."""
    import stat
    from .region import describe_access, group_name, user_name
    st = os.stat(path)
    owner, group = user_name(st.st_uid), group_name(st.st_gid)
    if stat.S_IMODE(st.st_mode) & 0o060:
        return (f"{describe_access(st)}: {owner} and group {group} may map it; "
                f"QEMU must run as {owner} or as a user in group {group}")
    return (f"{describe_access(st)}: only {owner} may map it, so QEMU must run as {owner}; "
            f"if QEMU runs as another user (libvirt runs it as libvirt-qemu or qemu), use "
            f"--mode 0660 --group GROUP with a group of that user (e.g. kvm)")


@subcommand("create", "host side: create the memory backend file and print the QEMU options",
            _create_arguments)
def run_create(args) -> int:
    from .region import Region, human_size, parse_size
    existed = os.path.exists(args.path)
    with _warnings_as_lines("create"):
        region = Region.create(args.path, parse_size(args.size), mode=args.mode,
                               group=args.group)
    with region:
        path, size = region.path, region.size
    print(f"{'reusing' if existed else 'created'} {path} ({human_size(size)})")
    print(f"  {who_may_map(path)}")
    options = qemu_options(path, size)
    print("start every VM that shares it with:")
    print("  " + options[0])
    if len(options) > 1:
        print("or, on QEMU versions with only the legacy device:")
        print("  " + options[1])
    else:
        print("(the legacy `-device ivshmem,shm=NAME` needs the file in /dev/shm and at least 1M)")
    return 0


# ----------------------------------------------------------------------------- info

def _info_arguments(parser):
    parser.add_argument("spec", nargs="?", default=None,
                        help="path, shm:NAME, pci[:ADDR][:wc], pci-wc[:ADDR], "
                             "devmem:ADDRESS[:SIZE] or uio:N (default: IVMPI_REGION "
                             "or the single ivshmem device)")
    parser.add_argument("--job", action="store_true",
                        help="inside a job (under mpirun, or standalone): start it and print "
                             "its node groups, the region of each rank and the path (region "
                             "or mpi) from rank 0 to each rank")


def describe_job_layout(region) -> list:
    """Lines describing the job layout in the region (header, ranks, slots)."""
    from .layout import describe
    return describe(region.mem)


def _print_devices(devices) -> None:
    from .region import human_size
    print(f"ivshmem devices: {len(devices)}")
    for device in devices:
        ivposition = device.read_ivposition()
        fields = [device.address, f"BAR2 {human_size(device.bar2_size)}",
                  f"at {device.bar2_start:#x}",
                  f"IVPosition {'?' if ivposition is None else ivposition}"]
        if device.revision is not None:
            fields.append(f"revision {device.revision}")
        if device.enabled is False:
            fields.append("not enabled")
        print("  " + "  ".join(fields))


def _print_device_access() -> None:
    """Who may map the region in this guest; a warning when others than root may."""
    from .region import guest_device_access
    print("who may map the region here:")
    for device in guest_device_access():
        who = ", ".join(("root",) + device.others)
        if device.needs_rawio:
            who += " (the kernel also wants CAP_SYS_RAWIO, which only root has by default)"
        print(f"  {device.path}: {device.access}: {who}")
        if device.others and not device.needs_rawio:
            print(f"  warning: {' and '.join(device.others)} may map {device.path} and read and "
                  f"write every message of the jobs in the region (see Permissions in "
                  f"docs/region.md)")


@subcommand("info", "show the ivshmem devices and the region: size, backend, strict mode",
            _info_arguments)
def run_info(args) -> int:
    from .region import Region, describe_access, find_ivshmem_devices, human_size
    if args.job:
        from .routing import describe_job
        from .world import get_world
        world = get_world(region=args.spec)
        lines = describe_job(world)
        if world.Get_rank() == 0:
            print("\n".join(lines), flush=True)
        world.Barrier()
        return 0
    devices = find_ivshmem_devices()
    if devices:
        _print_devices(devices)
        _print_device_access()
    with _warnings_as_lines("info"):
        region = Region.open(args.spec)
    with region:
        print(f"region: {region.path}")
        print(f"  size: {human_size(region.size)} ({region.size} bytes)")
        print(f"  backend: {region.backend}")
        if region.backend == "file":
            print(f"  access: {describe_access(os.stat(region.path))}")
        print(f"  strict align: {'on' if region.strict_align else 'off'}")
        if region.pci_address:
            print(f"  PCI device: {region.pci_address}")
        if region.ivposition is not None:
            print(f"  IVPosition: {region.ivposition}")
        if region.revision is not None:
            print(f"  revision: {region.revision}")
        for line in describe_job_layout(region):
            print("  " + line)
    return 0


# ----------------------------------------------------------------------------- reset

def _reset_arguments(parser):
    parser.add_argument("spec", help="the region: a path or any spec `ivmpi info` takes")
    parser.add_argument("--watch", type=float, default=None,
                        help="seconds to watch the ranks' heartbeats for signs of life "
                             "(default: two heartbeat periods, 2 x IVMPI_HEARTBEAT or 0.4 s)")
    parser.add_argument("--force", action="store_true",
                        help="clear the region even if a rank still seems alive")


def _slot_words(mem, nranks):
    from . import layout
    return [(layout.Slot(mem, r).word(layout.S_STATE), layout.Slot(mem, r).word(layout.S_HEARTBEAT))
            for r in range(nranks)]


def _live_ranks(mem, nranks, watch):
    """Ranks whose slot changed (heartbeat or state) while we watched."""
    import time
    before = _slot_words(mem, nranks)
    time.sleep(watch)
    after = _slot_words(mem, nranks)
    return [(rank, b, a) for rank, (b, a) in enumerate(zip(before, after)) if b != a]


@subcommand("reset", "clear a region left behind by a crashed job (refuses while a rank is alive)",
            _reset_arguments)
def run_reset(args) -> int:
    from . import layout
    from .errors import CorruptRegionError, RegionError
    from .region import Region
    watch = args.watch
    if watch is None:
        try:
            watch = 2 * float(os.environ.get("IVMPI_HEARTBEAT") or 0.2)
        except ValueError:
            raise RegionError(f"IVMPI_HEARTBEAT={os.environ['IVMPI_HEARTBEAT']!r} is not a number")
    with Region.open(args.spec) as region:
        mem = region.mem
        if mem.size < layout.HEADER_BYTES or mem.load(layout.H_MAGIC) != layout.MAGIC:
            print(f"{region.path}: no ivmpi job in the region; nothing to reset")
            return 0
        try:
            geo, job_id = layout.read_header(mem, require_ready=False)
        except (CorruptRegionError, RegionError) as exc:
            if not args.force:
                raise RegionError(f"{region.path}: the header is invalid ({exc}), so attached ranks "
                                  f"cannot be found; pass --force to clear it anyway") from None
            geo, job_id = None, mem.load(layout.H_JOB_ID)
        if geo is not None and not args.force:
            live = _live_ranks(mem, geo.nranks, watch)
            if live:
                rank, (state0, beat0), (state1, beat1) = live[0]
                raise RegionError(
                    f"{region.path}: rank {rank} of job {job_id:#x} is alive (its slot changed "
                    f"within {watch:g} s: heartbeat {beat0} -> {beat1}, state "
                    f"{layout.STATE_NAMES.get(state0, state0)} -> "
                    f"{layout.STATE_NAMES.get(state1, state1)}); refusing to reset a region in "
                    f"use (stop the job first, or pass --force)")
        _clear(mem, geo)
        ranks = f", {geo.nranks} ranks" if geo is not None else ""
        print(f"{region.path}: cleared job {job_id:#x}{ranks}; the region is free")
    return 0


def _clear(mem, geo):
    """Zero the header, the slots, the head arrays and the ring control blocks (`ready` first)."""
    from . import layout
    if geo is None:
        mem.store_release(layout.H_READY, 0)
        mem.fill(0, min(mem.size, layout.HEADER_BYTES))
        return
    layout.clear(mem, geo)


def _bench_arguments(parser):
    parser.add_argument("what", choices=["compare", "scale", "sweep", "win"],
                        help="compare: ivmpi against mpi4py over shared memory and TCP; "
                             "scale: ping-pong in region layouts for 2..64 ranks; "
                             "sweep: every supported call and size against mpi4py; "
                             "win: one-sided Put/Get/Fetch_and_op against mpi4py")
    parser.add_argument("options", nargs=argparse.REMAINDER,
                        help="options of the benchmark (see ivmpi bench compare --help)")


@subcommand("bench", "benchmarks: ivmpi bench compare|scale|sweep|win [options] (see --help)",
            _bench_arguments)
def run_bench(args) -> int:
    if args.what == "scale":
        from .benchscale import main as run
    elif args.what == "sweep":
        from .benchsweep import main as run
    elif args.what == "win":
        from .benchwin import main as run
    else:
        from .benchcompare import main as run
    try:
        return run(args.options)
    except SystemExit as e:     # its own --help and usage errors
        return e.code if isinstance(e.code, int) else 1


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivmpi", description="MPI over QEMU ivshmem shared memory")
    parser.add_argument("--version", action="version", version=f"ivmpi {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for command in SUBCOMMANDS:
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        if command.add_arguments:
            command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:     # --version, --help and usage errors
        return e.code if isinstance(e.code, int) else 1
    try:
        return args.run(args)
    except IvmpiError as e:
        print(f"ivmpi {args.command}: {e}", file=sys.stderr)
    except OSError as e:
        print(f"ivmpi {args.command}: {e.strerror or e}"
              + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
    except KeyboardInterrupt:
        print(f"ivmpi {args.command}: interrupted", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
