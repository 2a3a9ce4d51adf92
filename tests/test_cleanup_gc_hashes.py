"""`swepost artifacts gc` prunes the remembered file hashes (cache/hashes) of paths that are gone; --all clears
them all. The memo only saves time: what it forgets is hashed again, to the same fingerprint."""

from __future__ import annotations

import json

from swepost.fingerprint import hash_memo, path_fingerprint


def test_gc_prunes_the_hashes_of_gone_paths(home, tmp_path, swepost):
    memo = hash_memo(home)
    kept, gone, folder = tmp_path / "kept.yaml", tmp_path / "gone.json", tmp_path / "model"
    kept.write_text("a: 1\n")
    gone.write_text("{}")
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"\0" * 16)
    prints = {p: path_fingerprint(p, memo) for p in (kept, gone, folder)}
    records = {json.loads(f.read_text())["path"] for f in memo.glob("*.json")}
    assert records == {str(kept), str(gone), str(folder)}
    gone.unlink()

    r = swepost("artifacts", "gc", check=0)
    assert "1 file hash record(s)" in r.stdout, r.stdout
    assert {json.loads(f.read_text())["path"] for f in memo.glob("*.json")} == {str(kept), str(folder)}
    assert "0 file hash record(s)" in swepost("artifacts", "gc", check=0).stdout

    r = swepost("artifacts", "gc", "--all", check=0)
    assert "2 file hash record(s)" in r.stdout and list(memo.glob("*.json")) == []
    assert path_fingerprint(kept, memo) == prints[kept] and path_fingerprint(folder, memo) == prints[folder]


def test_a_memo_of_another_format_is_not_trusted(home, tmp_path):
    """A memo file written before it recorded its path (or by hand) is read as no memo, and replaced."""
    memo = hash_memo(home)
    f = tmp_path / "f.txt"
    f.write_text("x")
    truth = path_fingerprint(f, None)
    path_fingerprint(f, memo)
    (record,) = memo.glob("*.json")
    st = f.stat()
    record.write_text(json.dumps({"": [st.st_size, st.st_mtime_ns, "0" * 64]}))  # the old format, a wrong hash
    assert path_fingerprint(f, memo) == truth
    assert json.loads(record.read_text())["path"] == str(f.resolve())
