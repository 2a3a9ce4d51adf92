"""The grader's test runner: the one program the grader starts inside the grading sandbox to run pytest.

The code under test runs in the same interpreter as pytest, so nothing that process says about itself can be
trusted outright. This runner splits the work between two processes so that what the grader reads was
written by a process the code under test cannot reach:

* The **parent** (this file, started by the grader as the sandbox's own user, never through the model's
  shell) reads its config, deletes it, makes itself non-dumpable (so no process of its uid without
  CAP_SYS_PTRACE can open its /proc entries, its pipes or its memory), and forks the child. It keeps every
  record the child sends over a pipe -- the first record for each test wins and a second is itself proof of
  tampering -- and, once the child is gone, writes the report to a file and prints the report's SHA-256
  framed by a nonce the child never saw. The grader believes a report only with that hash.
* The **child** takes pytest from the interpreter's own site-packages before any repository path is on
  `sys.path` (the equivalent of `python -P`, so a `pytest.py`, `_pytest/`, `pluggy/` or a module named like
  the grader's plugin in the repository shadows nothing), builds the reporting plugin as an object handed
  to `pytest.main` (it has no importable name to shadow), snapshots the pytest, pluggy and unittest internals
  that decide an outcome, drops to the unprivileged test uid when the parent is root, and only then puts the
  repository on `sys.path` and runs the tests. Before every report it checks those internals are the
  objects it snapshot, that no item carries its own `runtest`, that no test function changed its code after
  collection, and that no plugin that can change a report was registered after the session started
  (conftest files excepted: the grader restores them to base).

What a determined attacker inside the process can still do is to tamper in a way these checks do not look
at *and* spare the grader's canary tests; the canaries (random must-fail and must-pass tests injected into
the real test files, see `rewards/canaries.py`) make any tampering that does not know which tests are
canaries show up as a must-fail test passing.

Standard library and pytest only, and Python 3.6 syntax: it runs on the task image's interpreter.
Usage: `python RUNNER CONFIG.json` with cwd the repository.
"""

import hashlib
import json
import os
import select
import signal
import sys
import threading
import time

# hooks through which a plugin can change what a test's report says
REPORT_HOOKS = ("pytest_runtest_protocol", "pytest_runtest_makereport", "pytest_runtest_logreport",
                "pytest_report_teststatus", "pytest_runtest_call", "pytest_pyfunc_call", "pytest_runtest_setup",
                "pytest_runtest_teardown", "pytest_collection_modifyitems", "pytest_report_from_serializable",
                "pytest_runtest_logfinish", "pytest_sessionfinish")
OUTPUT_CAP = 16384


def _nondumpable():
    """prctl(PR_SET_DUMPABLE, 0): /proc/<us>/{fd,mem,environ} closed to same-uid processes without ptrace."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except Exception:  # noqa: BLE001 - no libc/ctypes: the nonce still protects the report
        pass


# ------------------------------------------------------------------------------------------------- the child

def _snapshot():
    """The objects that decide a test's outcome, taken before any repository code has run."""
    import unittest

    import _pytest.python
    import _pytest.reports
    import _pytest.runner
    import pluggy

    owners = [(_pytest.python.Function, "runtest"), (_pytest.python, "pytest_pyfunc_call"),
              (_pytest.runner, "call_and_report"), (_pytest.runner, "runtestprotocol"),
              (_pytest.runner, "call_runtest_hook"), (_pytest.runner, "pytest_runtest_makereport"),
              (_pytest.runner, "pytest_runtest_call"), (_pytest.runner, "pytest_runtest_protocol"),
              (_pytest.runner.CallInfo, "from_call"), (_pytest.reports.TestReport, "from_item_and_call"),
              (_pytest.reports.TestReport, "__init__"), (unittest.TestCase, "run"), (unittest.TestCase, "__call__"),
              (unittest.TestCase, "fail"), (unittest.TestCase, "skipTest")]
    for name in ("passed", "failed", "skipped", "outcome"):
        owners.append((_pytest.reports.BaseReport, name))
    try:
        import _pytest.unittest

        owners += [(_pytest.unittest.TestCaseFunction, "runtest"), (_pytest.unittest, "pytest_runtest_makereport")]
    except ImportError:
        pass
    try:
        import _pytest.skipping

        owners.append((_pytest.skipping, "pytest_runtest_makereport"))
    except ImportError:
        pass
    hooks = getattr(pluggy, "_hooks", None)
    callers = getattr(pluggy, "_callers", None)
    for mod, cls, attr in ((hooks, "HookCaller", "__call__"), (hooks, "_HookCaller", "__call__"),
                           (callers, None, "_multicall"), (pluggy, "PluginManager", "_hookexec")):
        owner = getattr(mod, cls, None) if (mod is not None and cls) else mod
        if owner is not None and hasattr(owner, attr):
            owners.append((owner, attr))
    table = []
    for owner, attr in owners:
        if attr in vars(owner) if isinstance(owner, type) else hasattr(owner, attr):
            value = vars(owner)[attr] if isinstance(owner, type) else getattr(owner, attr)
            table.append((owner, attr, value))
    return table


