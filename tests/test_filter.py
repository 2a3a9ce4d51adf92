"""`swepost filter`: every rule, format-error masking, the Arrow round-trip of tool arguments, and TRL rendering.

Trajectories are built by hand (no docker) in the exact shape the agent loop writes them (format 2: an error
answer carries its TurnError mark); `old_format` turns one into a format 1 record, which has no marks.
"""

from __future__ import annotations

import itertools
import json

import pytest

from swepost.envs.swe import TOOLS
from swepost.errors import BadInput, WorkFailed
from swepost.records import ERROR_KEY, NO_TOOL_CALL, Trajectory
from swepost.rewards import filters
from swepost.stages.collect import TRAJECTORIES_FILE, write_trajectories
from swepost.stages.filter import REPORT_FILE, TRAIN_FILE, FilterConfig, run_filter, select

_ids = itertools.count()

EDIT_ARGS = {"command": "str_replace", "path": "src/calc.py", "old_str": "return a - b", "new_str": "return a + b"}
BASH_ARGS = {"command": "pytest -q tests/test_calc.py"}


def _call(name: str, args) -> dict:
    return {"id": f"call_{next(_ids)}", "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}


def _turn(*calls: dict, content: str = "", results: list[str | tuple[str, str]] | None = None) -> list[dict]:
    """An assistant turn and its tool results; a result given as (text, kind) is an error marked `kind`."""
    out = [{"role": "assistant", "content": content, "tool_calls": list(calls)}]
    for call, result in zip(calls, results or ["ok"] * len(calls), strict=True):
        text, kind = result if isinstance(result, tuple) else (result, None)
        out.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"], "content": text})
        if kind:
            out[-1][ERROR_KEY] = kind
    return out


def bash(command: str = "pytest -q tests/test_calc.py", out: str = "1 passed") -> list[dict]:
    return _turn(_call("bash", {"command": command}), results=[out])


def edit(out: str | tuple[str, str] = "The file src/calc.py has been edited.") -> list[dict]:
    return _turn(_call("str_replace_editor", EDIT_ARGS), results=[out])


def failed_edit() -> list[dict]:
    return edit(out=("Error: No replacement was performed: old_str did not appear in src/calc.py.", "tool"))


def bad_json() -> list[dict]:
    call = {**_call("bash", '{"command": "ls'), "error": "The arguments are not valid JSON."}  # as parsed from text
    return _turn(call, results=[("Error: The arguments are not valid JSON.", "format")])


def no_call(text: str = "I think the bug is in calc.") -> list[dict]:
    return [{"role": "assistant", "content": text}, {"role": "user", "content": NO_TOOL_CALL, ERROR_KEY: "format"}]


def old_format(traj: Trajectory) -> Trajectory:
    """The same episode as a format 1 record: written before errors were marked on the turn."""
    messages = [{k: v for k, v in m.items() if k != ERROR_KEY} for m in traj.messages]
    return traj.model_copy(update={"format": 1, "messages": messages})


def submit() -> list[dict]:
    return _turn(_call("submit", {}), results=["Submitted: the episode is over."])


def episode(instance_id: str, sample: int, *turns: list[dict], resolved: str | None = "RESOLVED_FULL",
            reward: float | None = None, exit_status: str | None = "submitted", prompt_tokens: int = 0,
            completion_tokens: int = 0) -> Trajectory:
    messages = [{"role": "system", "content": "You are a software engineer."},
                {"role": "user", "content": f"Fix the bug in {instance_id}."}]
    for t in turns:
        messages.extend(t)
    if reward is None and resolved is not None:
        reward = 1.0 if resolved == "RESOLVED_FULL" else 0.0
    return Trajectory(episode_id=f"{instance_id}#{sample}", instance_id=instance_id, sample=sample,
                      tools=json.loads(json.dumps(TOOLS)), messages=messages, exit_status=exit_status,
                      resolved=resolved, reward=reward, turns=len(turns), prompt_tokens=prompt_tokens,
                      completion_tokens=completion_tokens,
                      tool_calls=sum(len(m.get("tool_calls") or []) for m in messages))


def write_trajs(store, trajectories: list[Trajectory], name: str = "trajs") -> str:
    with store.write(name, "trajectories", producer={"stage": "test"}) as w:
        write_trajectories(w.path, trajectories)
    return w.artifact.id


def rows(art) -> list[dict]:
    return [json.loads(line) for line in (art.path / TRAIN_FILE).read_text().splitlines()]


# --- rules --------------------------------------------------------------------------------------------------------

def test_require_resolved_and_min_reward():
    full = episode("a", 0, edit(), submit())
    partial = episode("a", 1, edit(), submit(), resolved="RESOLVED_PARTIAL", reward=0.5)
    ungraded = episode("a", 2, edit(), submit(), resolved=None)
    assert filters.require_resolved(full) is None
    assert filters.require_resolved(partial) == "unresolved"
    assert filters.require_resolved(ungraded) == "ungraded"
    assert filters.require_resolved(partial, min_reward=0.5) is None
    assert filters.require_resolved(partial, min_reward=0.6) == "reward_below_min"
    assert filters.require_resolved(ungraded, min_reward=0.0) == "ungraded"


def test_require_submitted_max_turns_and_max_tokens():
    done = episode("a", 0, bash(), edit(), submit())
    cut = episode("a", 1, bash(), edit(), exit_status="max_turns")
    assert filters.require_submitted(done) is None
    assert filters.require_submitted(cut) == "not_submitted:max_turns"
    assert filters.require_submitted(episode("a", 2, bash(), exit_status=None)) == "not_submitted:unfinished"
    assert filters.max_turns(done, 3) is None and filters.max_turns(done, 2) == "too_many_turns"
    # the policy's counts sum the prompt over every turn: not the length of the conversation to train on
    counted = episode("a", 3, bash(), submit(), prompt_tokens=90_000, completion_tokens=100)
    assert filters.max_tokens(counted, filters.estimate_tokens(counted)) is None
    estimated = filters.estimate_tokens(done)  # about 4 characters a token
    assert estimated > 0
    longer = episode("a", 4, bash(out="x" * 4000), edit(), submit())
    assert filters.estimate_tokens(longer) >= estimated + 990
    assert filters.max_tokens(done, estimated) is None and filters.max_tokens(longer, estimated) == "too_many_tokens"


def test_dedupe_ignores_tool_call_ids_and_argument_spelling():
    a = episode("a", 0, bash(), edit(), submit())
    b = episode("a", 1, bash(), edit(), submit())  # same conversation, fresh call ids
    c = episode("a", 2, bash("ls"), edit(), submit())
    d = episode("b", 0, bash(), edit(), submit())  # another task
    assert a.messages[2]["tool_calls"][0]["id"] != b.messages[2]["tool_calls"][0]["id"]
    e = a.model_copy(deep=True)
    e.messages[2]["tool_calls"][0]["function"]["arguments"] = BASH_ARGS  # a dict, not a string: same call
    assert filters.dedupe([a, b, c, d, e]) == [None, "duplicate", None, None, "duplicate"]


def test_per_task_cap_keeps_shortest_first_ties_in_order():
    t = [episode("a", 0, bash(), bash("ls"), edit(), submit()),  # 4 turns
         episode("a", 1, edit(), submit()),  # 2
         episode("b", 0, edit(), submit()),
         episode("a", 2, bash(), edit(), submit()),  # 3
         episode("a", 3, edit(), submit())]  # 2, after a#1
    assert filters.per_task_cap(t, 2) == ["per_task_cap", None, None, "per_task_cap", None]
    assert filters.per_task_cap(t, 1) == ["per_task_cap", None, None, "per_task_cap", "per_task_cap"]
    # the longest first (BrowserAgent's RFT): a#0 (4 turns), then a#2 (3)
    assert filters.per_task_cap(t, 1, "longest") == [None, "per_task_cap", None, "per_task_cap", "per_task_cap"]
    assert filters.per_task_cap(t, 2, "longest") == [None, "per_task_cap", None, None, "per_task_cap"]


def test_solve_rate_band_counts_every_graded_episode_and_keeps_partly_solved_tasks(store):
    t = [episode("always", 0, edit(), submit()), episode("always", 1, edit(), submit()),
         episode("half", 0, edit(), submit()), episode("half", 1, edit(), submit(), resolved="RESOLVED_NO"),
         episode("half", 2, edit(), submit(), resolved="UNGRADED", reward=None),  # no verdict: not in the rate
         episode("quarter", 0, edit(), submit()),
         *[episode("quarter", i, bash(), submit(), resolved="RESOLVED_NO") for i in (1, 2, 3)],
         episode("never", 0, edit(), submit(), resolved="RESOLVED_NO")]
    assert filters.solve_rates(t) == {"always": 1.0, "half": 0.5, "quarter": 0.25, "never": 0.0}
    assert filters.solve_rate_band(t, 0.0, 0.99) == [*(["solve_rate"] * 2), None, None, None, None, None, None,
                                                     None, None]
    art = run_filter(FilterConfig(trajectories=write_trajs(store, t), max_solve_rate=0.75, min_solve_rate=0.3,
                                  max_per_task=1, prefer="longest"), store)
    assert [r["episode_id"] for r in rows(art)] == ["half#0"]  # quarter: below 0.3; always: above 0.75
    assert art.stats["dropped_by_reason"]["solve_rate"] == 3  # always#0-1, quarter#0; the rest were not resolved
    with pytest.raises(ValueError, match="above max_solve_rate"):
        FilterConfig(trajectories="x", min_solve_rate=0.8, max_solve_rate=0.5)


def test_format_error_turns():
    mixed = _turn(_call("bash", {"command": "ls"}), _call("bash", '{"bad'),
                  results=["calc.py", ("Error: Tool arguments are not valid JSON.", "format")])
    t = episode("a", 0, bash(), bad_json(), no_call(), failed_edit(), mixed, edit(), submit())
    kinds = [(i, t.messages[i].get("content") or t.messages[i]["tool_calls"][0]["function"]["name"])
             for i in filters.format_error_turns(t)]
    assert [i for i, _ in kinds] == [4, 6, 8]  # bad JSON, no tool call, str_replace not found; not `mixed`
    assert kinds[1][1] == "I think the bug is in calc."
    assert filters.format_error_turns(old_format(t)) == [4, 6, 8]  # read by the text: the same turns
    # an assistant message the episode ended on (no answer yet) is not an error turn
    last = episode("a", 1, bash(), exit_status="context_overflow")
    last.messages = last.messages[:3]
    assert filters.format_error_turns(last) == []


def test_format_errors_are_read_from_the_marks_not_the_text():
    """A command whose output starts with "Error: " is no error of the loop's; a broken sandbox's answer is
    no format error (format 1 records counted both, by their text)."""
    printed = bash("python -c 'print(\"Error: no config\")'", out="Error: no config")
    broken = bash("ls", out=("Error: the sandbox failed: container gone", "sandbox"))
    t = episode("a", 0, bash(), printed, edit(), broken, exit_status="sandbox_error", resolved=None)
    assert filters.format_error_turns(t) == []
    assert filters.format_error_turns(old_format(t)) == [4, 8]


# --- the stage ----------------------------------------------------------------------------------------------------

def mixed_set() -> list[Trajectory]:
    return [
        episode("t1", 0, bash(), bad_json(), edit(), submit()),  # kept, one format error
        episode("t1", 1, bash(), bad_json(), edit(), submit()),  # duplicate of t1#0
        episode("t1", 2, edit(), submit(), resolved="RESOLVED_NO"),  # unresolved
        episode("t2", 0, bash(), no_call(), edit(), submit()),  # kept, one format error
        episode("t2", 1, bash(), edit(), exit_status="max_turns"),  # resolved but never submitted
        episode("t3", 0, bash(), bash("ls"), bash("git diff"), edit(), submit()),  # 5 turns: over max_turns=4
        episode("t3", 1, bash(out="x" * 240_000), submit()),  # over max_tokens: ~60k tokens of text
        episode("t4", 0, bash(), bash("ls"), edit(), submit()),  # 4 turns: loses the per-task cap
        episode("t4", 1, edit(), submit()),  # kept (2 turns)
        episode("t4", 2, bash(), edit(), submit()),  # kept (3 turns)
    ]


def test_stage_rules_and_report(store):
    source = write_trajs(store, mixed_set())
    art = run_filter(FilterConfig(trajectories=source, max_turns=4, max_tokens=50_000, max_per_task=2), store)
    assert art.kind == "sft-data" and art.name == "sft-data" and art.parents == [source]
    kept = [r["episode_id"] for r in rows(art)]
    assert kept == ["t1#0", "t2#0", "t4#1", "t4#2"]
    assert art.stats["dropped_by_reason"] == {"duplicate": 1, "not_submitted:max_turns": 1, "per_task_cap": 1,
                                              "too_many_tokens": 1, "too_many_turns": 1, "unresolved": 1}
    assert art.stats["kept"] == 4 and art.stats["dropped"] == 6 and art.stats["episodes"] == 10
    assert art.stats["masked_turns"] == 2 and art.stats["dropped_turns"] == 0 and art.stats["tasks"] == 3
    report = json.loads((art.path / REPORT_FILE).read_text())
    assert report["source"] == source and report["config"]["max_per_task"] == 2
    assert {d["episode_id"]: d.get("reason") for d in report["decisions"]}["t2#1"] == "not_submitted:max_turns"
    assert not store.verify(art)
    row = rows(art)[0]
    assert set(row) == {"messages", "tools", "instance_id", "episode_id"} and row["tools"] == TOOLS
    # with the rules off, everything but the duplicate passes
    loose = run_filter(FilterConfig(trajectories=source, name="loose", require_resolved=False,
                                    require_submitted=False), store)
    assert loose.stats["kept"] == 9 and loose.stats["dropped_by_reason"] == {"duplicate": 1}
    nodedupe = run_filter(FilterConfig(trajectories=source, name="all", require_resolved=False,
                                       require_submitted=False, dedupe=False), store)
    assert nodedupe.stats["kept"] == 10


def test_min_reward_replaces_resolved(store):
    source = write_trajs(store, [episode("a", 0, edit(), submit(), resolved="RESOLVED_PARTIAL", reward=0.5),
                                 episode("a", 1, bash(), edit(), submit(), resolved="RESOLVED_NO", reward=0.0),
                                 episode("b", 0, edit(), submit())])
    art = run_filter(FilterConfig(trajectories=source, min_reward=0.5), store)
    assert [r["episode_id"] for r in rows(art)] == ["a#0", "b#0"]
    assert art.stats["dropped_by_reason"] == {"reward_below_min": 1}


def test_format_errors_mask_vs_drop(store):
    t = episode("a", 0, bash(), bad_json(), no_call(), edit(), submit())
    source = write_trajs(store, [t])
    masked = rows(run_filter(FilterConfig(trajectories=source), store))[0]["messages"]
    assert len(masked) == len(t.messages)
    flags = [(m["role"], m.get("train")) for m in masked if m["role"] == "assistant"]
    assert flags == [("assistant", None), ("assistant", False), ("assistant", False), ("assistant", None),
                     ("assistant", None)]
    assert masked[7]["content"] == NO_TOOL_CALL  # the nudge stays in context
    assert not any(ERROR_KEY in m for m in masked)  # the marks are swepost's, not the chat format's
    assert "error" not in masked[4]["tool_calls"][0]  # nor a text parser's note on the call
    assert masked[4]["tool_calls"][0]["function"]["arguments"] == '{"command": "ls'  # unparseable: as it was

    dropped_art = run_filter(FilterConfig(trajectories=source, name="dropped", format_errors="drop"), store)
    dropped = rows(dropped_art)[0]["messages"]
    assert dropped_art.stats["dropped_turns"] == 2 and dropped_art.stats["masked_turns"] == 0
    assert len(dropped) == len(t.messages) - 4
    assert not any("train" in m for m in dropped)
    assert NO_TOOL_CALL not in [m["content"] for m in dropped]
    assert not any(str(m["content"]).startswith("Error: ") for m in dropped)
    assert [m["role"] for m in dropped] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                            "assistant", "tool"]
    # every tool result still follows the call it answers
    for i, m in enumerate(dropped):
        if m["role"] == "tool":
            assert m["tool_call_id"] in [c["id"] for c in dropped[i - 1]["tool_calls"]]


