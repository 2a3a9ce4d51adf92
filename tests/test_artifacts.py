"""The artifact store on real files: atomic writes, content versions, references, verify, lineage, rm, gc."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from swepost import __version__
from swepost.artifacts import KINDS, ArtifactStore, producer_record
from swepost.errors import BadInput


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps at 80 columns in a pipe; keep ids on one line


def make(store, name, files, *, kind="tasks", parents=(), seed=0, config=None):
    with store.write(name, kind, producer=producer_record("test-stage", config or {"lr": 0.1}, seed=seed),
                     parents=list(parents)) as w:
        for rel, text in files.items():
            (w.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (w.path / rel).write_text(text)
        w.stats["files"] = len(files)
    return w.artifact


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- writing -------------------------------------------------------------------------------------------------

def test_write_publishes_only_after_the_block(store, home):
    with store.write("demo", "tasks", producer=producer_record("test-stage", {"lr": 0.1}, seed=7)) as w:
        (w.path / "tasks.jsonl").write_text('{"a": 1}\n')
        (w.path / "sub").mkdir()
        (w.path / "sub" / "extra.txt").write_text("hello")
        assert w.path.parent == home / "staging"
        assert store.all() == []
        assert not (home / "artifacts" / "demo").exists()
    art = w.artifact
    assert not w.path.exists()
    assert [a.id for a in store.all()] == [art.id]
    assert art.path == home / "artifacts" / "demo" / art.version
    assert sorted(p.name for p in art.path.iterdir()) == ["manifest.json", "sub", "tasks.jsonl"]

    m = json.loads((art.path / "manifest.json").read_text())
    assert m["id"] == f"demo@{m['version']}" and len(m["version"]) == 12
    assert m["name"] == "demo" and m["kind"] == "tasks" and m["parents"] == []
    assert m["created"].startswith("20") and "T" in m["created"]
    assert m["stats"] == {}
    assert m["files"] == {"sub/extra.txt": {"sha256": sha("hello"), "size": 5},
                          "tasks.jsonl": {"sha256": sha('{"a": 1}\n'), "size": 9}}
    p = m["producer"]
    assert p["stage"] == "test-stage" and p["config"] == {"lr": 0.1} and p["seed"] == 7
    assert p["swepost_version"] == __version__
    assert "git_commit" in p
    assert isinstance(p["libraries"], dict)
    assert all(isinstance(v, str) for v in p["libraries"].values())
    assert p["libraries"].get("datasets")  # installed in the dev environment, so recorded


def test_same_content_same_version_and_name_resolves_to_latest(store, home):
    a1 = make(store, "demo", {"f.txt": "one"})
    a2 = make(store, "demo", {"f.txt": "one"})
    assert a1.id == a2.id
    assert [p.name for p in (home / "artifacts" / "demo").iterdir()] == [a1.version]
    assert list((home / "staging").iterdir()) == []  # the duplicate's staging folder is gone

    b = make(store, "demo", {"f.txt": "two"})
    assert b.version != a1.version
    assert store.resolve("demo").id == b.id
    c = make(store, "demo", {"f.txt": "three"})
    assert store.resolve("demo").id == c.id
    assert [a.id for a in store.all()] == [a1.id, b.id, c.id]
    # a different producer (seed) is different content too
    assert make(store, "demo", {"f.txt": "one"}, seed=1).version != a1.version


def test_resolve_every_kind_of_reference(store):
    a = make(store, "alpha", {"f.txt": "a"})
    b = make(store, "beta", {"f.txt": "b"})
    assert store.resolve("alpha").id == a.id
    assert store.resolve(f"alpha@{a.version}").id == a.id
    assert store.resolve(f"alpha@{a.version[:5]}").id == a.id
    assert store.resolve(f"  beta@{b.version[:3]} ").id == b.id
    assert store.resolve(b.version[:6]).id == b.id  # a bare unique version prefix
    assert store.resolve(str(a.path)).id == a.id
    assert store.resolve(a.path).id == a.id
    rel = os.path.relpath(b.path)
    assert store.resolve(rel if "/" in rel else "./" + rel).id == b.id


def test_resolve_errors_are_helpful(store, tmp_path):
    with pytest.raises(BadInput, match=r"no artifact named 'ghost' in .*swepost artifacts ls"):
        store.resolve("ghost")
    with pytest.raises(BadInput, match="empty artifact reference"):
        store.resolve("   ")
    a = make(store, "alpha", {"f.txt": "a"})
    with pytest.raises(BadInput) as e:
        store.resolve("alpha@ffffffffffff0")
    assert "no artifact 'alpha@ffffffffffff0'" in str(e.value) and a.id in str(e.value)
    with pytest.raises(BadInput, match="no manifest.json in that folder"):
        store.resolve(str(tmp_path))

    # write versions until two share a first hex digit: `alpha@<digit>` is then ambiguous
    by_first = {a.version[0]: a}
    i = 0
    while True:
        i += 1
        art = make(store, "alpha", {"f.txt": f"a{i}"})
        if art.version[0] in by_first:
            break
        by_first[art.version[0]] = art
    other = by_first[art.version[0]]
    with pytest.raises(BadInput) as e:
        store.resolve(f"alpha@{art.version[0]}")
    msg = str(e.value)
    assert "ambiguous" in msg and art.id in msg and other.id in msg


def test_bare_prefix_ambiguous_across_names(store, home):
    a = make(store, "alpha", {"f.txt": "a"})
    # a second name holding the same version string (forged by hand) makes the bare prefix ambiguous
    twin = home / "artifacts" / "twin" / a.version
    twin.mkdir(parents=True)
    m = dict(a.manifest, name="twin", id=f"twin@{a.version}")
    (twin / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BadInput) as e:
        store.resolve(a.version[:6])
    assert "ambiguous" in str(e.value) and a.id in str(e.value) and f"twin@{a.version}" in str(e.value)
    assert store.resolve(f"alpha@{a.version[:6]}").id == a.id
    with pytest.raises(BadInput, match="no artifact named"):
        store.resolve(a.version[:3])  # under 4 characters is never taken as a version prefix


def test_exception_inside_write_leaves_nothing(store, home):
    with pytest.raises(RuntimeError, match="boom"):
        with store.write("demo", "tasks", producer={"stage": "t"}) as w:
            (w.path / "tasks.jsonl").write_text("partial")
            raise RuntimeError("boom")
    assert not w.path.exists()
    assert list((home / "staging").iterdir()) == []
    assert store.all() == [] and w.artifact is None
    assert not (home / "artifacts").exists() or list((home / "artifacts").rglob("*")) == []


def test_manifest_name_is_reserved_and_symlinks_rejected(store, home, tmp_path):
    with pytest.raises(BadInput, match="manifest.json is reserved"):
        with store.write("demo", "tasks", producer={}) as w:
            (w.path / "manifest.json").write_text("{}")
    (tmp_path / "outside").write_text("x")
    with pytest.raises(BadInput, match="link.txt is not a regular file"):
        with store.write("demo", "tasks", producer={}) as w:
            (w.path / "link.txt").symlink_to(tmp_path / "outside")
    assert store.all() == [] and list((home / "staging").iterdir()) == []


@pytest.mark.parametrize("name", ["a@b", "a/b", "", ".hidden", "-dash", "x" * 101, "sp ace"])
def test_bad_names_rejected(store, home, name):
    with pytest.raises(BadInput, match="artifact name"):
        store.write(name, "tasks", producer={})
    assert not (home / "staging").exists()


def test_unknown_kind_rejected(store):
    with pytest.raises(BadInput) as e:
        store.write("demo", "model", producer={})
    assert "'model'" in str(e.value) and all(k in str(e.value) for k in KINDS)


def test_unknown_parent_rejected(store):
    with pytest.raises(BadInput, match="no artifact named 'ghost'"):
        store.write("demo", "tasks", producer={}, parents=["ghost"])


# --- a killed write ------------------------------------------------------------------------------------------

KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from swepost.artifacts import ArtifactStore
    store = ArtifactStore(sys.argv[1])
    with store.write("half", "tasks", producer={"stage": "t"}) as w:
        (w.path / "tasks.jsonl").write_text("one row\\n")
        print("READY", w.path, flush=True)
        time.sleep(60)
""")


