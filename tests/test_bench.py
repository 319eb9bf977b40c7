"""Smoke tests of the benchmarks: they run, their output parses, the files appear.

These tests launch mpirun themselves (single pytest process).  They never
assert a speed: timings on a shared 2-core machine mean nothing in a test.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from ivmpi import bench, benchcompare, benchsweep, sweepworker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIRUN = benchcompare.find_mpirun()
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
# The (a) column needs ivmpi's communicator and its MPI module.
HAVE_IVMPI_COMM = benchcompare.ivmpi_missing_reason() is None

needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")

ROW = re.compile(r"^\s*(\d+)\s+([\d.]+) \| ([\d.e+-]+) \u00b1 ([\d.e+-]+)\s+(\d+)$")


def run(cmd, timeout=120, **kwargs):
    return subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, **kwargs)


# ------------------------------------------------------------ pure helpers

def test_parse_size_accepts_units_and_rejects_garbage():
    assert bench.parse_size_list("0,8,1K,64KiB,16M,1G") == [0, 8, 1024, 65536, 16 << 20, 1 << 30]
    assert bench.parse_size("512B") == 512
    for bad in ("", "abc", "1.5K", "-1", "4T"):
        with pytest.raises(Exception):
            bench.parse_size(bad)


def test_pingpong_sizes_follow_mpi4py_rules():
    parse = bench.pingpong_parser().parse_args
    assert bench.pingpong_sizes(parse(["-m", "1", "-n", "16"])) == [1, 2, 4, 8, 16]
    assert bench.pingpong_sizes(parse(["-n", "4", "--zero-size"])) == [0, 1, 2, 4]
    assert bench.pingpong_sizes(parse(["--sizes", "8,0,8,1K"])) == [0, 8, 1024]
    options = parse(["-l", "500", "-s", "50", "--loop-large", "20", "--loop-huge", "3"])
    assert bench.iterations_for(8, options) == (50, 500)
    assert bench.iterations_for(1 << 16, options) == (10, 20)
    assert bench.iterations_for(1 << 24, options) == (1, 3)
    assert parse(["--count", "7"]).loop == 7


def test_no_single_copy_options_per_open_mpi_version():
    assert benchcompare.no_single_copy_args("Open MPI", (5, 0)) == ["--mca", "smsc",
                                                                    "^cma,xpmem,knem"]
    assert benchcompare.no_single_copy_args("Open MPI", (4, 1)) == [
        "--mca", "btl_vader_single_copy_mechanism", "none"]
    with pytest.raises(RuntimeError):
        benchcompare.no_single_copy_args("MPICH", (4, 2))


def test_last_error_line_picks_the_exception():
    stderr = ("Traceback (most recent call last):\n  File \"x\", line 1\n"
              "ModuleNotFoundError: No module named 'ivmpi.comm'\n"
              "--------------------------------------------------\n"
              "prterun detected that one or more processes exited\n")
    assert benchcompare.last_error_line(stderr) == \
        "ModuleNotFoundError: No module named 'ivmpi.comm'"
    assert benchcompare.last_error_line("") == "no output"


def test_rounds_rotate_so_no_transport_always_goes_first():
    jobs = ["a", "b", "c"]
    firsts = {benchcompare.rotated(jobs, r)[0] for r in range(3)}
    assert firsts == set(jobs)
    assert sorted(benchcompare.rotated(jobs, 5)) == jobs


# --------------------------------------------------------- under mpirun

@needs_mpirun
def test_pingpong_output_and_json(tmp_path):
    out = tmp_path / "pp.json"
    proc = run([MPIRUN, "-n", "2", sys.executable, "-m", "ivmpi.bench", "pingpong",
                "--transport", "mpi4py", "--zero-size", "-n", "1K", "-s", "2", "-l", "20",
                "--repeats", "2", "--small-dict", "--exchange", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# MPI PingPong Test")
    assert lines[1].startswith("# Size [B]  Bandwidth [MB/s] |")
    rows = [ROW.match(line) for line in lines[2:] if not line.startswith("#")]
    assert all(rows), lines
    expected_sizes = [0] + [1 << i for i in range(11)]
    assert [int(m.group(1)) for m in rows] == expected_sizes
    assert all(int(m.group(5)) == 40 for m in rows)  # loop x repeats samples
    assert any(line.startswith("# pickled small dict") for line in lines)
    assert any(line.startswith("# Irecv+Isend+Waitall exchange of 8 B") for line in lines)

    document = json.loads(out.read_text())
    assert document["transport"] == "mpi4py" and document["comm_size"] == 2
    assert [r["size"] for r in document["results"]] == expected_sizes
    for row in document["results"]:
        assert len(row["times"]) == 2 and row["time_min"] <= row["time_median"]
        assert row["time_min"] > 0
        assert row["bandwidth_median"] == pytest.approx(row["size"] / row["time_median"])
    assert document["small_dict"]["time_median"] > 0
    assert len(document["exchange"]["times"]) == 2 and document["exchange"]["time_median"] > 0


@needs_mpirun
def test_pingpong_pickle_mode_and_collectives(tmp_path):
    proc = run([MPIRUN, "-n", "2", sys.executable, "-m", "ivmpi.bench", "pingpong",
                "--transport", "mpi4py", "-p", "-a", "none", "--sizes", "0,100", "-l", "5"])
    assert proc.returncode == 0, proc.stderr
    assert [int(ROW.match(l).group(1)) for l in proc.stdout.splitlines()[2:]] == [0, 100]

    out = tmp_path / "coll.json"
    proc = run([MPIRUN, "--oversubscribe", "-n", "3", sys.executable, "-m", "ivmpi.bench",
                "collectives", "--transport", "mpi4py", "-l", "5", "--loop-bcast", "2",
                "--repeats", "2", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr
    document = json.loads(out.read_text())
    assert document["comm_size"] == 3
    assert set(document["results"]) == set(bench.COLLECTIVE_OPS)
    assert all(len(r["times"]) == 2 for r in document["results"].values())


@needs_mpirun
def test_no_single_copy_options_really_disable_single_copy():
    """(c) must differ from (b): Open MPI ignores unknown parameter names silently."""
    family, version = benchcompare.mpirun_version(MPIRUN)
    if family != "Open MPI" or version < (5, 0):
        pytest.skip(f"checked for Open MPI 5 only, found {family} {version}")
    code = "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"
    args = benchcompare.no_single_copy_args(family, version)
    proc = run([MPIRUN, "-n", "2", *args, "--mca", "smsc_base_verbose", "10",
                sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert "no shared-memory single-copy component available" in proc.stdout + proc.stderr


@needs_mpirun
def test_a_launcher_failing_before_any_rank_starts_is_launched_again(tmp_path):
    """Open MPI's launcher now and then fails before any rank starts; the
    job is launched again (here a stand-in fails so twice, then runs the
    real mpirun)."""
    family, version = benchcompare.mpirun_version(MPIRUN)
    count = tmp_path / "launches"
    stand_in = tmp_path / "mpirun"
    stand_in.write_text(
        "#!/bin/sh\n"
        f"echo x >> {count}\n"
        f"if [ $(wc -l < {count}) -le 2 ]; then\n"
        f"  echo \"{benchcompare.LAUNCH_FAILURE}. We cannot continue.\" >&2; exit 213\n"
        "fi\n"
        f"exec {MPIRUN} \"$@\"\n")
    stand_in.chmod(0o755)
    launcher = benchcompare.Launcher(str(stand_in), family, version, str(tmp_path))
    document = launcher.run("sm", 2, ["pingpong", "--sizes", "8", "-l", "10", "-s", "2"],
                            str(tmp_path / "x.json"))
    assert document and count.read_text().count("x") == 3


@needs_mpirun
def test_failed_launch_is_a_clear_error(tmp_path):
    family, version = benchcompare.mpirun_version(MPIRUN)
    launcher = benchcompare.Launcher(MPIRUN, family, version, str(tmp_path))
    with pytest.raises(RuntimeError, match="exit"):
        launcher.run("sm", 2, ["pingpong", "--no-such-option"], str(tmp_path / "x.json"))


@pytest.fixture(scope="module")
def quick_compare(tmp_path_factory):
    if MPIRUN is None:
        pytest.skip("mpirun not installed")
    folder = tmp_path_factory.mktemp("compare")
    json_path, png_path = folder / "results.json", folder / "results.png"
    proc = run([sys.executable, "-m", "ivmpi.benchcompare", "--quick",
                "--json", str(json_path), "--plot", str(png_path), "--region-dir", str(folder)],
               timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(json_path.read_text()), png_path


def test_compare_quick_covers_every_native_transport(quick_compare):
    proc, document, png_path = quick_compare
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sizes = [str(n) for n in benchcompare.QUICK_SIZES]
    for transport in benchcompare.NATIVE:
        assert document["transports"][transport]["available"], document["transports"][transport]
        rows = document["pingpong"][transport]
        assert all(rows[n] and rows[n]["time_median"] > 0 for n in sizes), rows
        assert document["small_dict"][transport]["time_median"] > 0
        assert document["exchange"][transport]["time_median"] > 0
    assert document["exchange"]["ivmpi"]["time_median"] > 0
    for nranks in ("2", "4"):
        ops = document["collectives"]["sm"][nranks]
        assert set(ops) == set(bench.COLLECTIVE_OPS)
    assert document["memcpy"]["bandwidth_median"] > 0
    assert document["transports"]["sm-nocopy"]["mpirun_args"]
    # The printed report has one row per size in both tables, plus the dict row.
    for label in ("0 B", "8 B", "8 KiB", "1 MiB", "pickled dict", "exchange 8 B", "memcpy"):
        assert label in proc.stdout
    assert "round 1/1" in proc.stderr
    if importlib.util.find_spec("ivmpi.copybench") is not None:
        assert document["copybench"] and "failed" not in document["copybench"]
        assert "Strict-align copy check" in proc.stdout


def test_compare_quick_reports_ivmpi_as_na_while_missing(quick_compare):
    if HAVE_IVMPI_COMM:
        pytest.skip("the ivmpi communicator exists: covered by the next test")
    proc, document, _ = quick_compare
    entry = document["transports"]["ivmpi"]
    assert not entry["available"] and "not available" in entry["error"]
    assert "(a) ivmpi region  -- n/a" in proc.stdout
    assert all(v is None for v in document["ratios"]["ivmpi/sm"].values())


def test_compare_quick_measures_ivmpi(quick_compare):
    if not HAVE_IVMPI_COMM:
        pytest.skip("the ivmpi communicator (ivmpi.comm, ivmpi.MPI) is not available yet")
    _, document, _ = quick_compare
    assert document["transports"]["ivmpi"]["available"], document["transports"]["ivmpi"]
    rows = document["pingpong"]["ivmpi"]
    assert all(rows[str(n)]["time_median"] > 0 for n in benchcompare.QUICK_SIZES)
    assert all(v > 0 for v in document["ratios"]["ivmpi/sm-nocopy"].values())
    assert set(document["collectives"]["ivmpi"]["2"]) == set(bench.COLLECTIVE_OPS)


# ------------------------------------------------------------ the sweep

def test_sweep_plan_filters_calls_and_keeps_pairs_on_two_ranks():
    options = benchsweep.parse_options(["--calls", "Send/Recv,Allreduce", "--sizes", "8,1K",
                                        "--ranks", "2,4"])
    plan = benchsweep.plan_rows(options)
    two = {(call, kind) for call, kind, _ in plan[2]}
    four = {(call, kind) for call, kind, _ in plan[4]}
    assert ("Send/Recv", "mmap") in two and ("Allreduce_init", "numpy") in two
    assert not any(sweepworker.CASES[call].pairwise for call, _ in four)
    # Buffer kinds other than numpy only for the calls that take them all.
    assert {call for call, kind in two | four if kind != "numpy"} <= set(sweepworker.KIND_CALLS)
    assert {size for _, _, size in plan[2]} == {8, 1024}
    assert all(size is None for call, _, size in plan[2] if not sweepworker.CASES[call].sized)
    with pytest.raises(SystemExit):
        benchsweep.parse_options(["--sizes", "12"])      # not a multiple of 8


def test_benchmark_jobs_share_one_allocator_setting_unless_the_caller_chose(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    launcher = benchcompare.Launcher("mpirun", "Open MPI", (5, 0), "/dev/shm")
    assert launcher.env["GLIBC_TUNABLES"] == benchcompare.STEADY_MALLOC
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
    launcher = benchcompare.Launcher("mpirun", "Open MPI", (5, 0), "/dev/shm")
    assert launcher.env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=1"


def test_sweep_reference_failure_leaves_the_row_measured():
    plan = {2: [["Bcast", "numpy", 8]]}
    samples = benchsweep.Samples()
    line = {"row": ["Bcast", "numpy", 8], "times": [2e-6], "count": 10}
    samples.add(2, "ivmpi", {("Bcast", "numpy", 8): dict(line, times=[1e-6])})
    samples.add(2, "mpi4py", {("Bcast", "numpy", 8): line})
    samples.add(2, "nocopy", {("Bcast", "numpy", 8): {"row": line["row"], "error": "hung"}})
    (row,) = benchsweep.summarize(plan, samples, {})
    assert row["ratio"] == pytest.approx(0.5) and row["error"] is None
    assert row["ratio_nocopy"] is None and row["nocopy"]["error"] == "hung"


@needs_mpirun
def test_sweep_failing_row_is_an_error_row_and_the_rest_still_runs(tmp_path):
    family, version = benchcompare.mpirun_version(MPIRUN)
    launcher = benchcompare.Launcher(MPIRUN, family, version, str(tmp_path))
    options = benchsweep.parse_options(["--quick", "--timeout", "60"])
    rows = [["no such call", "numpy", 8], ["Bcast", "numpy", 8]]
    results = benchsweep.run_launches(launcher, "mpi4py", 2, rows, options, str(tmp_path))
    assert "KeyError" in results[("no such call", "numpy", 8)]["error"]
    measured = results[("Bcast", "numpy", 8)]
    assert not measured.get("error") and all(t > 0 for t in measured["times"])


@needs_mpirun
def test_sweep_job_without_progress_is_killed_and_its_rows_are_error_rows(tmp_path):
    family, version = benchcompare.mpirun_version(MPIRUN)
    launcher = benchcompare.Launcher(MPIRUN, family, version, str(tmp_path))
    # Rows that take about a second each, against a 0.02 s limit: each job is killed.
    options = benchsweep.parse_options(["--timeout", "0.02", "--target", "0.5"])
    rows = [["Bcast", "numpy", 8], ["Barrier", "numpy", None]]
    results = benchsweep.run_launches(launcher, "mpi4py", 2, rows, options, str(tmp_path))
    assert set(results) == {tuple(row) for row in rows}
    assert all("hung" in line["error"] for line in results.values()), results


class _FlakyLaunchJob:
    """A stand-in for ServingJob whose first `failing` launches fail as this
    machine kind's launcher sometimes does (before any rank starts)."""
    made = []
    failing = 1

    def __init__(self, launcher, transport, nranks, options, workdir):
        self.made.append(transport)
        self.started = False
        self.fails = len(self.made) <= self.failing

    def run(self, row, timeout):
        if self.fails:
            return None, (benchsweep.LAUNCHER_FAILED + "job exited with status 213: "
                          "The PMIx server's listener thread failed to start. We cannot continue.")
        self.started = True
        return {"row": row, "times": [1e-6]}, None

    def close(self):
        pass