def test_old_format_file_is_read_by_the_text(store):
    """A trajectories.jsonl written before the marks ("format": 1, no `error` keys) loads, and its error turns
    are masked and dropped exactly as a marked record's."""
    t = episode("a", 0, bash(), bad_json(), no_call(), failed_edit(), edit(), submit())
    with store.write("old", "trajectories", producer={"stage": "test"}) as w:
        line = json.loads(old_format(t).model_dump_json())
        assert line["format"] == 1 and not any(ERROR_KEY in m for m in line["messages"])
        (w.path / TRAJECTORIES_FILE).write_text(json.dumps(line) + "\n")
    new = write_trajs(store, [t], name="new")
    for mode in ("mask", "drop"):
        old_art = run_filter(FilterConfig(trajectories="old", name=f"old-{mode}", format_errors=mode), store)
        new_art = run_filter(FilterConfig(trajectories=new, name=f"new-{mode}", format_errors=mode), store)
        assert rows(old_art)[0]["messages"] == rows(new_art)[0]["messages"]
        assert old_art.stats[f"{'masked' if mode == 'mask' else 'dropped'}_turns"] == 3


def test_episode_with_only_error_turns_has_nothing_to_train(store):
    source = write_trajs(store, [episode("a", 0, bad_json(), no_call(), resolved="RESOLVED_FULL"),
                                 episode("b", 0, edit(), submit())])
    art = run_filter(FilterConfig(trajectories=source, require_submitted=False), store)
    assert art.stats["dropped_by_reason"] == {"no_trainable_turns": 1}


