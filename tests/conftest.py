"""Single-process tests that launch mpirun themselves: a test failed only
because Open MPI's launcher could not start (no rank ran) is run again, at
most twice, as scripts/test and tests/conformance relaunch whole runs."""
import os

import pytest
from _pytest.runner import runtestprotocol

from ivmpi.benchcompare import LAUNCH_FAILURE

RELAUNCHES = 2


def _failed_to_launch(reports):
    return any(report.failed and LAUNCH_FAILURE in str(report.longrepr) for report in reports)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if "OMPI_COMM_WORLD_SIZE" in os.environ:
        return None         # a rank of a job: its ranks must run each test once, together
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for attempt in range(RELAUNCHES + 1):
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        if attempt == RELAUNCHES or not _failed_to_launch(reports):
            break
        item.add_report_section("call", "relaunch",
                                f"attempt {attempt + 1}: the launcher failed to start; again")
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