def test_sweep_runs_a_row_again_when_its_launcher_failed(tmp_path, monkeypatch):
    """A job whose launcher failed before any rank started is launched
    again and the row runs in it: no error row for the launcher's flake
    (it cost the sweep a row before).  Repeated failures stop at
    MAX_LAUNCHES jobs, as error rows."""
    monkeypatch.setattr(benchsweep, "ServingJob", _FlakyLaunchJob)
    monkeypatch.setattr(_FlakyLaunchJob, "made", [])
    options = benchsweep.parse_options(["--quick"])
    rows = [["Bcast", "numpy", 8], ["Barrier", "numpy", None]]
    results = benchsweep.run_lockstep(None, {"ivmpi": rows}, 2, options, str(tmp_path))
    assert _FlakyLaunchJob.made == ["ivmpi", "ivmpi"]
    assert [line.get("error") for line in results["ivmpi"].values()] == [None, None]

    monkeypatch.setattr(_FlakyLaunchJob, "made", [])
    monkeypatch.setattr(_FlakyLaunchJob, "failing", 10 ** 6)
    results = benchsweep.run_lockstep(None, {"ivmpi": rows}, 2, options, str(tmp_path))
    assert len(_FlakyLaunchJob.made) == benchsweep.MAX_LAUNCHES
    assert [line["error"] for line in results["ivmpi"].values()] == \
        ["not run: too many failed jobs"] * 2


