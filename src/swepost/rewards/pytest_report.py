"""The pytest plugin the grader loads inside the sandbox (as `swepost_grade_report`).

It records every test's outcome from pytest's own report objects and writes them as JSON when the session
ends, to a path only the grader knows. Nothing is read from stdout, so printed `PASSED ...` lines count for
nothing; a run that dies before the session ends (os._exit, a crash) leaves no report and grades as failed.
Standard library and pytest only: it runs on the task image's python.
"""

import json
import os

_RESULTS = {}
_STATE = {"collected": 0, "collect_errors": []}


def pytest_addoption(parser):
    parser.addoption("--swepost-report", default=None, help="where swepost's grader wants the JSON report")


def pytest_collectreport(report):
    if report.failed:
        _STATE["collect_errors"].append(report.nodeid)


def pytest_collection_finish(session):
    _STATE["collected"] = len(session.items)


def pytest_runtest_logreport(report):
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if report.passed:
            status = "XPASS" if xfail else "PASSED"
        elif report.skipped:
            status = "XFAIL" if xfail else "SKIPPED"
        else:
            status = "FAILED"
        if _RESULTS.get(report.nodeid) != "ERROR":
            _RESULTS[report.nodeid] = status
    elif report.failed:  # setup or teardown
        _RESULTS[report.nodeid] = "ERROR"
    elif report.when == "setup" and report.skipped:
        _RESULTS[report.nodeid] = "XFAIL" if xfail else "SKIPPED"


def pytest_sessionfinish(session, exitstatus):
    path = session.config.getoption("--swepost-report")
    if not path:
        return
    data = {"tests": _RESULTS, "exitstatus": int(exitstatus), **_STATE}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
