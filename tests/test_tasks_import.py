"""`swepost tasks import`: SWE-bench rows (JSONL or a JSON list) -> a tasks artifact; every problem located."""

from __future__ import annotations

import json

import pytest

from swepost.errors import BadInput
from swepost.stages.tasks import (
    TASKS_FILE,
    TasksImportConfig,
    load_tasks,
    read_task_file,
    row_to_task,
    run_import,
)

IDS = ["swepost__calc-1", "swepost__calc-2", "swepost__textkit-1"]


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps at 80 columns in a pipe; keep ids on one line


@pytest.fixture
def tiny(repo_root):
    return repo_root / "data" / "swe_tiny.jsonl"


@pytest.fixture
def rows(tiny):
    return [json.loads(line) for line in tiny.read_text().splitlines() if line.strip()]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def import_error(swepost, path, name="tasks"):
    r = swepost("tasks", "import", path, "--name", name, check=2)
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.startswith("error: ")
    return r.stderr


# --- the bundled file -----------------------------------------------------------------------------------------

def test_import_bundled_file_cli(swepost, store, tiny):
    r = swepost("tasks", "import", tiny, "--name", "tiny", "--json", check=0)
    out = json.loads(r.stdout)
    art = store.resolve("tiny")
    assert out["id"] == art.id and out["id"].startswith("tiny@")
    assert out["kind"] == "tasks" and out["path"] == str(art.path)
    assert out["stats"] == {"tasks": 3, "repos": 2, "with_image": 1, "unusable": 2}  # calc-2, textkit-1: no patches
    assert "warning: 2 of 3 rows no stage can use" in r.stderr and f"{tiny}:2: patch: missing" in r.stderr
    assert store.verify(art) == [] and list(art.manifest["files"]) == [TASKS_FILE]
    assert art.manifest["producer"]["stage"] == "tasks-import"
    assert art.manifest["producer"]["config"]["name"] == "tiny"

    tasks = {t.instance_id: t for t in load_tasks(art)}
    assert list(tasks) == IDS
    calc1, calc2, text1 = tasks.values()
    # FAIL_TO_PASS / PASS_TO_PASS as JSON strings (calc-1) and as lists (calc-2) both become lists
    assert calc1.verify.fail_to_pass == ["tests/test_ops.py::test_add_positive"]
    assert calc1.verify.pass_to_pass == ["tests/test_ops.py::test_module_imports"]
    assert calc2.verify.fail_to_pass == ["tests/test_stats.py::test_mean_empty_raises_value_error"]
    assert calc2.verify.pass_to_pass == ["tests/test_stats.py::test_mean[1-1]", "tests/test_stats.py::test_mean[2-1.5]"]
    assert calc1.version == "0.1" and calc2.version == "0.1"  # "0.1" and the number 0.1
    assert text1.version is None
    assert text1.env.image == "swepost/textkit:base" and calc1.env.image is None
    assert text1.metadata == {"difficulty": "<15 min fix"} and calc1.metadata == {} and calc2.metadata == {}
    assert text1.verify.pass_to_pass == [] and text1.kind == "swe"
    assert calc1.repo == "swepost/calc" and calc1.base_commit == "0" * 39 + "1"
    assert "a + b" in calc1.patch and calc2.hints_text == "" and calc2.created_at == "2026-01-06T10:00:00Z"

    # the stored rows are plain JSON with the same values
    stored = [json.loads(line) for line in (art.path / TASKS_FILE).read_text().splitlines()]
    assert [s["instance_id"] for s in stored] == IDS
    assert stored[0]["verify"]["fail_to_pass"] == ["tests/test_ops.py::test_add_positive"]
    assert stored[2]["env"]["image"] == "swepost/textkit:base" and stored[2]["metadata"]["difficulty"]


def test_summary_output_and_tasks_ls(swepost, store, tiny):
    r = swepost("tasks", "import", tiny, check=0)
    art = store.resolve("tasks")
    assert f"wrote {art.id}" in r.stdout and "tasks=3" in r.stdout
    r = swepost("tasks", "ls", "tasks", check=0)
    assert all(i in r.stdout for i in IDS)
    assert f"{art.id}: 3 tasks" in r.stdout and "swepost/textkit:base" in r.stdout
    r = swepost("tasks", "ls", art.version[:6], "--limit", "1", check=0)
    assert IDS[0] in r.stdout and IDS[1] not in r.stdout and "2 more" in r.stdout


