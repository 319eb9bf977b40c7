"""Start-up and shut-down of the job: choosing the region, initialising the
layout, and building COMM_WORLD / COMM_SELF.

Two ways to start (docs/layout.md, "Start-up"):
- under an MPI launcher: mpi4py's COMM_WORLD agrees on the region and the
  job id, then is used for nothing else;
- standalone (IVMPI_RANK and IVMPI_SIZE set, no launcher: guests without an
  MPI runtime): ranks meet through the region alone.
"""
import atexit
import os
import secrets
import threading
import time

from . import layout
from .engine import Engine, _copy_min
from .errors import IvmpiError, IvmpiTimeoutError, RegionError

WORLD_CONTEXT = 0
SELF_CONTEXT = 2
FIRST_FREE_CONTEXT = 4
DEFAULT_MAX_REGION = 256 << 20
MIN_REGION = 4 << 20
DEFAULT_HEAP_BYTES = 64 << 20

_lock = threading.Lock()
_world = None
_self = None
_region = None
_engine = None
_heartbeat = None
_under_mpi = False
_groups = None     # the node groups: world ranks sharing a region (docs/routing.md)
_kernels = None    # each world rank's kernel (boot id), None where unknown


def _env_float(name, default):
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        raise IvmpiError(f"{name}={os.environ[name]!r} is not a number") from None


def standalone_requested():
    return "IVMPI_RANK" in os.environ and "IVMPI_SIZE" in os.environ


def get_world(region=None):
    """COMM_WORLD, starting the job on first use."""
    global _world
    with _lock:
        if _world is None:
            if standalone_requested():
                _world = _start_standalone(region)
            else:
                _world = _start_with_mpi(region)
        return _world


def get_self():
    global _self
    world = get_world()
    with _lock:
        if _self is None:
            from .comm import Intracomm
            from .lib import MPI
            _self = Intracomm._create(world._engine, [world._engine.rank], SELF_CONTEXT,
                                      handle=MPI.COMM_SELF)
        return _self


def _default_region_size(nranks):
    """Rings of the default size plus a heap per rank, within DEFAULT_MAX_REGION.

    IVMPI_REGION_SIZE (e.g. 64M) overrides it.
    """
    override = os.environ.get("IVMPI_REGION_SIZE")
    if override:
        from .region import parse_size
        return parse_size(override)
    want = (layout.rings_offset(nranks)
            + nranks * nranks * (layout.RING_CTRL_BYTES + layout.DEFAULT_RING_BYTES)
            + nranks * DEFAULT_HEAP_BYTES)
    size = MIN_REGION
    while size < want and size < DEFAULT_MAX_REGION:
        size *= 2
    return size


def _open_region(spec):
    """The region by argument, else region.default_spec() (IVMPI_REGION, else
    the single ivshmem device); None on a plain host with neither, where the
    caller makes a per-job file."""
    from .region import Region, default_spec, find_ivshmem_devices
    if spec is None:
        if not os.environ.get("IVMPI_REGION", "").strip() and not find_ivshmem_devices():
            return None
        spec = default_spec()
    return Region.open(spec)


JOB_FILE_DIR = "/dev/shm"


def _create_job_region(nranks, path=None):
    """The per-job region file: always new (O_EXCL, a symbolic link at the name
    is refused) and mode 0600 whatever the umask, so only the job's user (and
    root) can map it."""
    from .region import Region
    if path is None:
        path = os.path.join(JOB_FILE_DIR, f"ivmpi-job-{os.getpid()}-{secrets.token_hex(4)}")
    return Region.create(path, size=_default_region_size(nranks), exclusive=True)


def _start_with_mpi(region_spec):
    """Start under a launcher: each rank opens its region, the ranks that
    share one form a node group (docs/routing.md), and the lowest world
    rank of each group lays the region out for its group.  Pairs of ranks
    in different groups talk through the MPI library.  A failure anywhere
    is reported everywhere (no hang)."""
    from .lib import MPI
    mpi = MPI.COMM_WORLD
    rank, size = mpi.Get_rank(), mpi.Get_size()
    # The ranks of this machine (the library's view), for the per-job file
    # of ranks that name no region, and to tell oversubscription.
    local = mpi.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    try:
        # The cores of all ranks here together: ranks bound one to a core
        # (mpirun --bind-to core) each see one, yet are not oversubscribed.
        oversubscribed = local.Get_size() > usable_cores(_allgather_plain(local, _affinity()))
        region = _open_or_create(mpi, local, region_spec)
    finally:
        local.Free()
    try:
        groups = _agree_identity(mpi, region)
        members = next(g for g in groups if rank in g)
        geo, job_id = _lay_out(mpi, region, members, rank)
    finally:
        # Once laid out, everyone has the per-job file mapped: the name is no
        # longer needed, and nothing is left behind in /dev/shm if the job
        # crashes.  On failure it goes too.
        for path in list(_created):
            _unlink_quietly(path)
    if len(groups) > 1:
        from . import routing
        routing.start_bulk(mpi)     # collective: every rank knows the groups alike
    _agree_single_copy(mpi, rank, geo.eager_limit)
    return _finish_start(region, geo, rank, job_id, mpi, _oversubscribed(oversubscribed),
                         members=members, groups=groups)


