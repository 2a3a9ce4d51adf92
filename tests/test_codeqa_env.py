"""The codeqa environment: a repo that is a read-only mount in real docker and bubblewrap sandboxes (no tool can
write it, reach the network or leave it), SWE-QA-Pro's tools (ranked search, views, outline, clip), the judge's
grade, and whole episodes through the agent loop and the CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_or_skip
from openai_server import ScriptedChatServer

from swepost.envs.base import EnvironmentBroken, MalformedCall, ToolError
from swepost.envs.codeqa import EXPLORE_SCRIPT, MARKER, TOOLS, CodeQAEnvironment, load_prompts
from swepost.errors import BadInput
from swepost.records import Task
from swepost.sandbox.base import SandboxError
from swepost.stages.tasks import read_task_file

REPO_ROOT = Path(__file__).resolve().parents[1]
MIRRORS = REPO_ROOT / "data" / "repos"
PINNED = "6439748ee1c52c4184dc9c7efe8a2c26bcfb8ff4"
BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), "bwrap"]
EROFS = "Read-only file system"

# Every way of writing the repo that a first-word allowlist lets through, and the usual ones: each must fail
WRITES = [
    "echo pwned > README.md",
    "echo pwned >> minicalc/stats.py",
    "printf pwned | tee minicalc/stats.py",
    "touch new_file",
    "mkdir new_dir",
    "rm -f README.md",
    "rm -rf minicalc",
    "mv README.md README.txt",
    "cp README.md README.copy",
    "ln -s /etc/passwd link",
    "chmod 777 README.md",
    "chmod -R u+w .",
    "sed -i s/total/TOTAL/ minicalc/stats.py",
    "find . -name '*.py' -delete",
    "truncate -s 0 minicalc/stats.py",
    "dd if=/dev/zero of=minicalc/stats.py bs=1 count=1 conv=notrunc",
    "python3 -c \"open('minicalc/stats.py', 'a').write('pwned')\"",
    "git -c user.name=x -c user.email=x@y commit -q --allow-empty -m pwned",
    "git checkout -q --orphan pwned",
    "ls; rm -f README.md",
    "cat README.md | tee README.md > /dev/null",
    "echo $(rm -f README.md)",
    "grep -q mean minicalc/stats.py && rm -f minicalc/stats.py",
]
# the repo's every entry: type, mode, owner, size, mtime, path, link target; then every file's sha256
MANIFEST = ("cd \"$1\" && find . -printf '%y %m %U %s %T@ %p %l\\n' | LC_ALL=C sort && "
            "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum")
CONNECT = ("python3 -c \"import socket; s = socket.socket(); s.settimeout(3)\n"
           "try:\n s.connect(('{host}', {port})); print('CONNECTED')\nexcept OSError as e: print('REFUSED', e)\"")


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    return read_task_file(REPO_ROOT / "data" / "minicalc_qa.jsonl", kind="codeqa")


def require(backend: str, request) -> None:
    if backend == "docker":
        request.getfixturevalue("base_image")
    elif backend == "bwrap":
        from swepost.sandbox.bwrap import bwrap_available

        if not bwrap_available():
            require_or_skip("bubblewrap (bwrap) is missing or cannot create namespaces here")


@pytest.fixture
def make_env(request):
    """make_env(backend, **settings) -> a CodeQAEnvironment on the bundled mirrors, closed after the test."""
    made = []

    def make(backend: str, **settings) -> CodeQAEnvironment:
        require(backend, request)
        env = CodeQAEnvironment(repos=settings.pop("repos", MIRRORS), backend=backend, **settings)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def run(env: CodeQAEnvironment, command: str) -> str:
    return env.step("execute_readonly_command", {"command": command}).content


def manifest(env: CodeQAEnvironment) -> str:
    """The repo as it is, read by a fresh root process (never the model's shell, whatever it left there)."""
    r = env.box.exec(["sh", "-c", MANIFEST, "sh", env.workdir], user="root", timeout=120)
    assert r.exit_code == 0 and r.truncated_bytes == 0, r.output[-2000:]
    return r.output


# --- the read-only guarantee --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_every_write_to_the_repo_fails_and_the_repo_stays_byte_identical(backend, make_env, tasks):
    env = make_env(backend)
    env.reset(tasks[0])
    before = manifest(env)
    assert "./minicalc/stats.py" in before and "./.git/HEAD" in before
    for command in WRITES:
        out = run(env, command)  # docker's files are root's too: some writes are refused before the mount is asked
        assert EROFS in out or "Permission denied" in out, (command, out)
    assert manifest(env) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_model_cannot_remount_or_chmod_its_way_out(backend, make_env, tasks):
    """The shell holds no capabilities; remounting, mounting over the repo or a user namespace of its own all
    fail, and even the sandbox's root (the agent, with DAC_OVERRIDE in docker) gets EROFS: it is the mount."""
    env = make_env(backend)
    env.reset(tasks[0])
    before = manifest(env)
    assert "CapEff:\t0000000000000000" in run(env, "grep CapEff /proc/self/status")
    for command in ["mount -o remount,rw {w}", "mount -t tmpfs none {w}", "mount --bind /tmp {w}",
                    "unshare -Urm sh -c 'mount -o remount,rw {w} && touch {w}/pwned'",
                    "chmod u+w {w} && touch {w}/pwned"]:
        out = run(env, command.format(w=env.workdir) + "; echo rc=$?")
        assert "rc=0" not in out, (command, out)
    root = env.box.exec(["touch", f"{env.workdir}/pwned"], user="root", timeout=30)
    assert root.exit_code != 0 and EROFS in root.output
    assert manifest(env) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_write_fails_because_the_mount_is_read_only_and_succeeds_without_it(backend, request, tasks):
    """The control: the same command as the same uid succeeds in the same task's sandbox opened writable, and
    the read-only one's agent saw a read-only mount (statvfs), so removing the mount fails this test."""
    from swepost.sandbox.task_sandbox import open_task_sandbox

    require(backend, request)
    command = "touch new_file && echo pwned > README.md && echo WROTE"
    with open_task_sandbox(tasks[0], repos=MIRRORS, backend=backend, read_only_workdir=True) as box:
        assert box.info["workdir_read_only"] is True
        out = box.run(command).output
        assert EROFS in out and "WROTE" not in out
    with open_task_sandbox(tasks[0], repos=MIRRORS, backend=backend) as box:
        assert box.info["workdir_read_only"] is False
        assert "WROTE" in box.run(command).output


def test_a_backend_that_ignores_the_option_is_refused(monkeypatch, request, tmp_path):
    """open_sandbox checks from inside that the workdir is read-only: a backend (a user's own, say) that drops
    the option is closed and refused, never handed out writable."""
    import swepost.sandbox as sandbox
    from swepost.sandbox.bwrap import BwrapSandbox

    require("bwrap", request)

    class IgnoresIt(BwrapSandbox):
        def __init__(self, *args, read_only_workdir=False, **kwargs):
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sandbox, "sandbox_class", lambda name: IgnoresIt)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(SandboxError, match="did not mount its workdir .* read-only"):
        sandbox.open_sandbox("bwrap", source_dir=tmp_path, read_only_workdir=True)


