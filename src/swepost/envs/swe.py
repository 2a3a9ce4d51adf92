"""The swe environment: fix a bug in a repository with a shell, a file editor and `submit`.

One episode is one fresh sandbox holding the task's repo at its base commit. The tools are fixed (other
components and public trajectories rely on their names and arguments):

    bash(command)                       the sandbox's persistent shell (cd and exports carry over)
    str_replace_editor(command, path, file_text, old_str, new_str, insert_line, view_range)
                                        SWE-agent / OpenHands' editor: view, create, str_replace, insert,
                                        undo_edit; paths absolute or relative to the repo
    submit()                            ends the episode

Arguments come from model output and may be anything: a call its tool's schema rejects (unknown tool, arguments
missing, unexpected or of the wrong type) raises MalformedCall, a format error; a well-formed call that cannot be
carried out (no such file, old_str not found) raises ToolError; the message is the observation either way. A
failing sandbox raises EnvironmentBroken. The result is `final_diff()` (the working copy
against the base commit, new files included), graded by `score()` in a fresh sandbox, never this one.

Prompts are `prompts/swe_system.md` and `prompts/swe_user.md` (or the same names in `prompts_dir`), Python
`str.format` templates with the fields {problem_statement}, {workdir}, {repo}, {instance_id} and {hints}
(the task's hints wrapped in <hints> tags, or empty when it has none).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import uuid
from pathlib import Path
from typing import Any

from swepost.envs.base import (
    EnvironmentBroken,
    MalformedCall,
    Observation,
    ToolError,
    command_observation,
    load_prompt_templates,
    tool_arguments,
)
from swepost.envs.base import (
    show_value as _show,
)
from swepost.errors import BadInput, WorkFailed
from swepost.records import Task
from swepost.sandbox.base import Limits, Sandbox, SandboxError

PROMPTS_DIR = Path(__file__).parent / "prompts"
PROMPT_FILES = {"system": "swe_system.md", "user": "swe_user.md"}
PROMPT_FIELDS = {"problem_statement", "workdir", "repo", "instance_id", "hints"}

EDITOR_COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")
SNIPPET_LINES = 4  # lines of context shown around an edit
MAX_FILE_BYTES = 8 << 20  # the editor works on files up to this size; bash is for the rest
MAX_COMMAND_CHARS = 200_000
MAX_PATH_CHARS = 4096
PROBE_TIMEOUT = 60.0
DIFF_TIMEOUT = 600.0

# The final diff, run by `SweEnvironment.final_diff` as a fresh root process (Sandbox.exec) with DIFF_ENV and
# W (the repo), B (the base commit, as recorded at reset) and T (a new private folder). Why each piece:
# * a git dir of our own in $T/g with our config only: the repo's .git/config may name clean filters (code run
#   by `git add`), textconv, an external diff, core.fsmonitor, hooks, core.worktree; none of it is read. The
#   repo lends its objects (alternates) and nothing else. Rewriting objects could only spoil the agent's own
#   diff: the grader applies it to a pristine base.
# * $GIT_DIR/info/attributes outranks every .gitattributes: no filter, eol, ident or encoding rewrites content;
# * a fresh index from B (never the agent's index, whose stat data could vouch for forged content): `add -u`
#   hashes every tracked file;
# * new files: all untracked files (ignored ones too), less those the base commit's own .gitignore files
#   (checked out into $T/shadow) or info/exclude (caches) ignore: a .gitignore the agent wrote hides nothing;
# * exit BASE_GONE when the base commit cannot be read (the agent deleted .git): that is the agent's doing.
BASE_GONE = 3
DIFF_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_ATTR_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0",
            "GIT_LITERAL_PATHSPECS": "1", "GIT_NO_REPLACE_OBJECTS": "1"}
DIFF_SCRIPT = r"""
mkdir -m 700 "$T" && git init -q --bare "$T/g" || exit 1
[ -d "$W/.git/objects" ] || exit 3
printf '%s\n' "$W/.git/objects" > "$T/g/objects/info/alternates"
cat > "$T/g/config" <<'EOF'
[core]
	repositoryformatversion = 0
	bare = false
	hooksPath = /dev/null
	fsmonitor = false
	untrackedCache = false
	autocrlf = false
	safecrlf = false
	symlinks = true
	filemode = true
	ignorecase = false
	quotepath = false
	attributesFile = /dev/null
	excludesFile = /dev/null