_created = set()    # per-job files this rank made, until they are unlinked


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
    _created.discard(path)


def _open_or_create(mpi, local, region_spec):
    """This rank's region: the one it names (argument, IVMPI_REGION, the
    ivshmem device), else a per-job file shared by the ranks of this machine
    that name none (made by the lowest of them)."""
    from .region import Region
    region, error = None, None
    try:
        region = _open_region(region_spec)
        if region is not None and region.size < layout.HEADER_BYTES + layout.SLOT_BYTES:
            raise RegionError(f"region {region.path} of {region.size} bytes is too small to "
                              f"hold an ivmpi header")
    except Exception as exc:
        error = f"rank {mpi.Get_rank()}: {type(exc).__name__}: {exc}"
    _raise_any(mpi, error, "opening the regions")
    # Ranks of this machine with no region share a per-job file.
    unnamed = [r for r, has in enumerate(_allgather_plain(local, region is not None)) if not has]
    me = local.Get_rank()
    plan = None
    if region is None and me == unnamed[0]:
        try:
            region = _create_job_region(len(unnamed))
            _created.add(region.path)
            plan = region.path
        except Exception as exc:
            error = f"rank {mpi.Get_rank()}: {type(exc).__name__}: {exc}"
    plans = _allgather_plain(local, (plan, error))
    errors = [e for _, e in plans if e]
    path = plans[unnamed[0]][0] if unnamed and not errors else None
    if not errors and region is None:
        try:
            region = Region.open(path, follow_symlinks=False)
        except Exception as exc:
            errors.append(f"rank {mpi.Get_rank()}: {type(exc).__name__}: {exc}")
    _raise_any(mpi, "; ".join(errors) or None, "making the per-job region file",
               cleanup=plan)
    return region


def _raise_any(mpi, error, what, cleanup=None):
    errors = [e for e in _allgather_plain(mpi, error) if e]
    if errors:
        if cleanup:
            _unlink_quietly(cleanup)
        raise RegionError(f"ivmpi start-up failed: {what}: " + "; ".join(errors))


def _agree_identity(mpi, region):
    """The node groups: world ranks that share a region, each group in
    world order, groups ordered by their lowest rank.

    Sharing is told by the region's identity word (docs/layout.md), never
    by path (a host and its guests name the same memory differently).  In
    rounds: every rank reads the word; the lowest rank of each value read
    writes a fresh random identity to its region; ranks that then read a
    fresh identity are grouped by it, the others (whose region nobody wrote,
    because another region showed the same old word) take another round.
    """
    rank = mpi.Get_rank()
    mem = region.mem
    settled = None
    while True:
        old = None if settled else layout.region_identity(mem)
        seen = _allgather_plain(mpi, old)
        writers = {}
        for r, value in enumerate(seen):
            if value is not None:
                writers.setdefault(value, r)
        fresh = None
        if old is not None and writers[old] == rank:
            fresh = layout.new_job_id()
            layout.set_region_identity(mem, fresh)
        # Every write is visible before anyone reads again.
        fresh_values = set(v for v in _allgather_plain(mpi, fresh) if v is not None)
        if settled is None:
            now = layout.region_identity(mem)
            if now in fresh_values:
                settled = now
        done = _allgather_plain(mpi, settled)
        if all(v is not None for v in done):
            break
    groups = {}
    for r, value in enumerate(done):
        groups.setdefault(value, []).append(r)
    return sorted(groups.values())