@pytest.mark.filterwarnings("ignore:the local sandbox isolates nothing")
def test_the_local_backend_is_refused_unless_allowed(tasks, tmp_path):
    from swepost.sandbox import open_sandbox

    with pytest.raises(SandboxError, match="cannot make the workdir read-only"):
        open_sandbox("local", source_dir=tmp_path, read_only_workdir=True)
    with pytest.raises(BadInput, match="allow_writable_repo"):
        CodeQAEnvironment(repos=MIRRORS, backend="local").reset(tasks[0])
    env = CodeQAEnvironment(repos=MIRRORS, backend="local", allow_writable_repo=True)
    try:
        env.reset(tasks[0])
        assert "def mean" in env.step("view_codebase", {"path": "minicalc/stats.py"}).content
        env.step("finish", {"answer": "It raises ZeroDivisionError."})
        assert env.score()["evidence"]["read_only"] is False
    finally:
        env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_network_even_when_the_task_asks_for_it(backend, make_env, tasks):
    import socket

    srv = socket.socket()  # a host service: listening, so a connection that reached it would complete
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    task = tasks[0].model_copy(update={"env": tasks[0].env.model_copy(update={"network": True})})
    env = make_env(backend)
    env.reset(task)
    try:
        for host, port in [("1.1.1.1", 80), ("8.8.8.8", 53), ("127.0.0.1", srv.getsockname()[1])]:
            out = run(env, CONNECT.format(host=host, port=port))
            assert "REFUSED" in out and "CONNECTED" not in out, (host, out)
        interfaces = run(env, "python3 -c 'import socket; print(*sorted(n for _, n in socket.if_nameindex()))'")
        assert interfaces.split() == ["lo"], interfaces
    finally:
        srv.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_and_view_arguments_cannot_leave_the_repo_or_run_anything(backend, make_env, tasks):
    env = make_env(backend)
    env.reset(tasks[0])
    before = manifest(env)
    for path in ["../etc/passwd", "/etc/passwd", f"{env.workdir}/../etc", "minicalc/../../etc/shadow", "/", ".."]:
        for tool, args in [("view_codebase", {"path": path}), ("semantic_search", {"term": "root", "path": path})]:
            with pytest.raises(ToolError, match="outside the repository"):
                env.step(tool, args)
    for path in ["README.md; rm -rf {w}", "$(rm -rf {w})", "`touch {w}/pwned`", "README.md && touch pwned"]:
        with pytest.raises(ToolError, match="does not exist"):
            env.step("view_codebase", {"path": path.format(w=env.workdir)})
    for term in ["$(touch {w}/pwned)", "'; rm -rf {w}; echo '", "mean && rm README.md", "`rm README.md`",
                 "mean\x00; rm README.md", "mean' ; import os; os.remove('README.md') #"]:
        found = json.loads(env.step("semantic_search", {"term": term.format(w=env.workdir)}).content)
        assert found["success"] is True
    assert manifest(env) == before


