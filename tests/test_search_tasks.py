"""search tasks: FlashRAG / Search-R1 JSONL, HotpotQA's own rows and Search-R1's parquet rows import through the
real CLI; the hop count is read where the row says it; bad rows are reported by file, line and column (exit 2)."""

from __future__ import annotations

import json

import pytest

from swepost.errors import BadInput
from swepost.stages.tasks import load_tasks, read_task_file, row_to_task

FLASHRAG = [
    {"id": "test_0", "question": "who got the first nobel prize in physics?",
     "golden_answers": ["Wilhelm Conrad Röntgen"], "metadata": {"source": "nq"}},
    {"id": "test_1", "question": "when is the next deadpool movie being released?",
     "golden_answers": ["May 18, 2018", "2018"]},
    {"id": "test_2", "question": "which corpus?", "golden_answers": "one answer as a string", "corpus": "wiki-18"},
]
HOTPOT = {"_id": "5a8b57f25542995d1e6f1371", "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
          "answer": "yes", "type": "comparison", "level": "hard",
          "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0], ["Ed Wood", 1]],
          "context": [["Scott Derrickson", ["Scott Derrickson is an American director."]],
                      ["Ed Wood", ["Edward Davis Wood Jr. was an American filmmaker.", "He made films."]]]}
SEARCH_R1 = {"id": "train_7", "question": "who wrote the song photograph by ringo starr?",
             "golden_answers": None, "data_source": "nq", "ability": "fact-reasoning",
             "prompt": [{"role": "user", "content": "Answer the given question. ..."}],
             "reward_model": {"style": "rule", "ground_truth": {"target": ["Ringo Starr", "George Harrison"]}},
             "extra_info": {"index": 7, "split": "train"}}


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps at 80 columns in a pipe; keep messages on one line


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_flashrag_rows_import_through_the_cli(swepost, store, tmp_path):
    path = write_jsonl(tmp_path / "nq.jsonl", FLASHRAG)
    r = swepost("tasks", "import", path, "--kind", "search", "--name", "nq", "--json", check=0)
    assert json.loads(r.stdout)["stats"]["tasks"] == 3 and json.loads(r.stdout)["stats"]["unusable"] == 0
    t0, t1, t2 = load_tasks(store.resolve("nq"))
    assert (t0.instance_id, t0.kind, t0.problem_statement) == ("test_0", "search", FLASHRAG[0]["question"])
    assert t0.verify.gold_answers == ["Wilhelm Conrad Röntgen"] and t0.metadata == {"source": "nq"}
    assert t1.verify.gold_answers == ["May 18, 2018", "2018"] and t1.metadata == {}
    assert t2.verify.gold_answers == ["one answer as a string"] and t2.metadata == {"corpus": "wiki-18"}
    assert t0.repo is None and t0.verify.fail_to_pass == [] and t0.patch == ""
    # the rows' own kind, without --kind
    own = write_jsonl(tmp_path / "own.jsonl", [{**row, "kind": "search"} for row in FLASHRAG])
    swepost("tasks", "import", own, "--name", "own", check=0)
    assert load_tasks(store.resolve("own")) == load_tasks(store.resolve("nq"))


def test_hotpotqa_rows_keep_their_columns_and_count_hops(tmp_path):
    (task,) = read_task_file(write_jsonl(tmp_path / "hotpot.jsonl", [HOTPOT]), kind="search")
    assert task.instance_id == HOTPOT["_id"] and task.verify.gold_answers == ["yes"]
    assert task.metadata["hops"] == 2  # two distinct supporting titles
    assert {k: task.metadata[k] for k in ("type", "level", "supporting_facts", "context")} == {
        k: HOTPOT[k] for k in ("type", "level", "supporting_facts", "context")}
    # the Hub's HotpotQA stores supporting_facts as columns of lists; MuSiQue gives a decomposition; hops wins
    hub = {**HOTPOT, "supporting_facts": {"title": ["A", "B", "B", "C"], "sent_id": [0, 1, 2, 0]}}
    assert row_to_task(hub, default_kind="search").metadata["hops"] == 3
    musique = {"id": "2hop__1", "question": "q?", "answer": "a", "question_decomposition": [{"id": 1}, {"id": 2}]}
    assert row_to_task(musique, default_kind="search").metadata["hops"] == 2
    assert row_to_task({**HOTPOT, "hops": 4}, default_kind="search").metadata["hops"] == 4
    assert row_to_task({**HOTPOT, "hops": "3"}, default_kind="search").metadata["hops"] == 3
    assert row_to_task({**musique, "metadata": {"hops": 5}}, default_kind="search").metadata["hops"] == 5
    assert "hops" not in row_to_task(FLASHRAG[0], default_kind="search").metadata
    # both golden_answers and an answer: the golds are graded, a different answer is kept beside them
    both = row_to_task({**FLASHRAG[1], "answer": "in May"}, default_kind="search")
    assert both.verify.gold_answers == ["May 18, 2018", "2018"] and both.metadata["answer"] == "in May"
    assert "answer" not in row_to_task({**FLASHRAG[1], "answer": "2018"}, default_kind="search").metadata
    # ids and golds written as numbers, golds as a JSON string of a list (as some Hub datasets ship them)
    numeric = row_to_task({"id": 17, "question": "q?", "golden_answers": [1998, "MCMXCVIII"]}, default_kind="search")
    assert numeric.instance_id == "17" and numeric.verify.gold_answers == ["1998", "MCMXCVIII"]
    listed = row_to_task({"id": "j", "question": "q?", "golden_answers": '["a", "b"]'}, default_kind="search")
    assert listed.verify.gold_answers == ["a", "b"]
    same = row_to_task({"id": "x", "instance_id": "x", "question": "q", "problem_statement": "q", "answer": "a"},
                       default_kind="search")
    assert same.instance_id == "x"