def test_arguments_become_dicts_and_survive_arrow(store):
    from datasets import load_dataset

    source = write_trajs(store, [episode("a", 0, bash(), bad_json(), edit(), submit()),
                                 episode("b", 0, edit(), submit()),
                                 episode("c", 0, bash("echo 'naïve → λ'"), submit())])
    art = run_filter(FilterConfig(trajectories=source), store)
    written = rows(art)
    calls = {c["function"]["name"]: c["function"]["arguments"] for r in written for m in r["messages"]
             for c in m.get("tool_calls") or [] if not isinstance(c["function"]["arguments"], str)}
    assert calls == {"bash": {"command": "echo 'naïve → λ'"}, "str_replace_editor": EDIT_ARGS, "submit": {}}
    ds = load_dataset("json", data_files=str(art.path / TRAIN_FILE), split="train")
    assert len(ds) == 3
    for loaded, original in zip(ds, written, strict=True):
        # exactly what was written: no null keys filled in by Arrow, in messages, arguments or tool schemas
        assert loaded["messages"] == original["messages"]
        assert loaded["tools"] == original["tools"]
    first = ds[0]["messages"]
    assert first[2]["tool_calls"][0]["function"]["arguments"] == {"command": "pytest -q tests/test_calc.py"}
    assert first[6]["tool_calls"][0]["function"]["arguments"] == EDIT_ARGS
    assert "train" not in first[2] and first[4]["train"] is False


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from swepost.train.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("tiny")
    build_tiny_model(out)
    return out


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_max_tokens_with_the_real_tokenizer_drops_what_sft_would_cut(store, tiny_model_dir):
    """The text estimate (4 characters a token) thinks this episode fits; the tokenizer SFT will use counts
    more tokens (digits split finely), so with `tokenizer` the episode is dropped instead of being cut at the
    end in SFT, losing its fix and its submit."""
    from swepost.stages.filter import token_counter, training_messages

    traj = episode("a", 0, bash(out=" ".join(str(n * 7919 % 100003) for n in range(600))), edit(), submit())
    source = write_trajs(store, [traj])
    real = token_counter(str(tiny_model_dir), store)(training_messages(traj, "mask")[0], traj.tools)
    estimate = filters.estimate_tokens(traj)
    assert real > estimate, (real, estimate)  # the premise: the estimate is too low for this text
    limit = (real + estimate) // 2
    loose = run_filter(FilterConfig(trajectories=source, name="estimated", max_tokens=limit), store)
    assert loose.stats["kept"] == 1
    with pytest.raises(WorkFailed, match="too_many_tokens"):
        run_filter(FilterConfig(trajectories=source, name="counted", max_tokens=limit,
                                tokenizer=str(tiny_model_dir)), store)
    fits = run_filter(FilterConfig(trajectories=source, name="counted", max_tokens=real,
                                   tokenizer=str(tiny_model_dir)), store)
    assert fits.stats["kept"] == 1  # exactly the length SFT will see fits
    with pytest.raises(BadInput, match="tokenizer"):
        run_filter(FilterConfig(trajectories=source, max_tokens=10, tokenizer=str(tiny_model_dir / "nope")), store)


