"""codeqa tasks: the bundled minicalc questions and SWE-QA-Pro's released rows import through the real CLI;
bad rows are located; `tasks validate` checks each repo and commit in real git mirrors (and images)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections import Counter

import pytest

from swepost.stages.tasks import TASKS_FILE, load_tasks, read_task_file

PINNED = "6439748ee1c52c4184dc9c7efe8a2c26bcfb8ff4"  # minicalc's latest commit in data/repos (Release 0.1.1)
QA_IDS = [f"swepost__minicalc-qa-{n}" for n in range(1, 13)]


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps at 80 columns in a pipe; keep messages on one line


@pytest.fixture
def bundled(repo_root):
    return repo_root / "data" / "minicalc_qa.jsonl"


@pytest.fixture
def sample(repo_root):
    return repo_root / "data" / "swe_qa_pro_sample.jsonl"


@pytest.fixture
def mirrors(repo_root):
    return repo_root / "data" / "repos"


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def derived_id(repo: str, question: str) -> str:
    return f"{repo.replace('/', '__')}-qa-{hashlib.sha256(question.encode()).hexdigest()[:8]}"


# --- import -------------------------------------------------------------------------------------------------

def test_bundled_questions_import_through_the_cli(swepost, store, bundled):
    r = swepost("tasks", "import", bundled, "--kind", "codeqa", "--name", "qa", "--json", check=0)
    out = json.loads(r.stdout)
    assert out["stats"] == {"tasks": 12, "repos": 1, "with_image": 0, "unusable": 0}
    assert "warning" not in r.stderr
    tasks = load_tasks(store.resolve("qa"))
    assert [t.instance_id for t in tasks] == QA_IDS
    source = rows_of(bundled)
    for task, row in zip(tasks, source, strict=True):
        assert task.kind == "codeqa" and task.repo == "swepost/minicalc" and task.base_commit == PINNED
        assert task.problem_statement == row["question"]  # question -> problem_statement
        assert task.verify.reference_answer == row["answer"]  # SWE-QA-Pro's answer -> verify.reference_answer
        assert task.verify.rubric == row["rubric"] and 2 <= len(task.verify.rubric) <= 4
        assert task.verify.fail_to_pass == [] and task.patch == "" and task.env.image is None
        # qa_type and the cluster id under stable keys; the nested cluster's name is kept beside it
        assert task.metadata == {"qa_type": row["qa_type"], "cluster": row["cluster"]["id"],
                                 "cluster_info": {"name": row["cluster"]["name"]}}
        assert re.fullmatch(r"\d+\.\d+", task.metadata["cluster"])
    assert Counter(t.metadata["qa_type"] for t in tasks) == {"what": 3, "why": 3, "where": 3, "how": 3}


def test_bundled_answers_cite_lines_that_exist_at_the_pinned_commit(bundled, mirrors, tmp_path):
    """Every `path: line s-e` a reference answer cites names a file of minicalc at the pinned commit and lines
    inside it: the judge compares answers against these."""
    checkout = tmp_path / "minicalc"
    subprocess.run(["git", "clone", "--quiet", str(mirrors / "swepost__minicalc.bundle"), str(checkout)], check=True)
    subprocess.run(["git", "-C", str(checkout), "checkout", "--quiet", PINNED], check=True)
    cited = 0
    for row in rows_of(bundled):
        for path, start, end in re.findall(r"([\w/]+\.(?:py|md|toml)): lines? (\d+)(?:-(\d+))?", row["answer"]):
            lines = (checkout / path).read_text().splitlines()
            assert 1 <= int(start) <= int(end or start) <= len(lines), (row["instance_id"], path, start, end)
            cited += 1
        assert re.search(r"\w+\.(py|md|toml): line \d+", row["answer"]), row["instance_id"]
    assert cited >= 24


def test_swe_qa_pro_rows_import_as_released(swepost, store, sample):
    r = swepost("tasks", "import", sample, "--kind", "codeqa", "--name", "pro", "--json", check=0)
    assert json.loads(r.stdout)["stats"] == {"tasks": 3, "repos": 1, "with_image": 0, "unusable": 0}
    tasks = load_tasks(store.resolve("pro"))
    for task, row in zip(tasks, rows_of(sample), strict=True):
        assert set(row) == {"repo", "commit_id", "cluster", "qa_type", "question", "answer"}  # the released shape
        # no instance_id: derived from the repo and the question, the same on every import
        assert task.instance_id == derived_id("swepost/minicalc", row["question"])
        assert task.repo == "swepost/minicalc" and task.base_commit == row["commit_id"] == PINNED
        assert task.verify.reference_answer == row["answer"] and task.verify.rubric == []
        assert task.metadata == {"qa_type": row["qa_type"], "cluster": row["cluster"]["id"], "repo_url": row["repo"]}
    assert tasks[1].metadata["repo_url"].endswith("minicalc.git")
    again = json.loads(swepost("tasks", "import", sample, "--kind", "codeqa", "--name", "pro", "--json",
                               check=0).stdout)
    assert again["id"] == store.resolve("pro").id


def test_column_forms(tmp_path):
    base = {"question": "Where is X?", "answer": "In y.py: line 3"}
    rows = [
        {**base, "repo": "git@github.com:Acme/Widget.git", "commit_id": "abc1234", "cluster": "2.10",
         "rubric": json.dumps(["names y.py", "cites line 3"]), "difficulty": "hard", "source": {"issue": 7}},
        {**base, "repo": "ssh://git@example.org:2222/group/sub/tool", "base_commit": "abc1234", "cluster": 4,
         "instance_id": "own-id", "question": "How is Y done?"},
        {**base, "image_name": "acme/widget:qa", "question": "Why Z?", "install": "pip install -e ."},
        {"instance_id": "flat", "repo": "acme/widget", "base_commit": "abc1234", "problem_statement": "What is W?",
         "reference_answer": "W is v.", "rubric": ["says v"], "kind": "codeqa"},
    ]
    t1, t2, t3, t4 = read_task_file(write_jsonl(tmp_path / "forms.jsonl", rows), kind="codeqa")
    assert (t1.repo, t1.base_commit) == ("Acme/Widget", "abc1234")
    assert t1.instance_id == derived_id("Acme/Widget", base["question"])
    assert t1.verify.rubric == ["names y.py", "cites line 3"]  # a JSON string of a list, as Hub datasets ship
    assert t1.metadata == {"difficulty": "hard", "source": {"issue": 7}, "cluster": "2.10",
                           "repo_url": "git@github.com:Acme/Widget.git"}
    assert (t2.repo, t2.instance_id, t2.metadata["cluster"]) == ("sub/tool", "own-id", "4")
    # with an image the repo may be left out: the id derives from the image's name
    assert t3.repo is None and t3.base_commit is None and t3.env.image == "acme/widget:qa"
    assert t3.env.install == ["pip install -e ."]
    assert t3.instance_id == f"acme_widget_qa-qa-{hashlib.sha256(b'Why Z?').hexdigest()[:8]}"
    # swepost's column names import too
    assert (t4.problem_statement, t4.verify.reference_answer, t4.verify.rubric) == ("What is W?", "W is v.", ["says v"])


def test_swepost_records_round_trip(swepost, store, bundled):
    swepost("tasks", "import", bundled, "--kind", "codeqa", "--name", "qa", check=0)
    art = store.resolve("qa")
    # swepost's own records (as written) import as they are, whatever --kind says
    r = swepost("tasks", "import", art.path / TASKS_FILE, "--name", "again", "--json", check=0)
    assert json.loads(r.stdout)["stats"]["unusable"] == 0
    assert load_tasks(store.resolve("again")) == load_tasks(art)
    assert {t.kind for t in load_tasks(store.resolve("again"))} == {"codeqa"}


# --- bad input --------------------------------------------------------------------------------------------------

def test_malformed_rows_name_file_line_and_field(swepost, store, bundled, tmp_path):
    good = rows_of(bundled)[0]
    bad = [
        {k: v for k, v in good.items() if k != "question"},  # 1
        {**good, "instance_id": "r2", "rubric": "says foo"},  # 2: neither a list nor a JSON list
        {**good, "instance_id": "r3", "repo": "minicalc"},  # 3: no owner
        {**good, "instance_id": "r4", "base_commit": "1" * 40},  # 4: differs from commit_id
        {**good, "instance_id": "r5", "cluster": 3.10},  # 5: a number that lost its trailing zero
        '{"repo": "swepost/minicalc", ',  # 6
        {**good, "instance_id": "r7", "rubric": ["ok", ""]},  # 7
        {**good, "instance_id": "r8", "question": 42},  # 8
        {**good, "instance_id": "r9", "cluster": {"name": "no id"}},  # 9
        {**good, "instance_id": "r10", "commit_id": None},  # 10
        {**good, "instance_id": "r11"},  # 11: fine
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", bad)
    r = swepost("tasks", "import", path, "--kind", "codeqa", "--name", "bad", check=2)
    assert "Traceback" not in r.stderr and r.stdout == "" and r.stderr.startswith("error: ")
    for where in [f"{path}:1: question: required field missing", f"{path}:2: rubric: expected a list of rubric",
                  f"{path}:3: repo: expected owner/name or a git URL", f"{path}:4: commit_id: base_commit and "
                  "commit_id are both given and differ", f"{path}:5: cluster: expected a cluster id as a string",
                  "give \"3.10\"", f"{path}:6: invalid JSON", f"{path}:7: rubric: expected a list of rubric points",
                  f"{path}:8: question: expected a string", f"{path}:9: cluster: expected a cluster id",
                  f"{path}:10: base_commit: required field missing"]:
        assert where in r.stderr, where
    assert f"{path}:11" not in r.stderr
    assert json.loads(swepost("artifacts", "ls", "--json", check=0).stdout) == []


def test_missing_reference_answer_warns_and_strict_refuses(swepost, store, bundled, tmp_path):
    rows = rows_of(bundled)[:3]
    del rows[1]["answer"]
    rows[2]["answer"] = "  "
    path = write_jsonl(tmp_path / "noref.jsonl", rows)
    r = swepost("tasks", "import", path, "--kind", "codeqa", "--json", check=0)
    assert json.loads(r.stdout)["stats"]["unusable"] == 2
    assert "warning: 2 of 3 rows no stage can use" in r.stderr
    assert f"{path}:2: reference_answer: missing: the judge scores answers against it" in r.stderr
    assert f"{path}:3: reference_answer: missing" in r.stderr and f"{path}:1" not in r.stderr
    r = swepost("tasks", "import", path, "--kind", "codeqa", "--name", "strict", "--strict", check=2)
    assert r.stdout == "" and r.stderr.startswith(f"error: {path}:2: reference_answer: missing")
    assert "Traceback" not in r.stderr
    assert [a["id"].split("@")[0] for a in json.loads(swepost("artifacts", "ls", "--json", check=0).stdout)] == [
        "tasks"]


# --- tasks validate -----------------------------------------------------------------------------------------------

def test_validate_keeps_the_bundled_questions_and_drops_what_is_not_there(swepost, store, bundled, mirrors,
                                                                           tmp_path):
    rows = rows_of(bundled)
    extra = [
        {**rows[0], "instance_id": "gone-commit", "commit_id": "f" * 40},
        {**rows[1], "instance_id": "no-mirror", "repo": "https://github.com/acme/elsewhere"},
        {**rows[2], "instance_id": "a-branch", "commit_id": "main"},
        {**{k: v for k, v in rows[3].items() if k != "answer"}, "instance_id": "no-reference"},
    ]
    path = write_jsonl(tmp_path / "qa.jsonl", rows + extra)
    swepost("tasks", "import", path, "--kind", "codeqa", "--name", "qa", check=0)
    r = swepost("tasks", "validate", "qa", "--repos", mirrors, "--json", check=0)
    out = json.loads(r.stdout)
    assert out["stats"] == {"tasks": 12, "dropped": 4, "tests_removed": 0}
    art = store.resolve(out["id"])
    assert art.parents == [store.resolve("qa").id]
    assert [t.instance_id for t in load_tasks(art)] == QA_IDS
    assert load_tasks(art) == load_tasks(store.resolve("qa"))[:12]  # kept as they were
    bundle = mirrors / "swepost__minicalc.bundle"
    assert (f"dropped gone-commit: base_commit {'f' * 40} is not in the mirror of swepost/minicalc ({bundle})"
            in r.stderr)
    assert "dropped no-mirror: no mirror: repo 'acme/elsewhere': no acme__elsewhere" in r.stderr
    assert "dropped a-branch: base_commit 'main' names a ref" in r.stderr
    assert "dropped no-reference: reference_answer: missing" in r.stderr
    report = {t["instance_id"]: t for t in json.loads((art.path / "validation.json").read_text())}
    assert all(report[i]["kept"] and report[i]["commit"] == PINNED and report[i]["source"] == f"mirror {bundle}"
               for i in QA_IDS)


def test_validate_reads_a_folder_mirror_and_short_commits(swepost, store, sample, mirrors, tmp_path):
    repos = tmp_path / "repos"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(mirrors / "swepost__minicalc.bundle"),
                    str(repos / "swepost__minicalc.git")], check=True)
    rows = rows_of(sample)
    rows[0]["commit_id"] = PINNED[:10]
    swepost("tasks", "import", write_jsonl(tmp_path / "s.jsonl", rows), "--kind", "codeqa", "--name", "s", check=0)
    out = json.loads(swepost("tasks", "validate", "s", "--repos", repos, "--json", check=0).stdout)
    assert out["stats"] == {"tasks": 3, "dropped": 0, "tests_removed": 0}
    report = json.loads((store.resolve(out["id"]).path / "validation.json").read_text())
    assert [t["commit"] for t in report] == [PINNED] * 3


def test_validate_without_repos_exits_2(swepost, bundled):
    swepost("tasks", "import", bundled, "--kind", "codeqa", "--name", "qa", check=0)
    r = swepost("tasks", "validate", "qa", check=2)
    assert r.stderr.startswith("error: swepost__minicalc-qa-1 (codeqa) has no image: give --repos DIR")
    assert "Traceback" not in r.stderr


@pytest.mark.docker
def test_validate_checks_the_commit_inside_an_image(swepost, store, sample, mirrors, base_image, docker_client,
                                                      tmp_path):
    context = tmp_path / "image"
    subprocess.run(["git", "clone", "--quiet", str(mirrors / "swepost__minicalc.bundle"), str(context / "repo")],
                   check=True)
    (context / "Dockerfile").write_text(f"FROM {base_image}\nCOPY repo /testbed\n")
    tag = f"swepost-test/codeqa-minicalc:{tmp_path.name.lower()}"
    docker_client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
    try:
        row = {k: v for k, v in rows_of(sample)[0].items() if k != "repo"}
        rows = [{**row, "instance_id": "in-image", "image_name": tag},
                {**row, "instance_id": "head-of-image", "image_name": tag, "commit_id": None},
                {**row, "instance_id": "not-in-image", "image_name": tag, "commit_id": "e" * 40},
                {**row, "instance_id": "no-such-image", "image_name": "swepost-test/no-such-image:0"}]
        swepost("tasks", "import", write_jsonl(tmp_path / "i.jsonl", rows), "--kind", "codeqa", "--name", "img",
                check=0)
        r = swepost("tasks", "validate", "img", "--backend", "docker", "--json", check=0)  # no --repos needed
        out = json.loads(r.stdout)
        assert out["stats"] == {"tasks": 2, "dropped": 2, "tests_removed": 0}
        report = {t["instance_id"]: t for t in json.loads((store.resolve(out["id"]).path /
                                                           "validation.json").read_text())}
        assert report["in-image"]["commit"] == report["head-of-image"]["commit"] == PINNED
        assert report["in-image"]["source"] == f"image {tag}"
        assert f"dropped not-in-image: base_commit {'e' * 40} is not in the repo at /testbed of image {tag}" in r.stderr
        assert "dropped no-such-image: image swepost-test/no-such-image:0:" in r.stderr
    finally:
        docker_client.images.remove(tag, force=True)
