"""mpi4py's own test suite, run unchanged on ivmpi.MPI: the drop-in measure.

    python tests/conformance/conformance.py [--ranks 1,2,3] [--modules a,b] [--all]
    python tests/conformance/conformance.py --hosts 2+2,1+1 [--modules a,b]

Takes the ``test/`` folder of the installed mpi4py version's sdist (downloaded
once with pip into .cache/), runs every module listed in modules.txt (or
those given) under ``mpirun -n N`` with ``mpi4py.MPI`` meaning
``ivmpi.MPI`` (run_module.py), and prints passed/failed per module and rank
count, then the commonest failure reasons.  Exit status 1 if any listed
module has a failure, an error, or did not finish.  --hosts runs the ranks
as if on several hosts instead (scripts/simulate-hosts: a region per
simulated host, the MPI library between them), one job per layout.
"""
import argparse
import collections
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(ROOT, ".cache")


def mpi4py_version():
    out = subprocess.run([sys.executable, "-c", "import mpi4py; print(mpi4py.__version__)"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def test_folder(version):
    """The sdist's test/ folder, downloaded and unpacked once."""
    target = os.path.join(CACHE, f"mpi4py-{version}", "test")
    if os.path.isfile(os.path.join(target, "arrayimpl.py")):
        return target
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        # Only the tarball is wanted; --no-build-isolation keeps pip from
        # building mpi4py's build dependencies just to read its metadata.
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", ":all:", "--no-build-isolation",
                        "--disable-pip-version-check", f"mpi4py=={version}", "-d", tmp],
                       check=True)
        (tarball,) = glob.glob(os.path.join(tmp, "mpi4py-*.tar.gz"))
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(f"mpi4py-{version}/test/") and m.isfile()]
            tar.extractall(CACHE, members=members, filter="data")
    return target


def listed(path):
    """Names from a list file: one per line, '#' starts a comment."""
    with open(path) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


# Open MPI's launcher on this machine kind now and then fails before any
# rank starts, printing this; such a run is launched again (at most
# LAUNCH_RETRIES times), since no test ran at all.
LAUNCH_FAILURE = "The PMIx server's listener thread failed to start"
LAUNCH_RETRIES = 2


def run_module(testdir, module, nranks, timeout, outdir, hosts=None):
    """One mpirun of one module on nranks ranks (laid out over simulated
    hosts as `hosts` says, e.g. "2+2", when given)."""
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun):
        mpirun = shutil.which("mpirun")
    simulate = [] if hosts is None else \
        [sys.executable, os.path.join(ROOT, "scripts", "simulate-hosts"), hosts]
    cmd = [mpirun, "--oversubscribe", "-n", str(nranks), *simulate, sys.executable,
           os.path.join(HERE, "run_module.py"), testdir, module, outdir]
    env = dict(os.environ)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("IVMPI_TIMEOUT", "30")
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=testdir)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = "timeout"
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    seconds = time.monotonic() - start
    reports = []
    for rank in range(nranks):
        path = os.path.join(outdir, f"{module}.rank{rank}.json")
        if os.path.exists(path):
            with open(path) as f:
                reports.append(json.load(f))
    return rc, output, seconds, reports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="1,2,3", help="rank counts, e.g. 1,2,3")
    parser.add_argument("--hosts", help="layouts of simulated hosts instead of --ranks, e.g. "
                                        "2+2,3+1,1+1+1+1 (ranks per host)")
    parser.add_argument("--modules", help="comma-separated modules (default: modules.txt)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per module run")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every failure")
    args = parser.parse_args(argv)
    testdir = test_folder(mpi4py_version())
    modules = args.modules.split(",") if args.modules else listed(os.path.join(HERE, "modules.txt"))
    if args.hosts:
        runs = [(sum(int(n) for n in layout.split("+")), layout) for layout in args.hosts.split(",")]
    else:
        runs = [(int(n), None) for n in args.ranks.split(",")]
    reasons = collections.Counter()
    bad = 0
    print(f"{'module':<24}{'ranks':>8}{'passed':>8}{'failed':>8}{'skipped':>9}{'seconds':>9}  status")
    for nranks, hosts in runs:
        for module in modules:
            for attempt in range(1 + LAUNCH_RETRIES):
                with tempfile.TemporaryDirectory() as outdir:
                    rc, output, seconds, reports = run_module(testdir, module, nranks,
                                                              args.timeout, outdir, hosts)
                if reports or LAUNCH_FAILURE not in output:
                    break
                # mpirun itself could not start (no rank ran): not the module's doing.
                print(f"    {module} on {hosts or nranks}: mpirun did not start "
                      f"({LAUNCH_FAILURE}...); launching again", flush=True)
            run = max((r["run"] for r in reports), default=0)
            skipped = max((r["skipped"] for r in reports), default=0)
            failed_tests = set()
            problems = []
            for r in reports:
                if r["import_error"]:
                    problems.append(f"rank {r['rank']}: {r['import_error']}")
                    reasons[r["import_error"][:160]] += 1
                for f in r["failures"]:
                    failed_tests.add(f["test"])
                    reasons[f["reason"][:160]] += 1
                    if args.verbose:
                        print(f"    rank {r['rank']} {f['kind']}: {f['test']}\n{f['traceback']}")
            if len(reports) < nranks:
                problems.append(f"{nranks - len(reports)} rank(s) wrote no report")
            if rc != 0:
                problems.append(f"exit status {rc}")
            failed = len(failed_tests)
            status = "ok" if not problems and not failed and run > 0 else "FAILED"
            if status != "ok":
                bad += 1
                if args.verbose or (problems and not failed):
                    print("\n".join("    " + line for line in output.strip().splitlines()[-15:]))
            print(f"{module:<24}{hosts or nranks:>8}{run - skipped - failed:>8}{failed:>8}{skipped:>9}"
                  f"{seconds:>9.1f}  {status}{': ' + '; '.join(problems) if problems else ''}",
                  flush=True)
    if reasons:
        print("\ncommonest failure reasons (count over ranks):")
        for reason, count in reasons.most_common(15):
            print(f"{count:>6}  {reason}")
    if not args.modules:
        pending = listed(os.path.join(HERE, "not_yet.txt"))
        print(f"\nnot in the list yet ({len(pending)} modules, reasons in "
              f"tests/conformance/not_yet.txt): {' '.join(pending)}")
    print(f"\nconformance: {bad} module run(s) failed" if bad else "\nconformance: all module runs passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
