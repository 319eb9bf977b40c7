"""Run one of mpi4py's own test modules with ``mpi4py.MPI`` meaning ``ivmpi.MPI``.

    python run_module.py TESTDIR MODULE OUTDIR

Each rank writes OUTDIR/MODULE.rankR.json: counts and, for every failure or
error, the test's name and the last line of its traceback.
"""
import json
import os
import sys
import traceback
import unittest


def main():
    testdir, module_name, outdir = sys.argv[1:4]
    sys.path.insert(0, testdir)
    import ivmpi.substitute
    ivmpi.substitute.install()
    from mpi4py import MPI
    assert MPI.__name__ == "ivmpi.MPI", MPI
    rank = MPI.COMM_WORLD.Get_rank()
    result_path = os.path.join(outdir, f"{module_name}.rank{rank}.json")
    report = {"module": module_name, "rank": rank, "run": 0, "skipped": 0,
              "failures": [], "import_error": None}
    try:
        module = __import__(module_name)
        suite = unittest.defaultTestLoader.loadTestsFromModule(module)
        with open(os.devnull, "w") as sink:
            result = unittest.TextTestRunner(stream=sink, verbosity=0).run(suite)
        report["run"] = result.testsRun
        report["skipped"] = len(result.skipped)
        for kind, entries in (("failure", result.failures), ("error", result.errors),
                              ("unexpected success", [(t, "") for t in result.unexpectedSuccesses])):
            for test, text in entries:
                lines = [ln for ln in text.strip().splitlines() if ln.strip()]
                # A failed subtest counts against the test method it belongs to.
                name = getattr(test, "test_case", test).id()
                report["failures"].append({"test": name, "kind": kind,
                                           "reason": lines[-1] if lines else kind,
                                           "traceback": text[-3000:]})
    except BaseException as exc:          # import or set-up failure of the module
        report["import_error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    with open(result_path + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(result_path + ".tmp", result_path)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