def _lay_out(mpi, region, members, rank):
    """The lowest rank of each group writes its region's header for the
    group (geometry for len(members) ranks, slot = position in members);
    the others check it and attach to their slots."""
    leader = members[0]
    plan = error = None
    if rank == leader:
        try:
            geo = layout.Geometry.choose(region.size, len(members))
            plan = layout.new_job_id()
            layout.write_header(region.mem, geo, plan)
        except Exception as exc:
            error = f"rank {rank} could not set up the region: {type(exc).__name__}: {exc}"
    plans = _allgather_plain(mpi, (plan, error))
    errors = [e for _, e in plans if e]
    if not errors:
        job_id = plans[leader][0]
        try:
            geo, seen = layout.read_header(region.mem)
            if seen != job_id:
                raise RegionError(f"the region holds job {seen:#x}, not this job {job_id:#x}")
            if geo.nranks != len(members):
                raise RegionError(f"the region is laid out for {geo.nranks} ranks, its group "
                                  f"has {len(members)}")
            layout.Slot(region.mem, members.index(rank)).attach(job_id)
        except Exception as exc:
            error = f"rank {rank}: {type(exc).__name__}: {exc}"
    _raise_any(mpi, error if not errors else "; ".join(errors), "laying out the regions")
    return geo, job_id


_single_copy_token = None   # read back by peers to prove they can read our memory
_one_copy_under_eager = True    # one copy also for buffers under the eager limit (copy_min)


def _one_copy_pays(nbytes):
    """Does the kernel copy a message of nbytes (the largest eager one)
    from a process's memory faster than the ring's two copies?  Timed in
    this process (the kernel reading our own memory, against two copies
    within it): a proxy, which errs towards one copy (the ring's copies
    cross between cores, slower than copies within a process; the
    kernel's from another process costs more than from our own).  Where
    a system call into another process's memory costs several
    microseconds (4-5 us for 4 KiB under some hypervisors, against 0.2 us
    for a copy of it; reading our own 64 KiB 3.1-4.8 copies' time) eager
    messages are the quicker way up to the eager limit: 64 KiB Sendrecv
    on 2 ranks 5 us eager against 11 in one copy, 16 KiB 2 against 6.
    IVMPI_COPY_MIN still decides when set."""
    from . import _fastcopy
    kernel, copy = _fastcopy.single_copy_timing(nbytes)
    return kernel is not None and kernel < 2 * copy


