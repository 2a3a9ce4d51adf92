"""The codeqa environment: answer a question about a repository with read-only tools; a judge grades the answer.

One episode is one fresh sandbox holding the task's repo at its commit, with no network, its repo folder a
read-only mount (the sandbox's `read_only_workdir`: a docker volume mounted read-only, a bubblewrap read-only
bind; checked from inside once started). Read-only is the filesystem's, not a command allowlist: whatever a command
does, the repo cannot change. The local backend cannot mount anything and is refused unless `allow_writable_repo`.
The tools keep SWE-QA-Pro's names and parameters, so its public trajectories train as they are:

    semantic_search(term, path, python_only, max_files, include_lines)
                                    ranked file search; see codeqa_explore.py for what ranks it
    view_codebase(path, view_range, concise, python_only)
                                    numbered lines, a Python outline, or a directory's tree; 6,000 characters
    execute_readonly_command(command)
                                    the sandbox's persistent shell, with a timeout and the sandbox's output cap
    finish(answer)                  ends the episode with the answer

Search and view run inside the sandbox as the model's own unprivileged uid (codeqa_explore.py, sent with each
call), confined to the repo: they show nothing the model could not read with a command. Arguments the schemas
reject raise MalformedCall; a well-formed call that cannot be carried out raises ToolError.

`score()` judges the answer against the task's `verify.reference_answer` and `verify.rubric` with the judge of
the `judge` setting (a JudgeConfig or its dict; default: the lexical judge, named as such in the evidence):
reward = the judge's reward, resolved RESOLVED_FULL at or above `resolved_threshold`, else RESOLVED_NO; a judge
failure is never a score (reward None, UNGRADED, the cause in the evidence). No answer gets the judge's
missing-answer reward. Prompts are `prompts/codeqa_system.md` and `prompts/codeqa_user.md` (or the same names in
`prompts_dir`), `str.format` templates with {question}, {repo}, {workdir} and {instance_id}.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import posixpath
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swepost.config import validate
from swepost.envs.base import (
    EnvironmentBroken,
    MalformedCall,
    Observation,
    ToolError,
    ask_judge,
    command_observation,
    load_prompt_templates,
    tool_arguments,
)
from swepost.envs.base import (
    show_value as _show,
)
from swepost.errors import BadInput
from swepost.records import SandboxLimits, Task
from swepost.rewards.judge import Judge, JudgeConfig, make_judge
from swepost.sandbox import pick_backend
from swepost.sandbox.base import Limits, Sandbox, SandboxError
from swepost.sandbox.task_sandbox import limits_for, open_task_sandbox

log = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).parent / "prompts"
PROMPT_FILES = {"system": "codeqa_system.md", "user": "codeqa_user.md"}
PROMPT_FIELDS = {"question", "repo", "workdir", "instance_id"}
EXPLORE_SCRIPT = Path(__file__).parent / "codeqa_explore.py"
MARKER = "@@SWEPOST_CODEQA@@"  # codeqa_explore.py's reply line starts with it

VIEW_MAX_CHARS = 6000  # SWE-QA-Pro's cap on view_codebase output
SEARCH_MAX_CHARS = 6000
DEFAULT_MAX_FILES = 100
MAX_FILES_CAP = 1000
MAX_TERM_CHARS = 1000
MAX_PATH_CHARS = 4096
MAX_COMMAND_CHARS = 100_000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SEARCH_DESCRIPTION = """Ranked search over the repository's files. Use it FIRST to find where a symbol is defined \
and used, or which files are about a topic.
* Files that define a searched symbol (def, class, function, type, a top-level assignment) come first; the rest \
are ranked by BM25 over identifier words (snake_case and camelCase names are split into words; words in a file's \
path count more).
* Returns JSON: the files ranked best first, each with its path relative to the repository root, its score, the \
number of lines holding a searched word (`count`) and the symbols it defines.
* Set include_lines=true to see those lines (up to 20 per file) with their numbers; best on a single file or a \
small folder.
* Hidden files, binary files and files over 2 MB are not searched. Output is capped at 6,000 characters."""

VIEW_DESCRIPTION = """Read-only viewer of the repository's files and folders.
* A file: its lines, numbered from 1. view_range=[start, end] shows part of it (end -1: to the end of the file).
* concise=true on a Python file: an outline, with every function body of 4 or more lines replaced by one \
`... elided lines s-e ...` line (view_range then selects from the outline).
* A folder: its files and folders two levels deep, hidden ones left out.
* Output is capped at 6,000 characters; past that it is clipped, with a note: use view_range (or \
semantic_search / grep to find the lines first) to read the rest."""

COMMAND_DESCRIPTION = """Run a shell command in the repository's sandbox, for inspection: ls, find, grep, head, \
tail, sed -n, wc, git log, git show, git blame, python -c, ...
* The repository is mounted read-only and there is no network: commands that write to it fail.
* The shell is persistent (cd and variables carry over); interactive programs do not work; long commands time out.
* Long output is cut in the middle: filter it (grep, head, sed -n) when you expect a lot."""

FINISH_DESCRIPTION = ("Give your final answer and end the task. Start with a direct answer to the question, then "
                      "explain it with evidence, citing code as `path: line start-end` (paths relative to the "
                      "repository root). No code blocks.")

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "semantic_search",
        "description": SEARCH_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {
                "term": {"type": "string", "description": "What to search for: a symbol name (e.g. "
                         "`parse_header`, `HTTPResponse`) or a few words."},
                "path": {"type": "string", "description": "A folder or file to search in, absolute or relative "
                         "to the repository root (default: the whole repository)."},
                "python_only": {"type": "boolean", "description": "Search .py files only.", "default": False},
                "max_files": {"type": "integer", "description": "The most files to return (default 100, at "
                              f"most {MAX_FILES_CAP}).", "default": DEFAULT_MAX_FILES},
                "include_lines": {"type": "boolean", "description": "Also return the matching lines with their "
                                  "numbers.", "default": False},
            },
            "required": ["term"],
        },
    }},
    {"type": "function", "function": {
        "name": "view_codebase",
        "description": VIEW_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "A file or folder, absolute or relative to the "
                         "repository root."},
                "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                               "description": "Lines [start, end] of a file, 1-based; end -1 reads to the end."},
                "concise": {"type": "boolean", "description": "For a Python file: an outline with long function "
                            "bodies elided.", "default": False},
                "python_only": {"type": "boolean", "description": "Show .py files only (a folder lists only them "
                                "and its subfolders).", "default": False},
            },
            "required": ["path"],
        },
    }},
    {"type": "function", "function": {
        "name": "execute_readonly_command",
        "description": COMMAND_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The shell command to run."}},
            "required": ["command"],
        },
    }},
    {"type": "function", "function": {
        "name": "finish",
        "description": FINISH_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {"answer": {"type": "string", "description": "The final answer."}},
            "required": ["answer"],
        },
    }},
]
TOOL_ARGS = {t["function"]["name"]: tuple(t["function"]["parameters"]["properties"]) for t in TOOLS}


def load_prompts(prompts_dir: str | Path | None = None) -> dict[str, str]:
    """The system and user templates, checked for unknown fields so a typo fails before any episode."""
    return load_prompt_templates(Path(prompts_dir) if prompts_dir is not None else PROMPTS_DIR, PROMPT_FILES,
                                 PROMPT_FIELDS)


@functools.cache
def explore_source() -> str:
    return EXPLORE_SCRIPT.read_text(encoding="utf-8")


_JUDGES: dict[str, Judge] = {}
_JUDGES_LOCK = threading.Lock()
_writable_warned = threading.Event()


def shared_judge(config: JudgeConfig | Mapping[str, Any] | Judge | None) -> Judge:
    """One judge per distinct config in this process: stages make an environment per episode, and a judge holds
    a connection pool and a cache (and says it is lexical once, not per episode). BadInput names a bad field."""
    if isinstance(config, Judge):
        return config
    if not isinstance(config, JudgeConfig):
        config = validate(JudgeConfig, dict(config or {}), prefix=("judge",))
    data = config.model_dump(mode="json")
    if config.api_key is not None:  # dumped masked: two keys must not share a judge
        data["api_key"] = hashlib.sha256(config.api_key.get_secret_value().encode()).hexdigest()
    key = json.dumps(data, sort_keys=True, default=str)
    with _JUDGES_LOCK:
        if key not in _JUDGES:
            _JUDGES[key] = make_judge(config, key="judge")
        return _JUDGES[key]


class CodeQAEnvironment:
    """Code question answering in a read-only sandbox: semantic_search, view_codebase, execute_readonly_command
    and finish; graded by a judge against the task's reference answer and rubric."""

    name = "codeqa"
    no_tool_call = ("Your reply had no tool call. Explore the repository with the tools, then call finish(answer) "
                    "with your answer.")

    def __init__(self, *, repos: str | Path | None = None, backend: str = "auto",
                 limits: Limits | SandboxLimits | dict | None = None, tool_timeout: float = 120.0,
                 max_observation_chars: int = 16000, prompts_dir: str | Path | None = None,
                 judge: JudgeConfig | Mapping[str, Any] | Judge | None = None, resolved_threshold: float = 0.7,
                 allow_writable_repo: bool = False, grade: bool = True):
        if not 0.0 <= resolved_threshold <= 1.0:
            raise BadInput(f"must be in [0, 1], not {resolved_threshold!r}", key="resolved_threshold")
        self.repos = repos
        self.backend = backend
        self.limits = limits
        self.tool_timeout = float(tool_timeout)
        self.max_observation_chars = max_observation_chars
        self.resolved_threshold = resolved_threshold
        self.allow_writable_repo = allow_writable_repo
        self.grade = grade
        self.prompts = load_prompts(prompts_dir)
        self.judge = shared_judge(judge)
        self.task: Task | None = None
        self.box: Sandbox | None = None
        self.workdir = "/testbed"
        self.answer: str | None = None
        self.read_only = True
        self._tool_env: dict[str, str] = {}

    # --- episode ------------------------------------------------------------------------------------------
    def reset(self, task: Task) -> list[dict[str, Any]]:
        self.close()
        self.task, self.answer = task, None
        backend = pick_backend(self.backend)
        self.read_only = backend != "local"
        if not self.read_only and not self.allow_writable_repo:
            raise BadInput("the local backend cannot mount the repo read-only (commands run as you, owner of the "
                           "working copy): use docker or bwrap, or set allow_writable_repo to run unprotected",
                           key="backend")
        limits = self.limits if isinstance(self.limits, Limits) else limits_for(task, self.limits)
        limits = dataclasses.replace(limits, network=False, network_allow=[])  # code QA never needs the network
        self.box = open_task_sandbox(task, repos=self.repos, backend=backend, limits=limits,
                                     read_only_workdir=self.read_only)
        self.workdir = self.box.workdir
        try:
            path = self.box.image_env().get("PATH") or DEFAULT_PATH
            self._tool_env = {"PATH": path, "LANG": "C.UTF-8", "HOME": self.box.info.get("home") or "/tmp"}
            if self.read_only:
                # git refuses a repo another uid owns (docker's read-only workdir is root's): the model's own
                # git log / blame should work. Its home is its own (never the user's: local is not read-only).
                self.box.exec("git config --global --add safe.directory '*'", user="sandbox", env=self._tool_env,
                              timeout=60)
            else:
                self._unprotected()
        except SandboxError as e:
            self.close()
            raise EnvironmentBroken(f"the sandbox failed while it was prepared: {e}") from None
        fields = {"question": task.problem_statement, "repo": task.repo or task.env.image or "",
                  "workdir": self.workdir, "instance_id": task.instance_id}
        return [{"role": "system", "content": self.prompts["system"].format(**fields)},
                {"role": "user", "content": self.prompts["user"].format(**fields)}]

    def _unprotected(self) -> None:
        """allow_writable_repo on the local backend: the repo's write bits off (the model can set them back)."""
        if not _writable_warned.is_set():
            _writable_warned.set()
            log.warning("codeqa on the local backend: the repo is NOT read-only (allow_writable_repo); commands "
                        "run as you and can change it")
        self._live_box().exec(["chmod", "-R", "a-w", self.workdir], env=self._tool_env, timeout=600)

    def tools(self) -> list[dict[str, Any]]:
        return TOOLS

    def step(self, name: str, arguments: dict[str, Any]) -> Observation:
        if name not in TOOL_ARGS:
            raise MalformedCall(f"Unknown tool {str(name)[:100]!r}. Available tools: {', '.join(TOOL_ARGS)}.")
        args = tool_arguments(name, arguments, TOOL_ARGS[name])
        if name == "semantic_search":
            return Observation(self._search(args))
        if name == "view_codebase":
            return Observation(self._view(args))
        if name == "execute_readonly_command":
            return Observation(self._command(args))
        answer = _string(args, "answer", name, required=True)
        if not answer.strip():
            raise ToolError("Parameter `answer` of finish is empty: give your answer to the question")
        self.answer = answer
        return Observation("Your answer was recorded; the task is finished.", done=True, answer=answer)

    def final_diff(self) -> str:
        return ""

    def score(self) -> dict[str, Any]:
        if self.task is None:
            raise RuntimeError("score() before reset(): there is no episode to grade")
        task = self.task
        evidence: dict[str, Any] = {"judge": self.judge.name, "model": self.judge.model,
                                    "threshold": self.resolved_threshold, "qa_type": task.metadata.get("qa_type"),
                                    "answer_chars": len(self.answer or ""), "read_only": self.read_only}
        if self.judge.name == "lexical":
            evidence["note"] = "lexical judge: word overlap with the reference and rubric, not a model's judgement"
        reference = task.verify.reference_answer or ""
        if not reference.strip():
            return {"reward": None, "resolved": "UNGRADED",
                    "evidence": {**evidence, "judge_failed": False,
                                 "reason": "the task has no reference answer to judge against"}}
        j, ungraded = ask_judge(self.judge, task.problem_statement, self.answer, reference, task.verify.rubric,
                                evidence)
        if ungraded is not None:
            return ungraded
        evidence.update(missing_answer=j.missing_answer, truncated=j.truncated)
        resolved = "RESOLVED_FULL" if not j.missing_answer and j.reward >= self.resolved_threshold else "RESOLVED_NO"
        return {"reward": j.reward, "resolved": resolved, "evidence": evidence}

    def close(self) -> None:
        if self.box is not None:
            box, self.box = self.box, None
            box.close()

    # --- tools ---------------------------------------------------------------------------------------------
    def _live_box(self) -> Sandbox:
        if self.box is None or self.box.closed:
            raise EnvironmentBroken("the sandbox is not running (closed, or no reset)")
        return self.box

    def _path(self, args: dict[str, Any], tool: str, required: bool) -> str:
        """A repo path from an argument: absolute, or relative to the repo root; never outside it (checked here
        lexically, and again inside the sandbox after symlinks)."""
        raw = _string(args, "path", tool, required=required)
        if raw is None:
            return self.workdir
        raw = raw.strip()
        if not raw:
            raise ToolError(f"Parameter `path` of {tool} is empty: give a file or folder of the repository")
        if "\x00" in raw or len(raw) > MAX_PATH_CHARS:
            raise ToolError(f"Parameter `path` of {tool} is not a usable path (NUL, or over {MAX_PATH_CHARS} "
                            "characters)")
        path = posixpath.normpath(posixpath.join(self.workdir, raw))
        top = self.workdir.rstrip("/")
        if path != top and not path.startswith(top + "/"):
            raise ToolError(f"The path {raw} is outside the repository {self.workdir}: give a path inside it, "
                            "absolute or relative to it")
        return path

    def _search(self, args: dict[str, Any]) -> str:
        term = _string(args, "term", "semantic_search", required=True)
        if not term.strip():
            raise ToolError("Parameter `term` of semantic_search is empty: give a symbol name or a few words")
        if len(term) > MAX_TERM_CHARS:
            raise ToolError(f"Parameter `term` is {len(term)} characters long; search terms are at most "
                            f"{MAX_TERM_CHARS}")
        max_files = _integer(args, "max_files", "semantic_search", DEFAULT_MAX_FILES)
        if max_files < 1:
            raise ToolError(f"Parameter `max_files` must be at least 1, not {max_files}")
        return self._explore("semantic_search", {
            "op": "search", "term": term, "path": self._path(args, "semantic_search", required=False),
            "python_only": _boolean(args, "python_only", "semantic_search"),
            "include_lines": _boolean(args, "include_lines", "semantic_search"),
            "max_files": min(max_files, MAX_FILES_CAP), "max_chars": SEARCH_MAX_CHARS})

    def _view(self, args: dict[str, Any]) -> str:
        view_range = args.get("view_range")
        if view_range is not None:
            if not (isinstance(view_range, (list, tuple)) and len(view_range) == 2
                    and all(type(v) is int for v in view_range)):
                raise MalformedCall(f"Invalid `view_range`: {_show(view_range)}. It should be a list of two "
                                    "integers, [start, end]; end -1 means to the end of the file")
            start, end = view_range
            if start < 1 or (end != -1 and end < start):
                raise ToolError(f"Invalid `view_range` {list(view_range)}: start is a line number from 1, and end "
                                "is at least start, or -1 for the end of the file")
            view_range = [start, end]
        return self._explore("view_codebase", {
            "op": "view", "path": self._path(args, "view_codebase", required=True), "view_range": view_range,
            "concise": _boolean(args, "concise", "view_codebase"),
            "python_only": _boolean(args, "python_only", "view_codebase"), "max_chars": VIEW_MAX_CHARS})

    def _explore(self, tool: str, request: dict[str, Any]) -> str:
        """Run codeqa_explore.py in the sandbox as the model's uid: no shell (argv, JSON), isolated mode (-I: the
        repo's own modules cannot shadow the standard library), no site (-S), no bytecode written (-B)."""
        request = {**request, "root": self.workdir}
        box = self._live_box()
        try:
            r = box.exec(["python3", "-I", "-S", "-B", "-c", explore_source(), json.dumps(request)],
                         user="sandbox", env=self._tool_env, cwd=self.workdir, timeout=self.tool_timeout)
        except SandboxError as e:
            if box.closed:
                raise EnvironmentBroken(str(e)) from None
            raise ToolError(f"{tool} failed: {str(e)[:1000]}") from None
        if r.timed_out:
            raise ToolError(f"{tool} timed out after {self.tool_timeout:g} s: give a narrower `path`")
        at = r.output.rfind(MARKER)
        reply = None
        if at != -1:
            try:
                reply = json.loads(r.output[at + len(MARKER):].split("\n", 1)[0])
            except ValueError:
                reply = None
        if not isinstance(reply, dict):
            why = "it ran out of memory" if r.oom_killed else f"exit {r.exit_code}: {r.output[-500:]!r}"
            raise ToolError(f"{tool} failed ({why}); execute_readonly_command can do the same with grep or sed")
        if not reply.get("ok"):
            raise ToolError(str(reply.get("error") or f"{tool} failed"))
        return str(reply.get("text") or "")

    def _command(self, args: dict[str, Any]) -> str:
        command = _string(args, "command", "execute_readonly_command", required=True)
        if not command.strip():
            raise ToolError("Parameter `command` of execute_readonly_command is empty")
        if len(command) > MAX_COMMAND_CHARS:
            raise ToolError(f"The command is {len(command)} characters long; the limit is {MAX_COMMAND_CHARS}")
        box = self._live_box()
        try:
            r = box.run(command, timeout=self.tool_timeout)
        except SandboxError as e:
            raise EnvironmentBroken(str(e)) from None
        return self._truncate(command_observation(r, self.tool_timeout, empty="(no output)"))

    def _truncate(self, text: str) -> str:
        limit = self.max_observation_chars
        if not limit or len(text) <= limit:
            return text
        marker = f"\n[... {len(text)} characters; the middle is cut ...]\n"
        room = max(limit - len(marker), 2)
        return text[:room // 2] + marker + text[len(text) - (room - room // 2):]


# --- arguments ------------------------------------------------------------------------------------------------
def _string(args: dict[str, Any], key: str, tool: str, *, required: bool) -> str | None:
    value = args.get(key)
    if value is None:
        if required:
            raise MalformedCall(f"Parameter `{key}` is required for {tool}")
        return None
    if not isinstance(value, str):
        raise MalformedCall(f"Parameter `{key}` of {tool} must be a string, got {type(value).__name__}: "
                            f"{_show(value, 100)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedCall(f"Parameter `{key}` of {tool} holds characters that are not valid Unicode") from None
    return value


def _boolean(args: dict[str, Any], key: str, tool: str) -> bool:
    value = args.get(key, False)
    if not isinstance(value, bool):
        raise MalformedCall(f"Parameter `{key}` of {tool} must be true or false, got {_show(value, 100)}")
    return value


def _integer(args: dict[str, Any], key: str, tool: str, default: int) -> int:
    value = args.get(key, default)
    if type(value) is not int:
        raise MalformedCall(f"Parameter `{key}` of {tool} must be an integer, got {_show(value, 100)}")
    return value