@needs_mpirun
def test_sweep_runs_each_row_on_every_transport_before_the_next_row(tmp_path, monkeypatch):
    family, version = benchcompare.mpirun_version(MPIRUN)
    launcher = benchcompare.Launcher(MPIRUN, family, version, str(tmp_path))
    options = benchsweep.parse_options(["--quick", "--timeout", "60"])
    rows = [["Bcast", "numpy", 8], ["Barrier", "numpy", None], ["Allreduce", "numpy", 8]]
    calls, alive = [], []
    run = benchsweep.ServingJob.run

    def recording(job, row, timeout):
        calls.append((job.transport_name, tuple(row)))
        # Both transports' jobs are up while either runs a row.
        alive.append(sorted(name for name, proc in started if proc.poll() is None))
        return run(job, row, timeout)

    started = []
    init = benchsweep.ServingJob.__init__

    def starting(job, launcher, transport, *args):
        init(job, launcher, transport, *args)
        job.transport_name = transport
        started.append((transport, job.proc))

    monkeypatch.setattr(benchsweep.ServingJob, "run", recording)
    monkeypatch.setattr(benchsweep.ServingJob, "__init__", starting)
    workdir = tmp_path / "work"
    workdir.mkdir()
    results = benchsweep.run_lockstep(launcher, {"mpi4py": rows, "nocopy": rows[:2]}, 2,
                                      options, str(workdir), shift=1)
    # Row by row, the transports' order rotated from row to row.
    assert calls == [("nocopy", ("Bcast", "numpy", 8)), ("mpi4py", ("Bcast", "numpy", 8)),
                     ("mpi4py", ("Barrier", "numpy", None)),
                     ("nocopy", ("Barrier", "numpy", None)),
                     ("mpi4py", ("Allreduce", "numpy", 8))]
    assert len(started) == 2 and all(names == ["mpi4py", "nocopy"] for names in alive[1:4])
    assert set(results["mpi4py"]) == {tuple(row) for row in rows}
    assert set(results["nocopy"]) == {tuple(row) for row in rows[:2]}
    assert all(not line.get("error") and all(t > 0 for t in line["times"])
               for lines in results.values() for line in lines.values())
    # The jobs were told to stop and ended; their FIFOs are gone.
    assert all(proc.poll() == 0 for _, proc in started)
    assert list(workdir.iterdir()) == []