def test_search_r1_parquet_rows_import(swepost, store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([SEARCH_R1]), path)
    r = swepost("tasks", "import", path, "--kind", "search", "--name", "sr1", "--json", check=0)
    assert json.loads(r.stdout)["stats"]["unusable"] == 0
    (task,) = load_tasks(store.resolve("sr1"))
    assert task.instance_id == "train_7" and task.verify.gold_answers == ["Ringo Starr", "George Harrison"]
    assert task.metadata["data_source"] == "nq" and task.metadata["extra_info"] == {"index": 7, "split": "train"}
    assert task.metadata["reward_model"]["ground_truth"]["target"] == ["Ringo Starr", "George Harrison"]


def test_malformed_rows_name_file_line_and_column(swepost, store, tmp_path):
    good = FLASHRAG[0]
    bad = [
        {k: v for k, v in good.items() if k != "id"},  # 1
        {**good, "id": "a", "instance_id": "b"},  # 2
        {**good, "id": "r3", "question": 42},  # 3
        {**good, "id": "r4", "golden_answers": [1.5]},  # 4
        {**good, "id": "r5", "golden_answers": ["ok", {"text": "x"}]},  # 5
        {**good, "id": "r6", "metadata": ["not", "a", "dict"]},  # 6
        {**good, "id": "r7", "hops": 0},  # 7
        '{"id": "r8", "question": ',  # 8
        {**good, "id": "r9", "corpus": 18},  # 9
        {"id": "r10", "golden_answers": ["x"]},  # 10
        {**good, "id": "r11", "question": "a", "problem_statement": "b"},  # 11
        {**good, "id": "  "},  # 12
        {**good, "id": "r13"},  # 13: fine
        {**good, "id": "r13"},  # 14: a duplicate
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", bad)
    r = swepost("tasks", "import", path, "--kind", "search", "--name", "bad", check=2)
    assert "Traceback" not in r.stderr and r.stdout == "" and r.stderr.startswith("error: ")
    for where in [f"{path}:1: id: required field missing (id or instance_id)",
                  f"{path}:2: id: instance_id and id are both given and differ",
                  f"{path}:3: question: expected a non-empty string", f"{path}:4: golden_answers: expected answers "
                  "as strings, got 1.5", f"{path}:5: golden_answers: expected answers as strings",
                  f"{path}:6: metadata: expected an object, got list", f"{path}:7: hops: expected a whole number",
                  f"{path}:8: invalid JSON", f"{path}:9: corpus: expected the name of an index",
                  f"{path}:10: question: required field missing", f"{path}:11: problem_statement: question and "
                  "problem_statement are both given and differ", f"{path}:12: id: expected a non-empty string",
                  f"{path}:14: instance_id: duplicate instance_id 'r13' (first on line 13)"]:
        assert where in r.stderr, where
    assert f"{path}:13" not in r.stderr
    assert json.loads(swepost("artifacts", "ls", "--json", check=0).stdout) == []


def test_rows_without_gold_answers_warn_and_strict_refuses(swepost, tmp_path):
    rows = [FLASHRAG[0], {**FLASHRAG[1], "golden_answers": []}, {**FLASHRAG[2], "golden_answers": ["", "  "]},
            {"id": "sr1", "question": "q?", "reward_model": {"style": "rule"}}]
    path = write_jsonl(tmp_path / "nogold.jsonl", rows)
    r = swepost("tasks", "import", path, "--kind", "search", "--json", check=0)
    assert json.loads(r.stdout)["stats"]["unusable"] == 3
    assert f"{path}:2: golden_answers: missing: exact match and F1 score answers against them" in r.stderr
    assert f"{path}:3: golden_answers: missing" in r.stderr and f"{path}:4: golden_answers: missing" in r.stderr
    r = swepost("tasks", "import", path, "--kind", "search", "--name", "strict", "--strict", check=2)
    assert r.stderr.startswith(f"error: {path}:2: golden_answers: missing")


def test_search_tasks_run_in_the_search_environment():
    from swepost.agent import pick_environment
    from swepost.taskkinds import task_kind

    assert task_kind("search").environment == "search"
    assert pick_environment(None, ["search", "search"]) == "search"
    with pytest.raises(BadInput, match="environment 'codeqa' cannot run search tasks .* set it to search"):
        pick_environment("codeqa", ["search"])