class Reporter:
    """The reporting plugin, handed to pytest as an object: every record goes out on the pipe at once."""

    def __init__(self, send, table, repo):
        self.send, self.table, self.repo = send, table, repo
        self.started = False
        self.allowed = set()  # ids of plugins present when the session started
        self.code = {}  # nodeid -> code object of the test function at collection
        self.functions = {}  # id(hookimpl) -> (hookimpl, its function at session start)
        self.problems = set()
        import _pytest

        self.pytest_home = os.path.dirname(os.path.dirname(os.path.abspath(_pytest.__file__)))

    # ---- integrity ----------------------------------------------------------------------------
    def _problem(self, text):
        if text not in self.problems:
            self.problems.add(text)
            self.send({"event": "problem", "text": text})

    def _check(self, item=None):
        if not self.table:
            return
        for owner, attr, value in self.table:
            now = vars(owner).get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
            if now is not value:
                self._problem("%s.%s was replaced" % (getattr(owner, "__name__", owner), attr))
        if self.started:
            pm = self.config.pluginmanager
            for name in REPORT_HOOKS:
                caller = getattr(pm.hook, name, None)
                for impl in (caller.get_hookimpls() if caller is not None else []):
                    if id(impl) in self.functions and impl.function is not self.functions[id(impl)][1]:
                        self._problem("the %s of %s was replaced" % (name, getattr(impl, "plugin_name", "?")))
                    plugin = impl.plugin
                    if id(plugin) in self.allowed or self._is_conftest(plugin):
                        continue
                    self._problem("a plugin registered during the session implements %s (%s)"
                                  % (name, getattr(impl, "plugin_name", "?")))
        if item is not None:
            if "runtest" in vars(item):
                self._problem("%s carries its own runtest" % item.nodeid)
            fn = getattr(item, "obj", None) if "obj" in vars(item) or hasattr(type(item), "obj") else None
            code = getattr(fn, "__code__", None)
            if item.nodeid in self.code and code is not None and code is not self.code[item.nodeid]:
                self._problem("the code of %s changed after collection" % item.nodeid)

    def _is_conftest(self, plugin):
        """Plugins that may arrive during the session: conftest files (restored to base by the grader) and
        pytest's own objects (its fixture manager registers itself at session start)."""
        if isinstance(plugin, type(sys)):
            name, path = plugin.__name__, getattr(plugin, "__file__", None) or ""
        else:
            name = type(plugin).__module__ or ""
            path = getattr(sys.modules.get(name), "__file__", None) or ""
        if name.split(".")[0] in ("_pytest", "pytest", "pluggy") and "site-packages" in path or \
                name.split(".")[0] in ("_pytest", "pluggy") and path.startswith(self.pytest_home):
            return True
        return os.path.basename(path) in ("conftest.py", "conftest.pyc") or "/__pycache__/conftest." in path

    # ---- hooks --------------------------------------------------------------------------------
    def pytest_sessionstart(self, session):
        self.config = session.config
        self.allowed = {id(p) for p in session.config.pluginmanager.get_plugins()}
        for name in REPORT_HOOKS:  # (impl, function) kept together so the id cannot be reused
            caller = getattr(session.config.pluginmanager.hook, name, None)
            for impl in (caller.get_hookimpls() if caller is not None else []):
                self.functions[id(impl)] = (impl, impl.function)
        self.started = True
        self._check()

    def pytest_collectreport(self, report):
        if report.failed:
            self.send({"event": "collect_error", "nodeid": report.nodeid})

    def pytest_collection_finish(self, session):
        for item in session.items:
            code = getattr(getattr(item, "obj", None), "__code__", None)
            if code is not None:
                self.code[item.nodeid] = code
        self.send({"event": "collected", "count": len(session.items)})
        self._check()

    def pytest_runtest_makereport(self, item, call):
        if call.when == "call":
            self._check(item)

    def pytest_runtest_logreport(self, report):
        self._check()
        xfail = hasattr(report, "wasxfail")
        status = None
        if report.when == "call":
            if report.passed:
                status = "XPASS" if xfail else "PASSED"
            elif report.skipped:
                status = "XFAIL" if xfail else "SKIPPED"
            else:
                status = "FAILED"
        elif report.failed:
            status = "ERROR"
        elif report.when == "setup" and report.skipped:
            status = "XFAIL" if xfail else "SKIPPED"
        if status is not None:
            text = ""
            if report.failed:
                try:
                    text = str(report.longrepr)[-2000:]
                except Exception:  # noqa: BLE001 - an unprintable failure is still a failure
                    text = "<unprintable>"
            self.send({"event": "test", "nodeid": report.nodeid, "when": report.when, "status": status,
                       "text": text})

    def pytest_sessionfinish(self, session, exitstatus):
        self._check()
        self.send({"event": "finished", "exitstatus": int(exitstatus)})