EOF
printf '* -text -filter -ident -working-tree-encoding !eol !diff\n' > "$T/g/info/attributes"
printf '__pycache__/\n*.py[co]\n.pytest_cache/\n' > "$T/g/info/exclude"
export GIT_DIR="$T/g" GIT_WORK_TREE="$W" GIT_INDEX_FILE="$T/index"
git cat-file -e "$B^{commit}" 2>/dev/null && git read-tree "$B" || exit 3
git add -u || exit 1
mkdir "$T/shadow" && git ls-tree -r -z --name-only "$B" | grep -z -E '(^|/)\.gitignore$' > "$T/ignores"
GIT_INDEX_FILE="$T/base-index" git read-tree "$B" &&
  GIT_INDEX_FILE="$T/base-index" GIT_WORK_TREE="$T/shadow" git checkout-index -z --stdin < "$T/ignores" || exit 1
git ls-files -z -o | sort -z > "$T/others" || exit 1
GIT_LITERAL_PATHSPECS=0 GIT_WORK_TREE="$T/shadow" git check-ignore --no-index -z --stdin < "$T/others" > "$T/ign"
[ $? -le 1 ] && sort -z "$T/ign" > "$T/ignored" || exit 1
comm -z -23 "$T/others" "$T/ignored" > "$T/new" || exit 1
if [ -s "$T/new" ]; then git add -f --pathspec-from-file="$T/new" --pathspec-file-nul || exit 1; fi
git diff --cached --binary --no-color --no-ext-diff --no-textconv "$B" > "$T/diff"
"""

BASH_DESCRIPTION = """Run a command in a bash shell inside the repository's sandbox.
* The shell is persistent: the working directory, environment variables and files carry over between calls.
* Long-running commands time out; run servers in the background and redirect their output to a file.
* Interactive programs (editors, pagers, REPLs, prompts) do not work: stdin is empty.
* Long output is truncated in the middle; filter it (grep, head, tail) when you expect a lot."""

EDITOR_DESCRIPTION = """Custom editing tool for viewing, creating and editing files
* State is persistent across command calls and discussions with the user
* If `path` is a file, `view` displays the result of applying `cat -n`. If `path` is a directory, `view` lists \
non-hidden files and directories up to 2 levels deep
* The `create` command cannot be used if the specified `path` already exists as a file
* If a `command` generates a long output, it will be truncated in the middle
* The `undo_edit` command will revert the last edit made to the file at `path`

Notes for using the `str_replace` command:
* The `old_str` parameter should match EXACTLY one or more consecutive lines from the original file. Be mindful \
of whitespaces!
* If the `old_str` parameter is not unique in the file, the replacement will not be performed. Make sure to \
include enough context in `old_str` to make it unique
* The `new_str` parameter should contain the edited lines that should replace the `old_str`"""

SUBMIT_DESCRIPTION = ("Submit your changes and end the task. Call it once you have fixed the issue and checked "
                      "the fix; the current state of the repository is your answer.")

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "bash",
        "description": BASH_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The bash command to run."}},
            "required": ["command"],
        },
    }},
    {"type": "function", "function": {
        "name": "str_replace_editor",
        "description": EDITOR_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "string", "enum": list(EDITOR_COMMANDS),
                            "description": "The command to run: `view`, `create`, `str_replace`, `insert`, "
                                           "`undo_edit`."},
                "path": {"type": "string",
                         "description": "Path to a file or directory, absolute (e.g. `/testbed/file.py`) or "
                                        "relative to the repository root."},
                "file_text": {"type": "string",
                              "description": "Required for `create`: the content of the file to be created."},
                "old_str": {"type": "string",
                            "description": "Required for `str_replace`: the exact text in the file to replace."},
                "new_str": {"type": "string",
                            "description": "For `str_replace`: the new text (empty or missing deletes "
                                           "`old_str`). Required for `insert`: the text to insert."},
                "insert_line": {"type": "integer",
                                "description": "Required for `insert`: `new_str` is inserted AFTER this line "
                                               "(0 inserts at the top of the file)."},
                "view_range": {"type": "array", "items": {"type": "integer"},
                               "description": "Optional for `view` of a file: the lines to show, [start, end] "
                                              "counting from 1; [start, -1] shows from start to the end."},
            },
            "required": ["command", "path"],
        },
    }},
    {"type": "function", "function": {
        "name": "submit",
        "description": SUBMIT_DESCRIPTION,
        "parameters": {"type": "object", "properties": {}, "required": []},
    }},
]
TOOL_ARGS = {t["function"]["name"]: tuple(t["function"]["parameters"]["properties"]) for t in TOOLS}


def load_prompts(prompts_dir: str | Path | None = None) -> dict[str, str]:
    """The system and user templates, checked for unknown fields so a typo fails before any episode."""
    return load_prompt_templates(Path(prompts_dir) if prompts_dir is not None else PROMPTS_DIR, PROMPT_FILES,
                                 PROMPT_FIELDS)


def _clip(text: str, limit: int = 2000) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit // 2]}[... {len(text) - limit} characters ...]{text[-limit // 2:]}"


def _lines(text: str) -> list[str]:
    """A file's lines as `cat -n` counts them: no phantom empty line after a final newline."""
    if not text:
        return []
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def _number(lines: list[str], first: int) -> str:
    return "\n".join(f"{i:6}\t{line}" for i, line in enumerate(lines, first))