def _kernel_identity():
    """What tells this kernel and pid namespace from another's: processes
    with the same may read each other's memory (a boot id is random per
    boot, so two VMs never share one)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return boot, os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _agree_single_copy(mpi, rank, eager_limit):
    """Which pairs of ranks move large messages in one copy, from the
    sender's memory (ivmpi/_single_copy.pxi): those on one kernel where the
    reader could read the other's random token back.  Collective.
    IVMPI_SINGLE_COPY=0 turns it off (every rank must agree).
    Also whether one copy pays under the eager limit (the engine's
    copy_min), from what the kernel's copy costs here (_one_copy_pays).
    The same exchange records every rank's kernel (world._kernels): where
    ranks of different regions run on one kernel, the library connects
    them through its own shared memory (ivmpi.hierarchy's default)."""
    global _single_copy_token, _kernels, _one_copy_under_eager
    from . import _fastcopy
    size = mpi.Get_size()
    me = None
    kernel = _kernel_identity()
    if os.environ.get("IVMPI_SINGLE_COPY", "1") != "0" and kernel is not None:
        _fastcopy.allow_single_copy_readers()
        _single_copy_token = secrets.token_bytes(16)
        address, _ = _fastcopy.buffer_span(_single_copy_token)
        lines = _fastcopy.make_share_lines(size)
        me = (kernel, os.getpid(), address, _single_copy_token, lines,
              _one_copy_pays(eager_limit))
    everyone = _allgather_plain(mpi, (None if kernel is None else kernel[0], me))
    _kernels = [boot for boot, _ in everyone]
    everyone = [offer for _, offer in everyone]
    # Every rank sees the same answers: the job decides alike.
    _one_copy_under_eager = all(them[5] for them in everyone if them is not None)
    if all(them is None for them in everyone):
        return      # (every rank sees this alike: nobody offers, nobody copies)
    readable = [0] * size
    writable = [False] * size
    if me is not None:
        for peer, them in enumerate(everyone):
            if peer != rank and them is not None and them[0] == me[0]:
                _, pid, address, token, lines, _ = them
                if _fastcopy.read_peer_token(pid, address, len(token)) == token:
                    readable[peer] = pid
                    # The shared copies' lines (_single_copy.pxi) are written
                    # across: can we write ours in theirs?
                    writable[peer] = _share_copies() and \
                        _fastcopy.probe_share_write(pid, lines, rank)
    # A sender gives its address to the ranks that can read it; a pair
    # shares copies when each can read and write the other.
    found = _allgather_plain(mpi, ([bool(p) for p in readable], writable))
    readers = [reads for reads, _ in found]
    writers = [writes for _, writes in found]
    share_lines = [everyone[peer][4] if writable[peer] and writers[peer][rank] else 0
                   for peer in range(size)]
    _fastcopy.set_single_copy(readable, [readers[peer][rank] for peer in range(size)],
                              share_lines, rank, _peer_timeout_seconds())


def _share_copies():
    """IVMPI_SHARED_COPY=0 turns shared copies off (every rank must agree)."""
    return os.environ.get("IVMPI_SHARED_COPY", "1") != "0"


def _peer_timeout_seconds():
    from .liveness import _peer_timeout
    timeout = _peer_timeout()
    return timeout if timeout > 0 else 3600.0


def _allgather_plain(mpi, obj):
    """Every rank's obj, through the library with the standard pickle: the
    program's MPI.pickle settings (say, a serializer for its own types) are
    for its messages, not for start-up."""
    import pickle
    import numpy as np
    from .lib import MPI
    data = pickle.dumps(obj)
    sizes = np.zeros(mpi.Get_size(), dtype=np.int64)
    mpi.Allgather(np.array([len(data)], dtype=np.int64), sizes)
    everything = bytearray(int(sizes.sum()))
    mpi.Allgatherv([data, MPI.BYTE], [everything, sizes, MPI.BYTE])
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    return [pickle.loads(everything[offsets[i]:offsets[i + 1]]) for i in range(len(sizes))]


_ONE_REGION = ("every standalone rank must share the one region (ranks in different regions "
               "need an MPI launcher, whose library carries their messages: docs/routing.md)")


def _start_standalone(region_spec):
    try:
        rank = int(os.environ["IVMPI_RANK"])
        size = int(os.environ["IVMPI_SIZE"])
    except ValueError:
        raise IvmpiError("IVMPI_RANK and IVMPI_SIZE must be integers") from None
    if not 0 <= rank < size:
        raise IvmpiError(f"IVMPI_RANK={rank} is not in 0..IVMPI_SIZE-1 ({size - 1})")
    region = _open_region(region_spec)
    if region is None:
        raise RegionError("standalone mode needs a region: set IVMPI_REGION (a /dev/shm path, "
                          "'pci', 'devmem:ADDR', 'uio:N') or attach an ivshmem device")
    timeout = _env_float("IVMPI_START_TIMEOUT", 120.0)
    mem = region.mem
    if rank == 0:
        geo = layout.Geometry.choose(region.size, size)
        job_id = layout.new_job_id()
        layout.write_header(mem, geo, job_id, publish=False)
        deadline = time.monotonic() + timeout
        for r in range(1, size):
            slot = layout.Slot(mem, r)
            while not (slot.word(layout.S_STATE) == layout.STATE_JOINING and slot.word(layout.S_NONCE)):
                if time.monotonic() > deadline:
                    raise IvmpiTimeoutError(f"standalone start-up: rank {r} did not join within "
                                            f"{timeout:g} s (IVMPI_START_TIMEOUT); {_ONE_REGION}")
                time.sleep(0.001)
            slot.set(layout.S_ADMITTED, slot.word(layout.S_NONCE))
        layout.publish_header(mem, job_id)
    else:
        slot = layout.Slot(mem, rank)
        nonce = secrets.randbits(63) | 1
        deadline = time.monotonic() + timeout
        while True:
            if slot.word(layout.S_NONCE) != nonce or slot.word(layout.S_STATE) != layout.STATE_JOINING:
                slot.set(layout.S_NONCE, nonce)
                slot.set(layout.S_STATE, layout.STATE_JOINING)
            if (mem.load_acquire(layout.H_READY) != 0 and slot.word(layout.S_ADMITTED) == nonce):
                break
            if time.monotonic() > deadline:
                raise IvmpiTimeoutError(f"standalone start-up: rank 0 did not admit rank {rank} "
                                        f"within {timeout:g} s (IVMPI_START_TIMEOUT); "
                                        f"{_ONE_REGION}")
            time.sleep(0.001)
        geo, job_id = layout.read_header(mem)
        if geo.nranks != size:
            raise RegionError(f"the job in the region has {geo.nranks} ranks but IVMPI_SIZE={size}")
    layout.Slot(mem, rank).attach(job_id)
    # Standalone ranks are usually one per VM; IVMPI_OVERSUBSCRIBED=1 says otherwise.
    world = _finish_start(region, geo, rank, job_id, None, _oversubscribed(False))
    # Nobody sends before everyone is attached.
    world.Barrier()
    return world


def _affinity():
    """The cores this process may run on (its CPU affinity), as a list."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def usable_cores(affinities=None):
    """Cores this process (or the processes of `affinities`, their
    _affinity lists, together) may run on, capped by a cgroup v2 CPU quota
    (containers and CI runners often see every host core in os.cpu_count()
    but may use only two)."""
    if affinities is None:
        affinities = [_affinity()]
    cores = len(set().union(*map(set, affinities)))
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _oversubscribed(guess):
    value = os.environ.get("IVMPI_OVERSUBSCRIBED")
    if value in ("0", "1"):
        return value == "1"
    return guess


def _finish_start(region, geo, rank, job_id, mpi_comm, oversubscribed, members=None,
                  groups=None):
    global _region, _engine, _under_mpi, _groups
    from .comm import Intracomm
    from .lib import MPI
    world_size = geo.nranks if mpi_comm is None else mpi_comm.Get_size()
    engine = Engine(region, geo, rank, world_size, members)
    if mpi_comm is not None and not _one_copy_under_eager:
        engine.copy_min = _copy_min(geo.eager_limit + 1)
    _groups = [list(g) for g in groups] if groups else [list(range(world_size))]
    engine.set_oversubscribed(oversubscribed)
    engine.next_context = FIRST_FREE_CONTEXT
    _region, _engine = region, engine
    _under_mpi = mpi_comm is not None
    _start_heartbeat(region.mem, engine.slot)
    atexit.register(_finalize)
    # Under a launcher the library's COMM_WORLD spans the same processes in
    # the same order; standalone, no library spans the job (see comm.Comm).
    handle = MPI.COMM_WORLD if _under_mpi else MPI.COMM_SELF
    return Intracomm._create(engine, range(world_size), WORLD_CONTEXT, handle=handle)


def _start_heartbeat(mem, rank):
    """Beat in our slot so peers can tell we are alive (never by pid: peers are other VMs)."""
    global _heartbeat
    period = _env_float("IVMPI_HEARTBEAT", 0.2)
    slot = layout.Slot(mem, rank)
    stop = threading.Event()

    def beat():
        count = 0
        while not stop.wait(period):
            count += 1
            slot.set(layout.S_HEARTBEAT_NS, time.monotonic_ns())
            slot.set(layout.S_HEARTBEAT, count)
    thread = threading.Thread(target=beat, name="ivmpi-heartbeat", daemon=True)
    thread.start()
    _heartbeat = stop


def _finalize():
    if _engine is None or _region is None or _region.closed:
        return
    if _heartbeat is not None:
        _heartbeat.set()
    try:
        layout.Slot(_region.mem, _engine.slot).set(layout.S_STATE, layout.STATE_FINALIZED)
    except Exception:
        pass
    lost = sorted(_engine.liveness.lost)
    if lost and _under_mpi:
        _bound_mpi_finalize(lost)


def _bound_mpi_finalize(lost):
    """A peer was lost: MPI_Finalize, which mpi4py calls after this, may wait
    forever for it (Open MPI's closing fence does unless the launcher noticed
    the death in time).  Exit with status 1 if it has not returned within
    IVMPI_FINALIZE_TIMEOUT seconds, rather than hang the job."""
    seconds = _env_float("IVMPI_FINALIZE_TIMEOUT", 10.0)
    names = ", ".join(str(r) for r in lost)
    from ._fastcopy import start_exit_watchdog
    start_exit_watchdog(seconds, 1, (
        f"ivmpi: rank {_engine.rank}: MPI_Finalize did not return within {seconds:g} s "
        f"(IVMPI_FINALIZE_TIMEOUT) after rank(s) {names} were lost; exiting with status 1\n"))


def abort(errorcode):
    if _engine is not None and _region is not None and not _region.closed:
        layout.Slot(_region.mem, _engine.slot).set(layout.S_STATE, layout.STATE_ABORTED)
    if not standalone_requested():
        from .lib import MPI
        MPI.COMM_WORLD.Abort(errorcode)
    os._exit(errorcode if errorcode else 1)