def test_tasks_ls_rejects_other_kinds(swepost, store):
    with store.write("notes", "eval", producer={}) as w:
        (w.path / "x.txt").write_text("x")
    r = swepost("tasks", "ls", "notes", check=2)
    assert f"{w.artifact.id} is a eval artifact, not tasks" in r.stderr


def test_import_twice_same_id(swepost, tiny):
    first = json.loads(swepost("tasks", "import", tiny, "--json", check=0).stdout)
    second = json.loads(swepost("tasks", "import", tiny, "--json", check=0).stdout)
    assert first["id"] == second["id"]
    assert [a["id"] for a in json.loads(swepost("artifacts", "ls", "--json", check=0).stdout)] == [first["id"]]


def test_function_api_matches(store, tiny, tmp_path):
    art = run_import(TasksImportConfig(source=tiny, name="direct"), store)
    assert art.id.startswith("direct@") and art.stats["tasks"] == 3
    assert load_tasks(art) == read_task_file(tiny)
    # swepost's own records import back unchanged
    again = read_task_file(art.path / TASKS_FILE)
    assert again == load_tasks(art)


def test_loads_with_datasets(store, tiny, tmp_path):
    datasets = pytest.importorskip("datasets")
    art = run_import(TasksImportConfig(source=tiny), store)
    ds = datasets.load_dataset("json", data_files=str(art.path / TASKS_FILE), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 3
    assert ds["instance_id"] == IDS
    assert ds[0]["verify"]["fail_to_pass"] == ["tests/test_ops.py::test_add_positive"]
    assert ds[2]["env"]["image"] == "swepost/textkit:base"


# --- JSON lists -----------------------------------------------------------------------------------------------

def test_json_list_imports_same_tasks(swepost, store, tiny, rows, tmp_path):
    listed = tmp_path / "tasks.json"
    listed.write_text(json.dumps(rows, indent=2))
    out = json.loads(swepost("tasks", "import", listed, "--name", "listed", "--json", check=0).stdout)
    assert out["stats"]["tasks"] == 3
    assert load_tasks(store.resolve("listed")) == read_task_file(tiny)
    assert read_task_file(listed, fmt="json") == read_task_file(tiny)


def test_json_list_malformed_element_line(swepost, rows, tmp_path):
    text = json.dumps(rows, indent=2)
    token = '"instance_id": "swepost__calc-2"'
    at = text.index(token)
    line = text.count("\n", 0, at) + 1
    assert line > 10  # the second element starts well into the file
    bad = tmp_path / "bad.json"
    bad.write_text(text.replace(token, '"instance_id" "swepost__calc-2"'))
    err = import_error(swepost, bad)
    assert f"{bad}:{line}: invalid JSON" in err


def test_json_list_row_error_names_its_first_line(rows, tmp_path):
    del rows[2]["problem_statement"]
    text = json.dumps(rows, indent=2)
    start = text.index('"instance_id": "swepost__textkit-1"')
    line = text.count("\n", 0, text.rindex("{", 0, start)) + 1
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(BadInput) as e:
        read_task_file(path)
    assert str(e.value) == f"{path}:{line}: problem_statement: required field missing"


def test_json_list_edge_cases(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("  [ ]\n")
    with pytest.raises(BadInput, match="no task rows found"):
        read_task_file(empty)
    trailing = tmp_path / "trailing.json"
    trailing.write_text('[\n  {"instance_id": "a"}\n]\n]\n')
    with pytest.raises(BadInput) as e:
        read_task_file(trailing)
    assert f"{trailing}:4" in str(e.value) and "extra data" in str(e.value)
    no_comma = tmp_path / "no_comma.json"
    no_comma.write_text('[\n  {"instance_id": "a"}\n  {"instance_id": "b"}\n]\n')
    with pytest.raises(BadInput) as e:
        read_task_file(no_comma)
    assert str(e.value) == f"{no_comma}:3: invalid JSON: expected ',' or ']' between rows"
    scalar = tmp_path / "scalar.json"
    scalar.write_text('[\n  1\n]\n')
    with pytest.raises(BadInput) as e:
        read_task_file(scalar)
    assert f"{scalar}:2" in str(e.value) and "expected a JSON object per row, got int" in str(e.value)


# --- bad files: exit 2, file:line, no traceback ----------------------------------------------------------------

def test_malformed_jsonl_line(swepost, rows, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [rows[0], '{"instance_id": "x",', rows[2], "not json"])
    err = import_error(swepost, path)
    assert f"{path}:2: invalid JSON" in err and f"{path}:4: invalid JSON" in err
    assert f"{path}:1" not in err and f"{path}:3" not in err


def test_missing_instance_id_on_line_2(swepost, rows, tmp_path):
    del rows[1]["instance_id"]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    err = import_error(swepost, path)
    assert err.strip() == f"error: {path}:2: instance_id: required field missing"


@pytest.mark.parametrize("value, says", [
    ("not a list", "expected a list of test ids or a JSON string of one"),
    ('{"a": 1}', "expected a list of test ids (strings)"),
    ("[1, 2]", "expected a list of test ids (strings)"),
    (5, "expected a list of test ids (strings), got 5"),
    (["ok", ""], "expected a list of test ids (strings)"),
])
def test_bad_fail_to_pass(swepost, rows, tmp_path, value, says):
    rows[2]["FAIL_TO_PASS"] = value
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    err = import_error(swepost, path)
    assert f"{path}:3: FAIL_TO_PASS: {says}" in err


def test_missing_fail_to_pass_and_other_fields(rows, tmp_path):
    del rows[0]["FAIL_TO_PASS"]
    rows[1]["repo"] = ""
    rows[2]["test_cmd"] = 3
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(BadInput) as e:
        read_task_file(path)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{path}:1: FAIL_TO_PASS: required field missing (a list of test ids)"
    assert lines[1].startswith(f"{path}:2: repo: expected a non-empty string")
    assert lines[2] == f"{path}:3: test_cmd: expected a string, got int"
    assert len(lines) == 3


def test_duplicate_instance_id(swepost, rows, tmp_path):
    rows[2]["instance_id"] = rows[0]["instance_id"]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    err = import_error(swepost, path)
    assert f"{path}:3: instance_id: duplicate instance_id 'swepost__calc-1' (first on line 1)" in err


def test_row_not_an_object(swepost, rows, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [rows[0], "[1, 2]", '"text"'])
    err = import_error(swepost, path)
    assert f"{path}:2: expected a JSON object per row, got list" in err
    assert f"{path}:3: expected a JSON object per row, got str" in err


def test_empty_and_missing_files(swepost, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    assert f"{empty}: no task rows found" in import_error(swepost, empty)
    missing = tmp_path / "nope.jsonl"
    assert f"{missing}: file not found" in import_error(swepost, missing)


def test_failed_import_leaves_store_unchanged(swepost, store, home, tiny, rows, tmp_path):
    first = json.loads(swepost("tasks", "import", tiny, "--json", check=0).stdout)
    before = swepost("artifacts", "ls", "--json", check=0).stdout
    del rows[1]["instance_id"]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    dup = write_jsonl(tmp_path / "dup.jsonl", [rows[0], rows[0]])
    for path in (bad, dup, tmp_path / "nope.jsonl"):
        import_error(swepost, path, name="tasks")
        import_error(swepost, path, name="other")
    assert swepost("artifacts", "ls", "--json", check=0).stdout == before
    assert store.resolve("tasks").id == first["id"]
    assert store.verify(store.resolve("tasks")) == []
    assert list((home / "staging").iterdir()) == []
    assert not (home / "artifacts" / "other").exists()


def test_other_kinds_need_no_tests():
    task = row_to_task({"instance_id": "q1", "problem_statement": "What does foo do?", "repo": "o/r",
                        "base_commit": "abc", "answer": "bar", "topic": "io"}, default_kind="codeqa")
    assert task.kind == "codeqa" and task.verify.fail_to_pass == [] and task.verify.reference_answer == "bar"
    assert task.metadata == {"topic": "io"}  # SWE-QA-Pro's `answer` is the reference; unknown columns are kept
    with pytest.raises(BadInput) as e:
        row_to_task({"instance_id": "q1", "problem_statement": "p", "repo": "o/r", "base_commit": "a",
                     "FAIL_TO_PASS": [], "kind": "trivia"})
    assert e.value.key == "kind"
    # with an image, repo and base_commit may be left out
    t = row_to_task({"instance_id": "i", "problem_statement": "p", "image_name": "img:1",
                     "FAIL_TO_PASS": ["t"], "install": "pip install -e ."})
    assert t.repo is None and t.env.image == "img:1" and t.env.install == ["pip install -e ."]


def test_parquet_and_saved_dataset_import_like_jsonl(tiny, tmp_path, swepost):
    """Rows as the Hub ships them (Parquet, or a DatasetDict saved with save_to_disk) import the same tasks."""
    import datasets

    jsonl_tasks = read_task_file(tiny)
    rows = [json.loads(line) for line in tiny.read_text().splitlines()]
    common = sorted(set.intersection(*(set(r) for r in rows)))  # Arrow wants one schema
    table = datasets.Dataset.from_list([{k: r[k] if k not in ("FAIL_TO_PASS", "PASS_TO_PASS") or
                                         isinstance(r[k], str) else json.dumps(r[k]) for k in common}
                                        for r in rows])
    table.to_parquet(str(tmp_path / "t.parquet"))
    datasets.DatasetDict({"test": table}).save_to_disk(str(tmp_path / "saved"))
    ids = [t.instance_id for t in jsonl_tasks]
    for source in (tmp_path / "t.parquet", tmp_path / "saved"):
        got = read_task_file(source)
        assert [t.instance_id for t in got] == ids
        assert [t.verify for t in got] == [t.verify for t in jsonl_tasks]
    out = json.loads(swepost("tasks", "import", str(tmp_path / "saved"), "--name", "hub", "--json", check=0).stdout)
    assert out["stats"]["tasks"] == len(ids)
    r = swepost("tasks", "import", str(tmp_path / "saved"), "--split", "train", check=2)
    assert "choose a split" in r.stderr and "test" in r.stderr
    (tmp_path / "broken.parquet").write_text("not parquet")
    assert "not a readable Parquet file" in swepost("tasks", "import", str(tmp_path / "broken.parquet"),
                                                    check=2).stderr


def test_repo_specs_fill_install_and_test_cmd(tiny, tmp_path, swepost, store):
    specs = tmp_path / "specs.yaml"
    specs.write_text("swepost/calc:\n  install: [pip install -e .]\n  test_cmd: python3 -m pytest -x\n"
                     "  versions:\n    '0.1': {network: true}\n")
    out = json.loads(swepost("tasks", "import", str(tiny), "--name", "spec", "--specs", str(specs), "--json",
                             check=0).stdout)
    from swepost.stages.tasks import load_tasks

    by_id = {t.instance_id: t for t in load_tasks(store.resolve(out["id"]))}
    calc = by_id["swepost__calc-1"]
    assert calc.env.install == ["pip install -e ."] and calc.env.test_cmd == "python3 -m pytest -x"
    assert calc.env.network is True  # its version is 0.1
    assert by_id["swepost__textkit-1"].env.install == []  # another repo: untouched
    specs.write_text("swepost/calc:\n  instal: [x]\n")
    r = swepost("tasks", "import", str(tiny), "--specs", str(specs), check=2)
    assert f"{specs}:2: swepost/calc.instal: unknown key" in r.stderr


# --- rows no stage can use, every problem at once, splits (issue 13) --------------------------------------------

def test_invalid_json_line_does_not_hide_the_field_errors_of_other_lines(swepost, rows, tmp_path):
    rows[2]["test_cmd"] = 3
    path = write_jsonl(tmp_path / "t.jsonl", [rows[0], '{"instance_id": "x",', rows[2], {"instance_id": "y"}])
    lines = import_error(swepost, path).removeprefix("error: ").splitlines()
    assert lines[0].startswith(f"{path}:2: invalid JSON")
    assert lines[1] == f"{path}:3: test_cmd: expected a string, got int"
    assert lines[2] == f"{path}:4: problem_statement: required field missing"
    assert len(lines) == 3


def test_rows_no_stage_can_use_warn_or_fail_with_strict(swepost, store, rows, tmp_path):
    rows[0]["patch"] = ""
    rows[1]["FAIL_TO_PASS"] = []
    rows[1]["patch"], rows[1]["test_patch"] = "fix", "tests"
    rows[2]["patch"], rows[2]["test_patch"] = "fix", "tests"
    codeqa = {"instance_id": "q1", "kind": "codeqa", "problem_statement": "What?", "repo": "o/r",
              "base_commit": "abc", "reference_answer": "x"}  # other kinds need no patches or tests
    path = write_jsonl(tmp_path / "t.jsonl", [*rows, codeqa])
    r = swepost("tasks", "import", path, "--json", check=0)
    assert json.loads(r.stdout)["stats"]["unusable"] == 2
    assert "warning: 2 of 4 rows no stage can use" in r.stderr and "--strict" in r.stderr
    assert f"{path}:1: patch: missing" in r.stderr and f"{path}:2: FAIL_TO_PASS: empty" in r.stderr
    assert f"{path}:3" not in r.stderr and f"{path}:4" not in r.stderr
    assert len(load_tasks(store.resolve("tasks"))) == 4
    r = swepost("tasks", "import", path, "--name", "strict", "--strict", check=2)
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.startswith(f"error: {path}:1: patch: missing")
    assert f"{path}:2: FAIL_TO_PASS: empty" in r.stderr
    assert swepost("artifacts", "ls", "--json", check=0).stdout.count('"strict"') == 0
    rows[0]["test_patch"] = ""
    with pytest.raises(BadInput) as e:
        run_import(TasksImportConfig(source=write_jsonl(tmp_path / "u.jsonl", rows), strict=True), store)
    assert [p.key for p in e.value.problems] == ["patch", "test_patch", "FAIL_TO_PASS"]


def test_saved_dataset_with_several_splits_needs_split(rows, tmp_path, swepost):
    import datasets

    common = sorted(set.intersection(*(set(r) for r in rows)))
    table = datasets.Dataset.from_list([{k: json.dumps(r[k]) if isinstance(r[k], list) else r[k] for k in common}
                                        for r in rows])
    datasets.DatasetDict({"train": table, "test": table, "dev": table}).save_to_disk(str(tmp_path / "saved"))
    r = swepost("tasks", "import", str(tmp_path / "saved"), check=2)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"error: {tmp_path / 'saved'}: this DatasetDict has 3 splits (train, test, dev): "
                                "choose a split with --split")
    out = json.loads(swepost("tasks", "import", str(tmp_path / "saved"), "--split", "dev", "--json",
                             check=0).stdout)
    assert out["stats"]["tasks"] == len(rows)


# --- task kinds (issue 13): a kind is a registry name or module:NAME, anything else exits 2 naming the kinds ------

KNOWN_KINDS = "(known: swe, codeqa, search, or module:name of an importable module)"


def test_an_unknown_kind_exits_2_naming_the_known_kinds(swepost, rows, tmp_path):
    r = swepost("tasks", "import", write_jsonl(tmp_path / "t.jsonl", rows), "--kind", "trivia", check=2)
    assert r.stderr.strip() == f"error: --kind: kind: unknown task kind 'trivia' {KNOWN_KINDS}"
    rows[1]["kind"] = "trivia"  # a SWE-bench row, and swepost's own record, that name a kind
    own = {"instance_id": "own-1", "kind": "nope:X", "problem_statement": "p", "verify": {}}
    path = write_jsonl(tmp_path / "k.jsonl", [*rows, own, {**own, "instance_id": "own-2", "kind": 3}])
    lines = import_error(swepost, path).removeprefix("error: ").splitlines()
    assert lines == [f"{path}:2: kind: unknown task kind 'trivia' {KNOWN_KINDS}",
                     f"{path}:4: kind: unknown task kind 'nope:X' {KNOWN_KINDS}",
                     f"{path}:5: kind: Input should be a valid string"]


def test_a_kind_by_import_path_must_be_a_task_kind(swepost, rows, tmp_path, monkeypatch):
    (tmp_path / "notakind.py").write_text("KIND = {'name': 'dict'}\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    r = swepost("tasks", "import", path, "--kind", "notakind:KIND", check=2)
    assert f"{path}:1: kind: task kind 'notakind:KIND' is a dict, not a swepost.taskkinds.TaskKind" in r.stderr
    r = swepost("tasks", "import", path, "--kind", "notakind:MISSING", check=2)
    assert f"{path}:1: kind: unknown task kind 'notakind:MISSING'" in r.stderr and "has no attribute" in r.stderr


def test_the_built_in_kinds_are_registry_lines():
    from swepost.registry import TASK_KINDS
    from swepost.taskkinds import TaskKind, task_kind

    for name in TASK_KINDS:
        kind = task_kind(name)
        assert isinstance(kind, TaskKind) and kind.name == name
    assert task_kind("swe").environment == "swe"
    assert task_kind("swepost.taskkinds.swe:SWE") is task_kind("swe")