def test_kill_9_during_write_is_invisible_and_gc_clears_it(store, home, swepost):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(home)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line[0] == "READY"
        staging = home / "staging"
        assert [p.name for p in staging.iterdir()] == [os.path.basename(line[1])]
        assert store.gc()["staging"] == []  # the writer is alive: gc leaves it alone
        assert staging.joinpath(os.path.basename(line[1]), "tasks.jsonl").is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    assert store.all() == []
    r = swepost("artifacts", "ls", check=0)
    assert "no artifacts in" in r.stdout and "half" not in r.stdout
    assert json.loads(swepost("artifacts", "ls", "--json", check=0).stdout) == []
    leftovers = [p.name for p in (home / "staging").iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(f"half.{proc.pid}-")

    r = swepost("artifacts", "gc", check=0)
    assert "removed 1 unfinished write(s)" in r.stdout
    assert list((home / "staging").iterdir()) == []
    assert "removed 0 unfinished write(s)" in swepost("artifacts", "gc", check=0).stdout


def test_gc_all_and_dangling_cache(store, home):
    (home / "staging" / f"live.{os.getpid()}.abcd1234").mkdir(parents=True)
    a = make(store, "demo", {"f.txt": "x"})
    store.remember("k1", a)
    store.remember("k2", a)
    assert store.cached("k1").id == a.id
    assert store.gc() == {"staging": [], "cache": []}
    store.remove(a)
    assert store.cached("k1") is None
    assert store.gc(everything=True) == {"staging": [f"live.{os.getpid()}.abcd1234"], "cache": ["k1", "k2"]}
    assert list((home / "cache").iterdir()) == []


# --- verify --------------------------------------------------------------------------------------------------

@pytest.fixture
def art(store):
    return make(store, "demo", {"data.jsonl": "row1\nrow2\n", "sub/notes.txt": "n"})


def test_verify_intact(store, art):
    assert store.verify(art) == []
    assert store.verify(store.resolve(art.id)) == []


def test_verify_edited_file(store, art):
    (art.path / "data.jsonl").write_text("row1\nrow2 changed\n")
    assert store.verify(art) == [("edited", "data.jsonl")]


def test_verify_missing_file(store, art):
    (art.path / "sub" / "notes.txt").unlink()
    assert store.verify(art) == [("missing", "sub/notes.txt")]


def test_verify_extra_file(store, art):
    (art.path / "sub" / "sneaky.bin").write_bytes(b"\0")
    assert store.verify(art) == [("extra", "sub/sneaky.bin")]


def test_verify_edited_manifest_field(store, art):
    path = art.path / "manifest.json"
    m = json.loads(path.read_text())
    m["producer"]["seed"] = 1234
    path.write_text(json.dumps(m, indent=2))
    assert store.verify(store.resolve(art.id)) == [("edited", "manifest.json")]


def test_verify_edited_manifest_file_hash(store, art):
    # rewriting a file AND its hash in the manifest still changes the version hash
    (art.path / "data.jsonl").write_text("forged\n")
    path = art.path / "manifest.json"
    m = json.loads(path.read_text())
    m["files"]["data.jsonl"] = {"sha256": sha("forged\n"), "size": 7}
    path.write_text(json.dumps(m, indent=2))
    assert store.verify(store.resolve(art.id)) == [("edited", "manifest.json")]


def test_verify_cli(store, art, swepost):
    r = swepost("artifacts", "verify", "demo", check=0)
    assert "ok" in r.stdout and art.id in r.stdout and "2 files" in r.stdout
    (art.path / "sub" / "notes.txt").write_text("tampered")
    r = swepost("artifacts", "verify", art.id, check=1)
    assert "edited" in r.stderr and "sub/notes.txt" in r.stderr and "1 problem(s)" in r.stderr
    assert "Traceback" not in r.stderr
    (art.path / "data.jsonl").unlink()
    r = swepost("artifacts", "verify", art.version[:6], check=1)
    assert "missing" in r.stderr and "data.jsonl" in r.stderr and "2 problem(s)" in r.stderr


# --- lineage -------------------------------------------------------------------------------------------------

@pytest.fixture
def chain(store):
    tasks = make(store, "tasks", {"tasks.jsonl": "t\n"})
    child = make(store, "sft", {"data.jsonl": "d\n"}, kind="sft-data", parents=[tasks.id])
    grandchild = make(store, "ckpt", {"w.bin": "w"}, kind="checkpoint", parents=["sft"])  # a name resolves
    return tasks, child, grandchild


def test_lineage_structure(store, chain):
    tasks, child, grandchild = chain
    assert child.parents == [tasks.id] and grandchild.parents == [child.id]
    tree = store.lineage(grandchild)
    assert tree["artifact"].id == grandchild.id and len(tree["parents"]) == 1
    mid = tree["parents"][0]
    assert mid["artifact"].id == child.id and len(mid["parents"]) == 1
    root = mid["parents"][0]
    assert root["artifact"].id == tasks.id and root["parents"] == []
    assert [c.id for c in store.children(tasks)] == [child.id]
    assert store.children(grandchild) == []


def test_lineage_cli_and_missing_parent(store, chain, swepost):
    tasks, child, grandchild = chain
    out = swepost("artifacts", "lineage", "ckpt", check=0).stdout
    assert all(a.id in out for a in chain)
    assert out.index(grandchild.id) < out.index(child.id) < out.index(tasks.id)
    assert "sft-data" in out and "test-stage" in out

    store.remove(child, force=True)
    tree = store.lineage(store.resolve("ckpt"))
    assert tree["parents"] == [{"missing": child.id}]
    out = swepost("artifacts", "lineage", grandchild.id, check=0).stdout
    assert f"{child.id} (missing from the store)" in out and tasks.id not in out


def test_multiple_parents_deduplicated_and_sorted(store):
    a = make(store, "aa", {"f": "1"})
    b = make(store, "bb", {"f": "2"})
    c = make(store, "cc", {"f": "3"}, kind="eval", parents=[b.id, "aa", a.id])
    assert c.parents == sorted([a.id, b.id])
    assert [n["artifact"].id for n in store.lineage(c)["parents"]] == sorted([a.id, b.id])


# --- rm, show, ls --------------------------------------------------------------------------------------------

def test_rm_refuses_with_children_then_force(store, chain, home):
    tasks, child, _ = chain
    with pytest.raises(BadInput) as e:
        store.remove(tasks)
    assert child.id in str(e.value) and "--force" in str(e.value)
    assert store.find(tasks.id) is not None
    store.remove(tasks, force=True)
    assert store.find(tasks.id) is None and not (home / "artifacts" / "tasks").exists()
    assert list((home / "staging").iterdir()) == []


def test_rm_cli(store, chain, swepost, home):
    tasks, child, grandchild = chain
    r = swepost("artifacts", "rm", "tasks", check=2)
    assert child.id in r.stderr and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert store.find(tasks.id) is not None
    r = swepost("artifacts", "rm", "ckpt", check=0)  # a leaf goes without --force
    assert f"removed {grandchild.id}" in r.stdout
    assert store.find(grandchild.id) is None
    r = swepost("artifacts", "rm", "tasks", "--force", check=0)
    assert f"removed {tasks.id}" in r.stdout
    assert [a.id for a in store.all()] == [child.id]
    assert swepost("artifacts", "rm", "tasks", check=2).stderr.startswith("error: no artifact named 'tasks'")


def test_show_and_ls_json(store, chain, swepost):
    tasks, child, grandchild = chain
    shown = json.loads(swepost("artifacts", "show", child.id, check=0).stdout)
    assert shown == {**child.manifest, "path": str(child.path)}
    assert shown["parents"] == [tasks.id] and shown["kind"] == "sft-data"

    rows = json.loads(swepost("artifacts", "ls", "--json", check=0).stdout)
    assert [r["id"] for r in rows] == [tasks.id, child.id, grandchild.id]
    assert rows[1]["parents"] == [tasks.id] and rows[1]["kind"] == "sft-data"
    assert rows[2]["path"] == str(grandchild.path) and rows[0]["stats"] == {"files": 1}
    only = json.loads(swepost("artifacts", "ls", "--json", "--kind", "checkpoint", check=0).stdout)
    assert [r["id"] for r in only] == [grandchild.id]
    table = swepost("artifacts", "ls", check=0).stdout
    assert all(a.id in table for a in chain)


def test_store_ignores_damaged_manifest(store, home):
    a = make(store, "demo", {"f": "x"})
    bad = home / "artifacts" / "broken" / "000000000000"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    assert [x.id for x in store.all()] == [a.id]
    assert ArtifactStore(home).resolve("demo").id == a.id


def test_adopt_moves_a_checkpoint_in_without_copying_and_gives_it_back_on_failure(store, tmp_path):
    work = store.root / "work" / "sft-x" / "final"
    work.mkdir(parents=True)
    (work / "model.safetensors").write_bytes(os.urandom(1 << 20))
    inode = (work / "model.safetensors").stat().st_ino
    with pytest.raises(RuntimeError):
        with store.write("ckpt", "checkpoint", producer={}) as w:
            w.adopt(work, "model")
            assert not work.exists()
            raise RuntimeError("the publish step failed")
    assert (work / "model.safetensors").stat().st_ino == inode  # back where it was, the same file
    with store.write("ckpt", "checkpoint", producer={}) as w:
        w.adopt(work, "model")
    art = w.artifact
    assert not work.exists() and (art.path / "model" / "model.safetensors").stat().st_ino == inode
    assert store.verify(art) == []


def test_gc_on_a_shared_store_leaves_other_hosts_writes_alone(store, home):
    from swepost.artifacts import _host_key

    staging = home / "staging"
    dead = 2 ** 22 + 12345  # above any pid this machine hands out
    ours, theirs, legacy = (staging / f"a.{dead}-{_host_key()}.00000001", staging / f"b.{dead}-0123456789.00000002",
                            staging / f"c.{dead}.00000003")
    for folder in (ours, theirs, legacy):
        folder.mkdir(parents=True)
    removed = store.gc()["staging"]
    assert sorted(removed) == sorted([ours.name, legacy.name]) and theirs.is_dir()
    assert store.gc(everything=True)["staging"] == [theirs.name]