def child(config, results_fd):
    """Run pytest (never returns)."""
    repo = os.getcwd()
    here = os.path.dirname(os.path.abspath(__file__))
    # `python -P`, by hand: nothing of the repository or of the grader's folder is importable yet
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) not in (repo, here)
                   and not os.path.abspath(p).startswith(repo + os.sep)]
    if not config.get("safe_path", True):  # only for the grader's tests: the repository first, as `-m pytest`
        sys.path[:] = [repo] + saved
    out = os.fdopen(results_fd, "w", 1)
    lock = threading.Lock()

    def send(record):
        line = json.dumps(record) + "\n"
        with lock:
            out.write(line)
            out.flush()

    import pytest  # from the interpreter's own packages, before the repository can shadow it

    table = _snapshot() if config.get("integrity", True) else []
    reporter = Reporter(send, table, repo)
    uid, gid = config.get("uid"), config.get("gid")
    if os.getuid() == 0 and uid is not None:
        try:
            os.setgroups([])
            os.setgid(int(gid if gid is not None else uid))
            os.setuid(int(uid))
        except OSError as e:
            send({"event": "note", "text": "could not drop to uid %s: %s" % (uid, e)})
    send({"event": "uid", "uid": os.getuid()})
    # now that pytest itself is loaded: the path `python -m pytest` would have had (the repository first,
    # and whatever .pth files put there, such as an editable install's src/), less the grader's folder
    sys.path[:] = [repo] + [p for p in saved if p and os.path.abspath(p) not in (repo, here)]
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS"):
        os.environ.pop(name, None)
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    try:
        code = pytest.main(list(config["args"]), plugins=[reporter])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - reported; the parent decides
        send({"event": "note", "text": "pytest raised %s: %s" % (type(e).__name__, e)})
        code = 3
    try:
        out.flush()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(int(code) if isinstance(code, int) else 1)


# ------------------------------------------------------------------------------------------------ the parent