def test_trl_template_renders_a_kept_row(store, tiny_tokenizer):
    from datasets import load_dataset

    source = write_trajs(store, [episode("a", 0, bash(), bad_json(), edit(), submit())])
    art = run_filter(FilterConfig(trajectories=source), store)
    row = load_dataset("json", data_files=str(art.path / TRAIN_FILE), split="train")[0]
    text = tiny_tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert text.count('<tool_call>\n{"name": "') == 4  # the system prompt shows the format too
    assert '{"name": "bash", "arguments": {"command": "pytest -q tests/test_calc.py"}}' in text
    assert ('{"name": "str_replace_editor", "arguments": ' + json.dumps(EDIT_ARGS, ensure_ascii=False) + "}"
            in text)
    assert '{"name": "submit", "arguments": {}}' in text
    assert "null" not in text  # no Arrow-filled keys in calls or tool schemas
    assert '"name": "str_replace_editor", "description"' in text  # the tool schemas are in the system prompt


# --- the command line --------------------------------------------------------------------------------------------

def test_cli_filter_json_and_table(store, swepost):
    source = write_trajs(store, mixed_set())
    r = swepost("filter", "trajs", "--max-turns", "4", "--max-per-task", "2", "--set", "max_tokens=50000",
                "--json", check=0)
    out = json.loads(r.stdout)
    assert out["kind"] == "sft-data" and out["stats"]["kept"] == 4 and out["stats"]["masked_turns"] == 2
    assert out["stats"]["dropped_by_reason"]["too_many_turns"] == 1
    assert store.resolve(out["id"]).parents == [source]

    r = swepost("filter", "trajs", "--name", "strict", "--format-errors", "drop", "--min-reward", "1.0", check=0)
    assert "kept" in r.stdout and "dropped: duplicate" in r.stdout and "dropped turns" in r.stdout
    assert "strict@" in r.stdout
    r = swepost("filter", "trajs", "--format-errors", "keep")
    assert r.returncode == 2 and "format_errors" in r.stderr
    cfg = swepost("filter", "trajs", "--max-per-task", "3", "--print-config", check=0).stdout
    assert "max_per_task: 3" in cfg and "format_errors: mask" in cfg