@needs_mpirun
def test_sweep_measures_both_transports_and_their_ratio(tmp_path):
    if not HAVE_IVMPI_COMM:
        pytest.skip("the ivmpi communicator (ivmpi.comm, ivmpi.MPI) is not available yet")
    json_path, png_path = tmp_path / "sweep.json", tmp_path / "sweep.png"
    proc = run([sys.executable, "-m", "ivmpi.benchsweep", "--quick", "--calls", "Allreduce",
                "--kinds", "numpy,mmap", "--rounds", "1", "--ranks", "2", "--json", str(json_path),
                "--plot", str(png_path), "--region-dir", str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(json_path.read_text())
    rows = document["rows"]
    expected = {("Allreduce", "numpy"), ("Allreduce", "mmap"), ("Allreduce_init", "numpy"),
                ("Allreduce (Op.Create)", "numpy")}
    assert {(row["call"], row["kind"]) for row in rows} == expected
    assert {row["size"] for row in rows} == set(benchsweep.QUICK_SIZES)
    for row in rows:
        assert row["ranks"] == 2 and not row["error"], row
        ours, theirs = row["ivmpi"]["time_median"], row["mpi4py"]["time_median"]
        assert ours > 0 and theirs > 0
        assert row["ratio"] == pytest.approx(ours / theirs)
        two_copies = row["nocopy"]["time_median"]
        # From 64 KiB the no-copy column is compared with ivmpi streaming
        # (IVMPI_SINGLE_COPY=0, as between VMs), below with ivmpi itself.
        streamed = row["streamed"]["time_median"]
        if row["size"] >= benchsweep.STREAMED_FROM:
            assert streamed > 0
        else:
            assert streamed is None
        assert two_copies > 0
        assert row["ratio_nocopy"] == pytest.approx((streamed or ours) / two_copies)
    assert document["summary"]["measured"] == len(rows) == 8
    assert document["summary"]["measured_nocopy"] == 8
    assert "Against mpi4py without single-copy: geometric mean" in proc.stdout
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Allreduce_init" in proc.stdout and "Geometric mean of 8 ratios" in proc.stdout


@needs_mpirun
def test_bench_win_compares_both_transports(tmp_path):
    out = tmp_path / "win.json"
    proc = run([sys.executable, "-m", "ivmpi", "bench", "win", "--rounds", "1", "--repeats", "1",
                "--quick", "--json", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr
    for label in ("Put + Flush 8 B", "Get + Flush 16 MiB", "Fetch_and_op + Flush 8 B",
                  "store into Shared_query 16 MiB"):
        assert any(line.startswith(label) for line in proc.stdout.splitlines()), proc.stdout
    document = json.loads(out.read_text())
    assert set(document["rounds"]) == {"ivmpi", "mpi4py"}
    for row in document["summary"].values():
        assert row["ivmpi"] > 0 and row["mpi4py"] > 0
        assert row["ratio"] == pytest.approx(row["ivmpi"] / row["mpi4py"])