@pytest.mark.docker
def test_a_symlink_in_the_repo_does_not_lead_the_tools_out(make_env, tmp_path):
    """A repo may hold a symlink to /etc: view and search follow nothing out of the repo (the model may still
    cat /etc/passwd with a command: the tools give nothing a command could not, and write nothing)."""
    repo = tmp_path / "repos" / "evil__links"
    repo.mkdir(parents=True)
    (repo / "code.py").write_text("def rooted():\n    return 'root'\n")
    (repo / "leak").symlink_to("/etc")
    (repo / "passwd").symlink_to("/etc/passwd")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "links"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    task = Task(instance_id="evil-1", kind="codeqa", repo="evil/links", base_commit=commit,
                problem_statement="What is in /etc?", verify={"reference_answer": "nothing"})
    env = make_env("docker", repos=tmp_path / "repos")
    env.reset(task)
    for path in ["leak", "leak/passwd", "passwd"]:
        for tool, args in [("view_codebase", {"path": path}), ("semantic_search", {"term": "root", "path": path})]:
            with pytest.raises(ToolError, match="outside the repository"):
                env.step(tool, args)
    found = json.loads(env.step("semantic_search", {"term": "root"}).content)
    assert [f["path"] for f in found["files"]] == ["code.py"]
    listing = env.step("view_codebase", {"path": "."}).content.splitlines()
    leak = f"{env.workdir}/leak/"
    assert f"{env.workdir}/code.py" in listing and not any(p.startswith(leak) and p != leak for p in listing)


def test_malformed_arguments_are_format_errors():
    env = CodeQAEnvironment(backend="docker")  # no episode: each call is refused before any sandbox is needed
    bad = [("semantic_search", {}), ("semantic_search", {"term": 3}),
           ("semantic_search", {"term": "x", "max_files": "9"}),
           ("semantic_search", {"term": "x", "python_only": "yes"}),
           ("semantic_search", {"term": "x", "bogus": 1}), ("semantic_search", "{not json"),
           ("semantic_search", ["term"]), ("view_codebase", {}), ("view_codebase", {"path": "a", "view_range": "1-5"}),
           ("view_codebase", {"path": "a", "view_range": [1]}),
           ("view_codebase", {"path": "a", "view_range": [1.0, 2]}),
           ("view_codebase", {"path": "a", "concise": 1}), ("execute_readonly_command", {"cmd": "ls"}),
           ("finish", {}), ("finish", {"answer": ["a"]}), ("no_such_tool", {})]
    for name, args in bad:
        with pytest.raises(MalformedCall):
            env.step(name, args)
    for name, args in [("semantic_search", {"term": "  "}), ("semantic_search", {"term": "x", "max_files": 0}),
                       ("view_codebase", {"path": "a", "view_range": [0, 3]}),
                       ("view_codebase", {"path": "a", "view_range": [5, 2]}), ("view_codebase", {"path": ""}),
                       ("execute_readonly_command", {"command": " "}), ("finish", {"answer": "  "})]:
        with pytest.raises(ToolError) as e:
            env.step(name, args)
        assert not isinstance(e.value, MalformedCall), (name, args)
    with pytest.raises(EnvironmentBroken):
        env.step("semantic_search", {"term": "mean"})