def test_cli_errors(store, swepost):
    write_trajs(store, [episode("a", 0, edit(), submit(), resolved="RESOLVED_NO")])
    r = swepost("filter", "trajs")
    assert r.returncode == 1 and "no episode" in r.stderr and "unresolved: 1" in r.stderr
    with store.write("tasks", "tasks", producer={"stage": "test"}) as w:
        (w.path / "tasks.jsonl").write_text("")
    r = swepost("filter", "tasks")
    assert r.returncode == 2 and "filter reads trajectories" in r.stderr
    with store.write("broken", "trajectories", producer={"stage": "test"}) as w:
        (w.path / TRAJECTORIES_FILE).write_text('{"episode_id": "x"}\n')
    r = swepost("filter", "broken")
    assert r.returncode == 2 and f"{TRAJECTORIES_FILE}:1" in r.stderr


def test_rft_passes_its_filter_settings():
    """The rft stage validates {"trajectories", "name", **filter} against this config."""
    from swepost.config import validate

    cfg = validate(FilterConfig, {"trajectories": "x", "name": "rft-r1-data", "max_per_task": 2,
                                  "format_errors": "drop"}, prefix=("filter",))
    assert cfg.max_per_task == 2 and cfg.require_resolved
    reasons, kept = select([episode("a", 0, edit(), submit())], cfg)
    assert reasons == [None] and list(kept) == [0]


@pytest.mark.parametrize("status", ["policy_error", "sandbox_error"])
def test_infrastructure_failures_are_ungraded_not_wrong(status):
    from swepost.stages.collect import episode_stats

    failed = episode("a", 0, edit(), resolved=None, reward=None, exit_status=status)
    wrong = episode("b", 0, edit(), submit(), resolved="RESOLVED_NO", reward=0.0)
    right = episode("c", 0, edit(), submit())
    assert filters.is_ungraded(failed) and filters.is_infra_failure(failed)
    assert filters.require_graded(failed) == "ungraded" and filters.require_resolved(failed) == "ungraded"
    assert not filters.is_ungraded(wrong) and not filters.is_infra_failure(wrong)
    stats = episode_stats([failed, wrong, right])
    assert (stats["ungraded"], stats["resolved"], stats["resolved_rate"]) == (1, 1, 0.5)  # 1 of 2 graded