def _display(text: str) -> str:
    """File text decoded with surrogateescape, made safe to show (undecodable bytes become U+FFFD)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class SweEnvironment:
    """Repository bug fixing in a sandbox: bash, str_replace_editor and submit; graded by the task's tests."""

    name = "swe"

    def __init__(self, *, repos: str | Path | None = None, backend: str = "auto", limits: Limits | None = None,
                 tool_timeout: float = 120.0, max_observation_chars: int = 16000,
                 prompts_dir: str | Path | None = None, grade: bool = True):
        self.repos = repos
        self.backend = backend
        self.limits = limits
        self.tool_timeout = float(tool_timeout)
        self.max_observation_chars = max_observation_chars
        self.grade = grade
        self.prompts = load_prompts(prompts_dir)
        self.task: Task | None = None
        self.box: Sandbox | None = None
        self.workdir = "/testbed"
        self.base: str | None = None
        self._history: dict[str, list[bytes | None]] = {}
        self._diff: str | None = None

    # --- episode ------------------------------------------------------------------------------------------
    def reset(self, task: Task) -> list[dict[str, Any]]:
        from swepost.sandbox.task_sandbox import open_task_sandbox

        if task.kind != "swe":
            raise BadInput(f"{task.instance_id}: the swe environment runs swe tasks, not {task.kind!r}")
        self.close()
        self.task, self._history, self._diff, self.base = task, {}, None, task.base_commit
        try:
            self.box = open_task_sandbox(task, repos=self.repos, backend=self.backend, limits=self.limits)
            self.workdir = self.box.workdir
            if self.base is None:
                head = self._sh("git rev-parse HEAD")
                self.base = head.output.strip().splitlines()[-1] if head.exit_code == 0 and head.output.strip() \
                    else None
        except SandboxError as e:
            self.close()
            raise EnvironmentBroken(f"{task.instance_id}: the sandbox did not start: {e}") from e
        fields = {"problem_statement": task.problem_statement, "workdir": self.workdir,
                  "repo": task.repo or "the repository", "instance_id": task.instance_id,
                  "hints": f"\n<hints>\n{task.hints_text.strip()}\n</hints>\n" if task.hints_text.strip() else ""}
        try:
            system = self.prompts["system"].format(**fields)
            user = self.prompts["user"].format(**fields)
        except (KeyError, IndexError, AttributeError, ValueError) as e:
            raise BadInput(f"prompt template does not render: {type(e).__name__}: {e}") from None
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def tools(self) -> list[dict[str, Any]]:
        return json.loads(json.dumps(TOOLS))  # a copy: callers may annotate theirs

    def step(self, name: str, arguments: dict[str, Any]) -> Observation:
        if not isinstance(name, str):
            raise MalformedCall(f"Tool name must be a string, got {_show(name)}")
        if name not in TOOL_ARGS:
            raise MalformedCall(f"Unknown tool {_show(name, 100)}; the tools are: {', '.join(TOOL_ARGS)}")
        args = tool_arguments(name, arguments, TOOL_ARGS[name])
        box = self._live_box()
        try:
            if name == "bash":
                content = self._bash(args)
            elif name == "str_replace_editor":
                content = self._editor(args)
            else:
                return Observation("Submitted: the episode is over.", done=True)
        except SandboxError as e:
            raise self._sandbox_failure(box, e) from e
        except ToolError as e:
            message = str(e)
            if self.max_observation_chars and len(message) > self.max_observation_chars:
                raise type(e)(self._truncate(message)) from None  # a format error stays one
            raise
        return Observation(self._truncate(content))

    def final_diff(self) -> str:
        """The working copy against the base commit, new files included, taken by swepost and not the agent.

        Everything the agent controls is left out of how the diff is made (see DIFF_SCRIPT): it runs as a
        fresh root process with a clean environment (`Sandbox.exec`), not in the agent's shell (functions,
        aliases, GIT_* variables); in a throwaway git dir of ours (our config: no filters, textconv, external
        diff, fsmonitor, hooks or core.worktree from the repo's .git/config; .gitattributes overridden) that
        borrows only the repo's objects; against `self.base`, recorded at reset, never re-read from the repo.
        New files count even when the agent's .gitignore hides them: only the base commit's ignore rules (and
        caches: __pycache__, .pyc, .pytest_cache) leave a new file out.
        """
        if self.box is None or self.box.closed:
            if self._diff is not None:
                return self._diff
            raise EnvironmentBroken("no live sandbox to take the diff from (reset first, or it was closed)")
        if not self.base:
            raise EnvironmentBroken("the repository has no base commit to diff against")
        tmp = f"/tmp/.swepost-diff-{uuid.uuid4().hex}"  # unguessable, made 0700 by root: the agent cannot reach in
        try:
            r = self.box.exec(DIFF_SCRIPT, timeout=DIFF_TIMEOUT, env=DIFF_ENV | {
                "W": self.workdir, "B": self.base, "T": tmp})
            if r.exit_code == 0 and not r.timed_out:
                data = self.box.read_file(f"{tmp}/diff")
            self.box.exec(["rm", "-rf", tmp], timeout=PROBE_TIMEOUT, env=DIFF_ENV)
        except SandboxError as e:
            raise EnvironmentBroken(f"cannot take the diff: {e}") from e
        if r.exit_code == BASE_GONE and not r.timed_out:
            data = b""  # the agent destroyed the base commit's objects: its answer is no change, graded as such
        elif r.exit_code != 0 or r.timed_out:
            raise EnvironmentBroken(f"cannot take the diff ({'timed out' if r.timed_out else f'exit {r.exit_code}'}"
                                    f"): {r.output[-1000:]}")
        self._diff = data.decode("utf-8", "replace")
        return self._diff

    def score(self) -> dict[str, Any]:
        if not self.grade:
            return {"reward": None, "resolved": None, "evidence": {}}
        if self.task is None:
            raise EnvironmentBroken("no episode to score: reset first")
        from swepost.rewards.filters import UNGRADED
        from swepost.rewards.grading import GRADE_TIMEOUT, grade_patch

        diff = self.final_diff()
        try:
            result = grade_patch(self.task, diff, repos=self.repos, backend=self.backend, limits=self.limits,
                                 timeout=self.task.verify.timeout or GRADE_TIMEOUT)
        except WorkFailed as e:  # the grader's sandbox failed (SandboxError is one): no verdict, not a wrong answer
            reason = f"grading failed: {e}"
            return {"reward": None, "resolved": UNGRADED,
                    "evidence": {"instance_id": self.task.instance_id, "resolved": UNGRADED, "reward": None,
                                 "reason": reason}}
        if result.resolved == UNGRADED:  # the grader's own word: a timeout, the memory limit, no report
            return {"reward": None, "resolved": UNGRADED, "evidence": result.to_dict()}
        return {"reward": result.reward, "resolved": result.resolved, "evidence": result.to_dict()}

    def close(self) -> None:
        box, self.box = self.box, None
        if box is not None:
            box.close()

    def __enter__(self) -> SweEnvironment:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # --- plumbing -------------------------------------------------------------------------------------------
    def _live_box(self) -> Sandbox:
        if self.box is None:
            raise EnvironmentBroken("no episode: call reset(task) first")
        if self.box.closed:
            raise EnvironmentBroken("the sandbox is closed")
        return self.box

    def _sh(self, command: str, timeout: float = PROBE_TIMEOUT):
        """Our own command, in a subshell at the repo root so the agent's shell state stays as it was."""
        return self._live_box().run(f"( cd {shlex.quote(self.workdir)} && {command}\n)", timeout=timeout)

    @staticmethod
    def _sandbox_failure(box: Sandbox, error: SandboxError) -> Exception:
        """An agent that answered with an error is alive (the request was bad): ToolError; else broken."""
        message = str(error)
        m = re.match(r"sandbox \w+ failed: (.*)", message, flags=re.S)
        if m and not box.closed:
            return ToolError(f"The operation failed: {_clip(m.group(1), 1000)}")
        return EnvironmentBroken(message)

    def _truncate(self, text: str) -> str:
        limit = self.max_observation_chars
        if not limit or len(text) <= limit:
            return text
        room = max(limit - len(f"\n[... {len(text)} characters truncated ...]\n"), 2)
        head = room // 2
        tail = room - head
        cut = len(text) - head - tail
        return f"{text[:head]}\n[... {cut} characters truncated ...]\n{text[len(text) - tail:]}"

    # --- bash ------------------------------------------------------------------------------------------------
    def _bash(self, args: dict[str, Any]) -> str:
        command = _string(args, "command", "bash", required=True)
        if not command.strip():
            raise ToolError("Parameter `command` of bash must not be empty")
        if len(command) > MAX_COMMAND_CHARS:
            raise ToolError(f"The command is {len(command)} characters long; the limit is {MAX_COMMAND_CHARS}. "
                            "Write long content with str_replace_editor instead.")
        r = self._live_box().run(command, timeout=self.tool_timeout)
        return command_observation(r, self.tool_timeout,
                                   empty="Your command ran successfully and did not produce any output.")

    # --- str_replace_editor ---------------------------------------------------------------------------------
    def _editor(self, args: dict[str, Any]) -> str:
        command = _string(args, "command", "str_replace_editor", required=True)
        if command not in EDITOR_COMMANDS:
            raise MalformedCall(f"Unrecognized command {_show(command, 100)}. The allowed commands for the "
                            f"str_replace_editor tool are: {', '.join(EDITOR_COMMANDS)}")
        path = self._path(args)
        if command == "view":
            return self._view(path, args)
        if command == "create":
            return self._create(path, args)
        if command == "str_replace":
            return self._str_replace(path, args)
        if command == "insert":
            return self._insert(path, args)
        return self._undo(path)

    def _path(self, args: dict[str, Any]) -> str:
        raw = _string(args, "path", "str_replace_editor", required=True)
        if not raw.strip():
            raise ToolError("Parameter `path` must not be empty")
        if "\x00" in raw:
            raise ToolError("Parameter `path` must not contain NUL characters")
        if len(raw) > MAX_PATH_CHARS:
            raise ToolError(f"Parameter `path` is {len(raw)} characters long; paths are at most {MAX_PATH_CHARS}")
        return posixpath.normpath(posixpath.join(self.workdir, raw))

    def _kind(self, path: str) -> tuple[str, int]:
        """('dir' | 'file' | 'other' | 'missing', size in bytes) of a sandbox path."""
        q = shlex.quote(path)
        r = self._sh(f'if [ -d {q} ]; then echo "@@SWEPOST_KIND dir 0"; '
                     f'elif [ -f {q} ]; then echo "@@SWEPOST_KIND file $(stat -L -c %s -- {q})"; '
                     f'elif [ -e {q} ] || [ -L {q} ]; then echo "@@SWEPOST_KIND other 0"; '
                     f'else echo "@@SWEPOST_KIND missing 0"; fi')
        m = re.search(r"@@SWEPOST_KIND (\w+) (\d+)", r.output)
        if not m:
            raise ToolError(f"Could not inspect {path}: the shell answered {_show(r.output[-300:], 400)} "
                            "(was its output redirected?)")
        return m.group(1), int(m.group(2))

    def _read_text(self, path: str, kind: tuple[str, int] | None = None) -> str:
        """A text file's content (surrogateescape-decoded, so writing it back keeps every byte)."""
        kind, size = kind or self._kind(path)
        if kind == "missing":
            raise ToolError(f"The path {path} does not exist. Please provide a valid path.")
        if kind == "dir":
            raise ToolError(f"The path {path} is a directory; only the `view` command can be used on "
                            "directories")
        if kind != "file":
            raise ToolError(f"The path {path} is not a regular file")
        if size > MAX_FILE_BYTES:
            raise ToolError(f"The file {path} is {size} bytes, too large for the editor (limit {MAX_FILE_BYTES}); "
                            "use bash (grep, sed -n, head) instead")
        data = self._live_box().read_file(path, limit=MAX_FILE_BYTES)
        if b"\x00" in data:
            raise ToolError(f"The file {path} looks binary; the editor works on text files only")
        return data.decode("utf-8", "surrogateescape")

    def _write_text(self, path: str, text: str) -> None:
        self._live_box().write_file(path, text.encode("utf-8", "surrogateescape"))

    def _remember(self, path: str, before: str | None) -> None:
        self._history.setdefault(path, []).append(
            None if before is None else before.encode("utf-8", "surrogateescape"))

    @staticmethod
    def _cat(text_lines: list[str], what: str, first: int = 1) -> str:
        return f"Here's the result of running `cat -n` on {what}:\n{_display(_number(text_lines, first))}\n"

    def _view(self, path: str, args: dict[str, Any]) -> str:
        view_range = args.get("view_range")
        if view_range is not None:
            if not (isinstance(view_range, (list, tuple)) and len(view_range) == 2
                    and all(type(v) is int for v in view_range)):
                raise MalformedCall(f"Invalid `view_range`: {_show(view_range)}. It should be a list of two integers, "
                                "[start, end]; end -1 means to the end of the file")
        found = self._kind(path)
        kind = found[0]
        if kind == "missing":
            raise ToolError(f"The path {path} does not exist. Please provide a valid path.")
        if kind == "dir":
            if view_range is not None:
                raise ToolError("The `view_range` parameter is not allowed when `path` points to a directory.")
            q = shlex.quote(path)
            r = self._sh(f"find {q} -mindepth 1 -maxdepth 2 -name '.*' -prune -o -print 2>/dev/null "
                         "| LC_ALL=C sort")
            return (f"Here's the files and directories up to 2 levels deep in {path}, excluding hidden items:\n"
                    f"{path}\n{r.output}")
        lines = _lines(self._read_text(path, found))
        if view_range is None:
            return self._cat(lines, path)
        start, end = view_range
        n = len(lines)
        if not 1 <= start <= max(n, 1) or n == 0:
            raise ToolError(f"Invalid `view_range`: {_show(view_range)}. Its first element `{_show(start)}` "
                            f"should be within the range of lines of the file: {[1, n]}")
        if end != -1:
            if end < start:
                raise ToolError(f"Invalid `view_range`: {_show(view_range)}. Its second element `{_show(end)}` "
                                f"should be larger or equal than its first `{start}`")
            if end > n:
                raise ToolError(f"Invalid `view_range`: {_show(view_range)}. Its second element `{_show(end)}` "
                                f"should be smaller than the number of lines in the file: `{n}`")
        else:
            end = n
        return self._cat(lines[start - 1:end], path, start)

    def _create(self, path: str, args: dict[str, Any]) -> str:
        file_text = _string(args, "file_text", "create", required=True)
        if len(file_text) > MAX_FILE_BYTES:
            raise ToolError(f"`file_text` is {len(file_text)} characters; the editor writes at most "
                            f"{MAX_FILE_BYTES}")
        kind, _ = self._kind(path)
        if kind != "missing":
            raise ToolError(f"File already exists at: {path}. Cannot overwrite files using command `create`.")
        self._write_text(path, file_text)
        self._remember(path, None)
        return f"File created successfully at: {path}"

    def _str_replace(self, path: str, args: dict[str, Any]) -> str:
        old_str = _string(args, "old_str", "str_replace", required=True)
        new_str = _string(args, "new_str", "str_replace", required=False) or ""
        if not old_str:
            raise ToolError("Parameter `old_str` must not be empty: give the exact text to replace")
        if len(new_str) > MAX_FILE_BYTES:
            raise ToolError(f"`new_str` is {len(new_str)} characters; the editor writes at most {MAX_FILE_BYTES}")
        text = self._read_text(path)
        count = text.count(old_str)
        if count == 0:
            raise ToolError(f"No replacement was performed, old_str `{_clip(old_str)}` did not appear verbatim "
                            f"in {path}.")
        if count > 1:
            starts, at = [], text.find(old_str)
            while at != -1:
                starts.append(text.count("\n", 0, at) + 1)
                at = text.find(old_str, at + len(old_str))
            raise ToolError(f"No replacement was performed. Multiple occurrences of old_str `{_clip(old_str)}` in "
                            f"lines {starts}. Please ensure it is unique")
        new_text = text.replace(old_str, new_str, 1)
        self._write_text(path, new_text)
        self._remember(path, text)
        at = text.count("\n", 0, text.find(old_str))
        first = max(0, at - SNIPPET_LINES)
        last = at + SNIPPET_LINES + new_str.count("\n")
        snippet = new_text.split("\n")[first:last + 1]
        return (f"The file {path} has been edited. " + self._cat(snippet, f"a snippet of {path}", first + 1)
                + "Review the changes and make sure they are as expected. Edit the file again if necessary.")

    def _insert(self, path: str, args: dict[str, Any]) -> str:
        new_str = _string(args, "new_str", "insert", required=True)
        insert_line = args.get("insert_line")
        if insert_line is None:
            raise MalformedCall("Parameter `insert_line` is required for command: insert")
        if type(insert_line) is not int:
            raise MalformedCall(f"Parameter `insert_line` must be an integer, got {_show(insert_line)}")
        if len(new_str) > MAX_FILE_BYTES:
            raise ToolError(f"`new_str` is {len(new_str)} characters; the editor writes at most {MAX_FILE_BYTES}")
        text = self._read_text(path)
        lines = _lines(text)
        n = len(lines)
        if not 0 <= insert_line <= n:
            raise ToolError(f"Invalid `insert_line` parameter: {_show(insert_line)}. It should be within the range "
                            f"of lines of the file: {[0, n]}")
        new_lines = new_str[:-1].split("\n") if new_str.endswith("\n") else new_str.split("\n")
        result = lines[:insert_line] + new_lines + lines[insert_line:]
        new_text = "\n".join(result) + ("\n" if text.endswith("\n") or not text else "")
        self._write_text(path, new_text)
        self._remember(path, text)
        first = max(0, insert_line - SNIPPET_LINES)
        snippet = lines[first:insert_line] + new_lines + lines[insert_line:insert_line + SNIPPET_LINES]
        return (f"The file {path} has been edited. "
                + self._cat(snippet, "a snippet of the edited file", first + 1)
                + "Review the changes and make sure they are as expected (correct indentation, no duplicate "
                  "lines, etc). Edit the file again if necessary.")

    def _undo(self, path: str) -> str:
        history = self._history.get(path)
        if not history:
            raise ToolError(f"No edit history found for {path}.")
        before = history.pop()
        if before is None:  # the last edit created the file
            r = self._sh(f"rm -f -- {shlex.quote(path)}")
            if r.exit_code != 0:
                history.append(before)
                raise ToolError(f"Could not remove {path}: {r.output[-500:]}")
            return f"Last edit to {path} undone successfully: the file it created is removed."
        self._live_box().write_file(path, before)
        text = before.decode("utf-8", "surrogateescape")
        return f"Last edit to {path} undone successfully. " + self._cat(_lines(text), path)


def _string(args: dict[str, Any], key: str, command: str, *, required: bool) -> str | None:
    """A string argument, checked: present if required, a str, and encodable as UTF-8."""
    value = args.get(key)
    if value is None:
        if required:
            raise MalformedCall(f"Parameter `{key}` is required for command: {command}")
        return None
    if not isinstance(value, str):
        raise MalformedCall(f"Parameter `{key}` must be a string, got {type(value).__name__}: {_show(value, 100)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedCall(f"Parameter `{key}` holds characters that are not valid Unicode text") from None
    return value