# --- the tools, on a checkout (the script as the sandbox runs it) and through a sandbox ---------------------

def explore(request: dict) -> dict:
    """codeqa_explore.py as the environment runs it: isolated mode, argv JSON, one reply line."""
    r = subprocess.run([sys.executable, "-I", "-S", "-B", str(EXPLORE_SCRIPT), json.dumps(request)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.split(MARKER, 1)[1])


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    from swepost.sandbox.repos import checkout

    task = Task(instance_id="t", repo="swepost/minicalc", base_commit=PINNED, problem_statement="?")
    return checkout(task, MIRRORS, tmp_path_factory.mktemp("minicalc") / "repo")


def search(root: Path, term: str, **kw) -> dict:
    reply = explore({"op": "search", "root": str(root), "path": str(kw.pop("path", root)), "term": term,
                     "python_only": False, "include_lines": False, "max_files": 100, "max_chars": 6000, **kw})
    assert reply["ok"], reply
    return json.loads(reply["text"])


def view(root: Path, path: str, **kw) -> dict:
    return explore({"op": "view", "root": str(root), "path": str(root / path), "view_range": None,
                    "concise": False, "python_only": False, "max_chars": 6000, **kw})


@pytest.mark.parametrize("term, defined_in", [
    ("mean", "minicalc/stats.py"), ("variance", "minicalc/stats.py"), ("mode", "minicalc/stats.py"),
    ("slugify", "minicalc/text.py"), ("truncate", "minicalc/text.py"), ("word_count", "minicalc/text.py"),
    ("round_half_up", "minicalc/arith.py"), ("clamp", "minicalc/arith.py"),
    ("days_in_month", "minicalc/dates.py"), ("_DAYS_IN_MONTH", "minicalc/dates.py"),
    ("__version__", "minicalc/__init__.py"),
    ("daysInMonth", "minicalc/dates.py"), ("DaysInMonth", "minicalc/dates.py"),  # any naming style
    ("leap year", "minicalc/dates.py"), ("ValueError for empty data", "minicalc/stats.py"),
])
def test_search_ranks_the_defining_file_first(checkout, term, defined_in):
    found = search(checkout, term)
    assert found["files"][0]["path"] == defined_in, found["files"][:3]
    assert found["success"] and "BM25" in found["ranking"]


def test_search_reports_lines_definitions_and_scope(checkout):
    found = search(checkout, "mean", include_lines=True)
    top = found["files"][0]
    assert top["defines"] == ["mean"] and {"line": 7, "text": "def mean(values):"} in top["matches"]
    assert all(f["score"] > 0 and f["count"] >= 1 for f in found["files"])
    one = search(checkout, "count", path=checkout / "minicalc" / "stats.py", include_lines=True)
    assert one["scope"] == "file" and [f["path"] for f in one["files"]] == ["minicalc/stats.py"]
    assert [m["line"] for m in one["files"][0]["matches"]] == [10, 13, 14, 18, 34]
    assert all(f["path"].endswith(".py") for f in search(checkout, "mean", python_only=True)["files"])
    assert len(search(checkout, "value", max_files=2)["files"]) == 2
    assert search(checkout, "zzzunheardof")["files"] == []


def test_search_output_stays_valid_json_within_the_cap(tmp_path):
    for i in range(300):
        (tmp_path / f"module_{i:03}.py").write_text("".join(f"token_{j} = 'needle {j}'\n" for j in range(40)))
    found = search(tmp_path, "needle", include_lines=True, max_files=300, max_chars=6000)
    text = json.dumps(found, ensure_ascii=False)
    assert len(text) <= 6000 and found["truncated"] and "output limit" in found["note"]
    assert found["matched_files"] == 300 and 0 < len(found["files"]) < 300


def test_view_lines_ranges_outline_trees_and_clip(checkout, tmp_path):
    whole = view(checkout, "minicalc/stats.py")["text"]
    assert whole.startswith(f"File view: {checkout}/minicalc/stats.py\n     1 ")
    assert "    14     return total / count" in whole
    part = view(checkout, "minicalc/stats.py", view_range=[7, 9])["text"].splitlines()
    assert [line[:6].strip() for line in part[1:]] == ["7", "8", "9"]
    tail = view(checkout, "minicalc/stats.py", view_range=[46, -1])["text"].splitlines()
    assert [int(line[:6]) for line in tail[1:]] == [46, 47, 48]
    assert "past the end" in view(checkout, "minicalc/stats.py", view_range=[400, -1])["error"]
    outline = view(checkout, "minicalc/stats.py", concise=True)["text"]
    assert "     9     ... elided lines 9-14 ..." in outline and "total = 0" not in outline
    assert "     7 def mean(values):" in outline and "    48     return math.sqrt(variance(values))" in outline
    tree = view(checkout, ".")["text"]
    assert f"{checkout}/minicalc/stats.py" in tree and f"{checkout}/tests/" in tree and ".git" not in tree
    assert "python_only" in view(checkout, "README.md", python_only=True)["error"]
    assert "README.md" not in view(checkout, ".", python_only=True)["text"]
    (tmp_path / "big.py").write_text("".join(f"x_{i} = {i}\n" for i in range(3000)))
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01" * 100)
    clipped = view(tmp_path, "big.py")["text"]
    assert len(clipped) < 6400 and clipped.endswith("</NOTE>") and "<response clipped>" in clipped
    assert "binary" in view(tmp_path, "blob.bin")["error"]


def test_the_sandbox_script_parses_as_python_3_6():
    ast.parse(EXPLORE_SCRIPT.read_text(), feature_version=(3, 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tools_through_the_sandbox(backend, make_env, tasks):
    env = make_env(backend)
    messages = env.reset(tasks[0])
    assert [t["function"]["name"] for t in env.tools()] == ["semantic_search", "view_codebase",
                                                            "execute_readonly_command", "finish"]
    assert tasks[0].problem_statement in messages[1]["content"] and "path: line" in messages[0]["content"]
    found = json.loads(env.step("semantic_search", {"term": "mean"}).content)
    assert found["root"] == env.workdir and found["files"][0]["path"] == "minicalc/stats.py"
    assert "elided lines 9-14" in env.step("view_codebase", {"path": "minicalc/stats.py", "concise": True}).content
    lines = env.step("view_codebase", {"path": f"{env.workdir}/minicalc/stats.py", "view_range": [14, 14]}).content
    assert lines == f"File view: {env.workdir}/minicalc/stats.py\n    14     return total / count"
    assert run(env, "git log --oneline -1").startswith(PINNED[:7])  # git reads a repo owned by another uid
    assert "[exit code 3]" in run(env, "exit 3")
    env.tool_timeout = 1
    assert "[timed out after 1 s]" in run(env, "sleep 30")
    done = env.step("finish", {"answer": "It raises ZeroDivisionError."})
    assert done.done and done.answer == "It raises ZeroDivisionError." and env.final_diff() == ""


# --- the grade ----------------------------------------------------------------------------------------------

def graded(task: Task, answer: str | None, **settings) -> dict:
    """score() as an episode ends it, without a sandbox: the judge needs only the task and the answer."""
    env = CodeQAEnvironment(backend="docker", **settings)
    env.task, env.answer = task, answer
    return env.score()


def test_the_lexical_judge_is_the_default_and_says_so(tasks):
    good = graded(tasks[0], tasks[0].verify.reference_answer)
    wrong = graded(tasks[0], "It returns 0.0 for an empty list, as the docstring says.")
    assert good["resolved"] == "RESOLVED_FULL" and good["reward"] > wrong["reward"]
    assert wrong["resolved"] == "RESOLVED_NO"
    ev = good["evidence"]
    assert ev["judge"] == "lexical" and "not a model" in ev["note"] and ev["total"] == sum(ev["scores"].values())
    assert ev["qa_type"] == "what" and ev["threshold"] == 0.7 and ev["judge_failed"] is False
    strict = graded(tasks[0], tasks[0].verify.reference_answer[:120], resolved_threshold=0.99)
    assert strict["resolved"] == "RESOLVED_NO" and strict["reward"] < 0.99


def test_no_answer_gets_the_judges_missing_answer_reward(tasks):
    for answer in (None, ""):
        out = graded(tasks[0], answer, judge={"missing_answer_reward": 0.25})
        assert out["reward"] == 0.25 and out["resolved"] == "RESOLVED_NO" and out["evidence"]["missing_answer"]


def test_a_task_without_a_reference_is_ungraded(tasks):
    task = tasks[0].model_copy(update={"verify": tasks[0].verify.model_copy(update={"reference_answer": None})})
    out = graded(task, "anything")
    assert out["reward"] is None and out["resolved"] == "UNGRADED" and "no reference" in out["evidence"]["reason"]


def test_an_endpoint_judge_scores_and_its_failure_is_never_a_score(tasks):
    scores = {"correctness": 9, "completeness": 8, "relevance": 10, "clarity": 7, "reasoning": 8}
    with ScriptedChatServer([{"content": json.dumps(scores)}], default={"content": "I would rather not say."}) as srv:
        judge = {"base_url": srv.base_url, "model": "judge", "max_attempts": 2, "max_retries": 0}
        out = graded(tasks[0], "It raises ZeroDivisionError (minicalc/stats.py: line 14).", judge=judge)
        assert out["reward"] == pytest.approx((0.3 * 9 + 0.2 * 8 + 0.2 * 10 + 0.1 * 7 + 0.2 * 8) / 10)
        assert out["resolved"] == "RESOLVED_FULL" and out["evidence"]["total"] == 42
        assert out["evidence"]["judge"] == "openai" and out["evidence"]["model"] == "judge"
        failed = graded(tasks[0], "Another answer.", judge=judge)
    assert failed["reward"] is None and failed["resolved"] == "UNGRADED"
    assert failed["evidence"]["judge_failed"] is True and failed["evidence"]["cause"]
    with pytest.raises(BadInput, match="judge.model"):
        CodeQAEnvironment(judge={"base_url": "http://127.0.0.1:9/v1"})


def test_prompts_are_files_and_checked(tmp_path):
    prompts = load_prompts()
    assert "{question}" in prompts["user"] and "{workdir}" in prompts["system"]
    (tmp_path / "codeqa_system.md").write_text("Repo {repo} at {workdir}.")
    (tmp_path / "codeqa_user.md").write_text("{problem_statement}")
    with pytest.raises(BadInput, match="unknown template field"):
        load_prompts(tmp_path)
    assert {t["function"]["name"] for t in TOOLS} == {"semantic_search", "view_codebase", "execute_readonly_command",
                                                      "finish"}


# --- whole episodes -----------------------------------------------------------------------------------------

def turns(answer: str) -> list[dict]:
    call = lambda name, **args: {"tool_calls": [{"name": name, "arguments": args}]}  # noqa: E731
    return [call("semantic_search", term="mean"),
            call("view_codebase", path="minicalc/stats.py", view_range=[7, 14]),
            call("execute_readonly_command", command="grep -n 'raise ValueError' minicalc/stats.py"),
            call("finish", answer=answer)]


def test_an_episode_through_the_agent_loop(request, tasks):
    from swepost.agent import run_episode
    from swepost.policies.scripted import ScriptedPolicy

    require("bwrap", request)
    rewards = {}
    for name, answer in [("good", tasks[0].verify.reference_answer), ("wrong", "It returns None.")]:
        env = CodeQAEnvironment(repos=MIRRORS, backend="bwrap")
        traj = run_episode(ScriptedPolicy(turns=turns(answer)), env, tasks[0])
        assert traj.exit_status == "submitted" and traj.answer == answer and traj.tool_errors == 0, traj.error
        assert [m["name"] for m in traj.messages if m["role"] == "tool"][:3] == [
            "semantic_search", "view_codebase", "execute_readonly_command"]
        assert traj.environment == "codeqa" and traj.final_diff == "" and traj.evidence["judge"] == "lexical"
        rewards[name] = (traj.reward, traj.resolved)
    assert rewards["good"] == (1.0, "RESOLVED_FULL")
    assert rewards["wrong"][0] < rewards["good"][0] and rewards["wrong"][1] == "RESOLVED_NO"


@pytest.mark.docker
def test_eval_through_the_cli(swepost, base_image, tmp_path, tasks):
    swepost("tasks", "import", REPO_ROOT / "data" / "minicalc_qa.jsonl", "--kind", "codeqa", "--name", "qa", check=0)
    rewards = {}
    for name, answer in [("good", tasks[0].verify.reference_answer), ("wrong", "It returns None.")]:
        script = tmp_path / f"{name}.json"
        script.write_text(json.dumps(turns(answer)))
        r = swepost("eval", "qa", "--policy", "scripted", "--set", f"policy_args.path={script}", "--set",
                    "environment=codeqa", "--repos", MIRRORS, "--backend", "docker", "--limit", "1", "--name",
                    f"eval-{name}", "--json", check=0)
        (traj,) = [json.loads(x) for x in (Path(json.loads(r.stdout)["path"]) / "trajectories.jsonl").read_text()
                   .splitlines()]
        assert traj["exit_status"] == "submitted" and traj["environment"] == "codeqa"
        rewards[name] = (traj["reward"], traj["resolved"])
    assert rewards["good"] == (1.0, "RESOLVED_FULL")
    assert rewards["wrong"][0] < rewards["good"][0] and rewards["wrong"][1] == "RESOLVED_NO"


# --- a task image, and what a crash leaves ------------------------------------------------------------------

@pytest.mark.docker
def test_a_task_image_repo_is_read_only_too_and_its_volume_goes_with_the_sandbox(make_env, base_image,
                                                                                docker_client, tmp_path):
    """Without a mirror the engine fills the volume from the image's own /testbed; the image stays as it was."""
    context = tmp_path / "image"
    subprocess.run(["git", "clone", "--quiet", str(MIRRORS / "swepost__minicalc.bundle"), str(context / "repo")],
                   check=True)
    (context / "Dockerfile").write_text(f"FROM {base_image}\nCOPY repo /testbed\n")
    tag = f"swepost-test/codeqa-env:{tmp_path.name.lower()}"
    docker_client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
    try:
        task = Task(instance_id="img-1", kind="codeqa", env={"image": tag}, problem_statement="What is mean?",
                    verify={"reference_answer": "The arithmetic mean."})
        env = make_env("docker", repos=None)
        env.reset(task)
        run_id = env.box.run_id
        assert env.box.info["workdir_read_only"] is True and "./minicalc/stats.py" in manifest(env)
        assert EROFS in run(env, "touch new_file; rm -rf minicalc")
        found = json.loads(env.step("semantic_search", {"term": "mean"}).content)
        assert found["files"][0]["path"] == "minicalc/stats.py"
        env.close()
        assert docker_client.volumes.list(filters={"label": f"swepost.run={run_id}"}) == []
        out = docker_client.containers.run(tag, ["ls", "/testbed/minicalc"], remove=True, network_mode="none")
        assert b"stats.py" in out
    finally:
        docker_client.images.remove(tag, force=True)


KILLED_PARENT = """
import sys, time
from swepost.sandbox import open_sandbox
box = open_sandbox("docker", image=sys.argv[1], source_dir=sys.argv[2], read_only_workdir=True)
print("READY", box.run_id, flush=True)
time.sleep(600)
"""


@pytest.mark.docker
def test_gc_removes_a_killed_runs_read_only_volume(swepost, base_image, docker_client, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, base_image, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        ready = proc.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        assert docker_client.volumes.list(filters={"label": f"swepost.run={ready[1]}"})
    finally:
        proc.kill()
        proc.wait()
    assert swepost("sandbox", "gc").returncode == 0
    assert docker_client.containers.list(all=True, filters={"label": f"swepost.run={ready[1]}"}) == []
    assert docker_client.volumes.list(filters={"label": f"swepost.run={ready[1]}"}) == []