def _drain(fd, sink, cap):
    """Read `fd` to EOF into the bytearray `sink`, keeping its last `cap` bytes."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        sink += data
        if len(sink) > 2 * cap:
            del sink[:len(sink) - cap]
    os.close(fd)


def parent(config_path):
    with open(config_path) as f:
        config = json.load(f)
    os.unlink(config_path)  # the nonce and the report path exist only in this process now
    _nondumpable()
    nonce = config["nonce"]
    report_path = config["report"]
    results_r, results_w = os.pipe()
    output_r, output_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(results_r)
        os.close(output_r)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(output_w, 1)
        os.dup2(output_w, 2)
        os.close(output_w)
        try:
            os.setsid()  # no controlling terminal to write around the parent through
        except OSError:
            pass
        for key in list(os.environ):
            if key.startswith("SWEPOST_"):
                del os.environ[key]
        try:
            child(config, results_w)
        except BaseException:  # noqa: BLE001 - shown in the report's output tail
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        os._exit(70)
    os.close(results_w)
    os.close(output_w)
    output = bytearray()
    drainer = threading.Thread(target=_drain, args=(output_r, output, OUTPUT_CAP))
    drainer.daemon = True
    drainer.start()

    tests, texts, duplicates, problems, notes = {}, {}, [], [], []
    watch = set(config.get("watch") or [])
    state = {"collected": None, "finished": False, "exitstatus": None, "uid": None, "garbage": 0,
             "collect_errors": []}
    buf = b""
    status, exited_at = None, None
    # Read until the child has exited and the pipe has been quiet a moment, not until EOF: a process the
    # child left behind holds the pipe open and must not keep the grader waiting.
    while True:
        ready, _, _ = select.select([results_r], [], [], 0.2)
        if not ready:
            if status is None:
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status, exited_at = st, time.monotonic()
                continue
            break
        data = os.read(results_r, 65536)
        if not data:
            break
        if exited_at is not None and time.monotonic() - exited_at > 2.0:
            break  # still talking after its process is gone: not the plugin
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                record = json.loads(line.decode("utf-8"))
                event = record["event"]
            except Exception:  # noqa: BLE001 - the plugin never writes anything else
                state["garbage"] += 1
                continue
            if state["finished"] and event not in ("note", "problem"):
                duplicates.append("<%s after the session finished>" % event)  # the plugin sends nothing then
                continue
            if event == "test":
                nodeid = record.get("nodeid")
                if nodeid in tests and tests[nodeid] != "ERROR" and record.get("status") == "ERROR" \
                        and record.get("when") == "teardown":
                    tests[nodeid] = "ERROR"  # a teardown error after the call: still one test
                elif nodeid in tests:
                    duplicates.append(nodeid)
                else:
                    tests[nodeid] = record.get("status")
                if nodeid in watch and record.get("text"):
                    texts[nodeid] = record["text"][-500:]
            elif event == "collected":
                if state["collected"] is not None:
                    duplicates.append("<collection>")
                state["collected"] = record.get("count")
            elif event == "collect_error":
                state["collect_errors"].append(record.get("nodeid"))
            elif event == "finished":
                if state["finished"]:
                    duplicates.append("<finish>")
                state["finished"], state["exitstatus"] = True, record.get("exitstatus")
            elif event == "problem":
                problems.append(str(record.get("text"))[:500])
            elif event == "uid":
                if state["uid"] is None:
                    state["uid"] = record.get("uid")
            elif event == "note":
                notes.append(str(record.get("text"))[:500])
            else:
                state["garbage"] += 1
    os.close(results_r)
    if status is None:
        _, status = os.waitpid(pid, 0)
    drainer.join(1.0)
    # nothing the child started may outlive it and touch the report: its whole session goes
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    child_exit = (128 + os.WTERMSIG(status)) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    report = {"tests": tests, "texts": texts, "duplicates": duplicates, "problems": problems, "notes": notes,
              "child_exit": child_exit, "output_tail": bytes(output[-OUTPUT_CAP:]).decode("utf-8", "replace"),
              "at": time.time()}
    report.update(state)
    data = json.dumps(report).encode()
    fd = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    sys.stdout.write("\n%s:%s:%s\n" % (nonce, hashlib.sha256(data).hexdigest(), nonce))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(parent(sys.argv[1]))
