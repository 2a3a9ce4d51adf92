"""The codeqa environment's search and viewer, run INSIDE the sandbox as the model's own uid: its source is sent
with each call (`python3 -I -S -B -c SOURCE REQUEST`), so it must stand alone: standard library only, Python 3.6+.

    semantic_search   files that define a searched symbol (def, class, function, func, fn, type, a top-level
                      assignment; a symbol is a compound identifier of the term, or the whole term) come first;
                      within that, BM25 (k1 1.2, b 0.75) over identifier words: identifiers are split at snake_case
                      and camelCase boundaries and kept whole too (`parseHTTPResponse` -> parsehttpresponse, parse,
                      http, response), words of the file's path count three times, a file defining a plain word of
                      the term gains DEFINES_BONUS and one holding the whole term (case-insensitive) PHRASE_BONUS
    view_codebase     a file's numbered lines (a range, or a Python outline with bodies of 4+ lines elided), or a
                      directory's tree two levels deep

It prints one line, MARKER followed by JSON: {"ok": true, "text": ...} or {"ok": false, "error": ...}. Paths are
confined to the repository after symlinks are resolved; hidden files, symlinks and binary files are skipped.
"""
# it runs on whatever python3 a task image has: no syntax newer than 3.6 (f-strings are 3.6)

import ast
import json
import math
import os
import re
import sys
from collections import Counter

MARKER = "@@SWEPOST_CODEQA@@"
CLIPPED = ("\n<response clipped>\n<NOTE>Only part of the content is shown to limit context size. Use "
           "semantic_search, grep or view_range to inspect specific sections.</NOTE>")
K1, B = 1.2, 0.75
PATH_WEIGHT = 3
DEFINES_BONUS = 3.0  # a file defining a plain word of the term (`def pad`)
PHRASE_BONUS = 2.0  # a file holding the whole term
RANKING = ("files defining a searched symbol first, then BM25 over identifier words (snake_case/camelCase split, "
           "path words x3)")
MAX_FILE_BYTES = 2 << 20  # larger files are skipped by search (generated data, minified bundles)
MAX_VIEW_BYTES = 16 << 20
MAX_SCANNED = 50000  # files read by one search
MAX_LINES_PER_FILE = 20  # include_lines: matching lines shown per file
MAX_LINE_CHARS = 240
MAX_LISTED = 2000  # entries of a directory listing

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
DEFINITION = re.compile(r"^[ \t]*(?:export[ \t]+)?(?:async[ \t]+)?(?:def|class|function|func|fn|struct|"
                        r"interface|enum|type|trait)[ \t]+(?:\([^)]*\)[ \t]*)?([A-Za-z_][A-Za-z0-9_]*)"
                        r"|^([A-Za-z_][A-Za-z0-9_]*)[ \t]*(?::[^=\n]*)?=(?!=)", re.M)
STOP = frozenset("a an and are as at be by can do does for from has have how i in is it its of on or that the "
                 "this to was what when where which who why will with".split())


class Refused(Exception):
    """A request this tool cannot honour: its message goes back to the model."""


def words_of(identifier):
    """An identifier's words: itself lower-cased and, if compound, its snake_case / camelCase parts."""
    whole = identifier.lower()
    parts = [p.lower() for chunk in identifier.split("_") for p in CAMEL.findall(chunk)]
    out = [whole] if len(whole) > 1 else []
    if len(parts) > 1:
        out.extend(p for p in parts if len(p) > 1)
    return out


_SPLIT = {}


def split_words(identifier):
    """words_of, remembered: a repo repeats its identifiers across files."""
    out = _SPLIT.get(identifier)
    if out is None:
        out = _SPLIT[identifier] = words_of(identifier)
    return out


def query_words(term):
    """(words to rank by, identifiers to look for definitions of) in a search term."""
    found, identifiers = [], []
    for ident in IDENT.findall(term):
        if ident.lower() in STOP:
            continue
        if not ident.isdigit() and len(ident) > 1:
            identifiers.append(ident)
        for w in words_of(ident):
            if w not in found and w not in STOP:
                found.append(w)
    return found, identifiers


def inside(root, path):
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip("/") + "/")


def confined(root, path):
    """`path` with symlinks resolved, refused when it leaves the repository."""
    root = os.path.realpath(root)
    if not os.path.lexists(path):
        raise Refused(f"The path {path} does not exist.")
    if not inside(root, path):
        raise Refused(f"The path {path} is outside the repository {root} (symlinks are followed); only the "
                      "repository can be searched or viewed.")
    return os.path.realpath(path), root


def read_text(path, limit):
    """A file's text, or None for a binary (a NUL byte in its first 8 KiB) or an over-`limit` file."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit or b"\x00" in data[:8192]:
        return None
    return data.decode("utf-8", "replace")


def files_under(top, python_only):
    """Regular files under `top`, hidden entries and symlinks skipped, in a stable order."""
    for current, dirs, names in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(current, d)))
        for name in sorted(names):
            path = os.path.join(current, name)
            if name.startswith(".") or (python_only and not name.endswith(".py")) or os.path.islink(path):
                continue
            yield path


def squashed(identifier):
    """An identifier without case or underscores: days_in_month, daysInMonth and DAYS_IN_MONTH are one name."""
    return re.sub(r"[^a-z0-9]", "", identifier.lower())


def definitions(text, identifiers):
    """The names `text` defines (def, class, function, func, fn, struct, interface, enum, type, trait; a top-level
    assignment) that are one of `identifiers` in any naming style."""
    wanted = set(squashed(i) for i in identifiers)
    found = set()
    for m in DEFINITION.finditer(text):
        name = m.group(1) or m.group(2)
        if squashed(name) in wanted:
            found.add(name)
    return sorted(found)


def code_like(identifier, term):
    """An identifier that names a symbol rather than an English word: compound (snake_case, camelCase, CAPS,
    digits) or the whole search term."""
    return ("_" in identifier.strip("_") or any(c.isupper() for c in identifier[1:]) or
            any(c.isdigit() for c in identifier) or identifier == term.strip())


def search(req):
    term = req["term"]
    wanted, identifiers = query_words(term)
    if not wanted:
        raise Refused(f"The term {term!r} has no words to search for (letters, digits or _).")
    path, root = confined(req["root"], req["path"])
    python_only, include_lines = req["python_only"], req["include_lines"]
    scope = "directory" if os.path.isdir(path) else "file"
    if scope == "file" and python_only and not path.endswith(".py"):
        raise Refused(f"python_only is true but {path} is not a Python file.")
    paths = files_under(path, python_only) if scope == "directory" else iter([path])
    symbols = set(squashed(i) for i in identifiers if code_like(i, term))
    plain = set(squashed(i) for i in identifiers) - symbols
    phrase = term.strip().lower()
    docs, sizes, scanned, capped = [], [], 0, False
    for p in paths:
        if scanned >= MAX_SCANNED:
            capped = True
            break
        scanned += 1
        try:
            text = read_text(p, MAX_FILE_BYTES) if os.path.getsize(p) <= MAX_FILE_BYTES else None
        except OSError:
            continue
        if text is None:
            continue
        rel = os.path.relpath(p, root)
        sizes.append(len(text))
        lower = text.lower()
        if not any(w in lower or w in rel.lower() for w in wanted):
            continue
        tf = dict.fromkeys(wanted, 0)
        for ident, count in Counter(IDENT.findall(text)).items():
            for w in split_words(ident):
                if w in tf:
                    tf[w] += count
        for ident in IDENT.findall(rel):
            for w in split_words(ident):
                if w in tf:
                    tf[w] += PATH_WEIGHT
        if any(tf.values()):
            defined = definitions(text, identifiers) if identifiers else []
            docs.append((rel, p, len(text) or 1, tf, defined, bool(phrase) and phrase in lower))
    n = max(len(sizes), 1)
    avg = (sum(sizes) / float(len(sizes))) if sizes else 1.0
    df = dict((w, sum(1 for d in docs if d[3][w])) for w in wanted)
    ranked = []
    for rel, p, dl, tf, defined, phrase_hit in docs:
        score = 0.0
        for w, f in tf.items():
            if f:
                idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                score += idf * f * (K1 + 1) / (f + K1 * (1 - B + B * dl / avg))
        names = set(squashed(d) for d in defined)
        score += DEFINES_BONUS * len(names & plain) + (PHRASE_BONUS if phrase_hit else 0.0)
        ranked.append((-len(names & symbols), -score, rel, p, defined))
    ranked.sort()
    files = []
    for _tier, neg, rel, p, defined in ranked[:req["max_files"]]:
        try:
            text = read_text(p, MAX_FILE_BYTES) or ""
        except OSError:
            text = ""
        lines = [(i, line) for i, line in enumerate(text.splitlines(), 1)
                 if any(w in wanted for ident in IDENT.findall(line) for w in split_words(ident))]
        entry = {"path": rel, "score": round(-neg, 2), "count": len(lines)}
        if defined:
            entry["defines"] = defined
        if include_lines:
            entry["matches"] = [{"line": i, "text": line.strip()[:MAX_LINE_CHARS]}
                                for i, line in lines[:MAX_LINES_PER_FILE]]
        files.append(entry)
    result = {"success": True, "scope": scope, "term": term, "root": path, "ranking": RANKING,
              "files": files, "matched_files": len(ranked), "truncated": len(ranked) > len(files) or capped,
              "error": None}
    if capped:
        result["note"] = f"searched the first {MAX_SCANNED} files only: give a narrower path"
    return fit(result, req["max_chars"])


def fit(result, limit):
    """The result as JSON within `limit` characters: matching lines, then the lowest-ranked files, are left out
    (and said so) rather than the JSON cut."""
    text = json.dumps(result, ensure_ascii=False)
    files = result["files"]
    while len(text) > limit and any(f.get("matches") for f in files):
        biggest = max(files, key=lambda f: len(f.get("matches") or ()))
        biggest["matches"] = biggest["matches"][:len(biggest["matches"]) // 2]
        result["note"] = "some matching lines are not shown (output limit): search a single file for all of them"
        text = json.dumps(result, ensure_ascii=False)
    while len(text) > limit and files:
        files.pop()
        result["truncated"] = True
        result["note"] = (f"{len(files)} of {result['matched_files']} matching files shown (output limit): "
                          "narrow the path or the term")
        text = json.dumps(result, ensure_ascii=False)
    return text


def clip(text, limit):
    return text if len(text) <= limit else text[:limit] + CLIPPED


def view(req):
    path, root = confined(req["root"], req["path"])
    if os.path.isdir(path):
        if req["view_range"] is not None:
            raise Refused(f"view_range applies to files; {path} is a directory.")
        return clip(listing(path, req["python_only"]), req["max_chars"])
    if not os.path.isfile(path):
        raise Refused(f"{path} is not a regular file or a directory.")
    if req["python_only"] and not path.endswith(".py"):
        raise Refused(f"python_only is true but {path} is not a Python file.")
    if os.path.getsize(path) > MAX_VIEW_BYTES:
        raise Refused(f"{path} is {os.path.getsize(path)} bytes, too large to view; use "
                      "execute_readonly_command (grep, sed -n) on it.")
    text = read_text(path, MAX_VIEW_BYTES)
    if text is None:
        raise Refused(f"{path} is a binary file.")
    lines = list(enumerate(text.splitlines(), 1))
    note = ""
    if req["concise"] and path.endswith(".py"):
        try:
            lines = outline(text, lines)
        except (SyntaxError, ValueError) as e:
            note = f"(not parsed as Python ({e}): the whole file is shown)\n"
    if req["view_range"] is not None:
        start, end = req["view_range"]
        if start > max(len(text.splitlines()), 1):
            raise Refused(f"view_range starts at line {start}, past the end of {path} "
                          f"({len(text.splitlines())} lines).")
        lines = [(i, line) for i, line in lines if i >= start and (end == -1 or i <= end)]
    body = "\n".join(f"{i:6d} {line}" for i, line in lines)
    return clip(f"File view: {path}\n{note}{body}", req["max_chars"])


def listing(path, python_only):
    out = []
    for current, dirs, names in os.walk(path):
        rel = os.path.relpath(current, path)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(current, d) + "/" for d in dirs]
        out += [os.path.join(current, n) for n in names
                if not n.startswith(".") and (not python_only or n.endswith(".py"))]
        if depth >= 1:  # this level's entries are the second below `path`
            dirs[:] = []
    out.sort()
    more = f"\n[... {len(out) - MAX_LISTED} more entries]" if len(out) > MAX_LISTED else ""
    only = ", Python files only" if python_only else ""
    shown = "\n".join(out[:MAX_LISTED])
    return f"Directory listing for {path} (depth <= 2, hidden paths excluded{only}):\n{path}\n{shown}{more}"


def last_line(node):
    end = getattr(node, "end_lineno", None)
    if end is not None:
        return end
    return max(getattr(n, "lineno", 0) for n in ast.walk(node))  # Python < 3.8: close enough


def is_docstring(statement):
    value = getattr(statement, "value", None) if isinstance(statement, ast.Expr) else None
    if type(value).__name__ not in ("Constant", "Str"):
        return False
    return isinstance(getattr(value, "value", getattr(value, "s", None)), str)


def outline(text, lines):
    """The file's lines with every function body of 4+ lines replaced by one `... elided lines s-e ...` line
    (outermost bodies only; a short docstring opening the body stays)."""
    tree = ast.parse(text)
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            start, end = node.body[0].lineno, last_line(node.body[-1])
            if end - start < 3:
                continue
            first = node.body[0]
            if is_docstring(first) and last_line(first) - first.lineno < 3 and len(node.body) > 1:
                start = node.body[1].lineno
            if end >= start:
                spans.append((start, end))
    spans.sort()
    outer = []
    for s, e in spans:
        if outer and s <= outer[-1][1]:
            continue
        outer.append((s, e))
    out, k = [], 0
    for i, line in lines:
        while k < len(outer) and outer[k][1] < i:
            k += 1
        if k < len(outer) and outer[k][0] <= i <= outer[k][1]:
            if i == outer[k][0]:
                indent = line[:len(line) - len(line.lstrip())]
                out.append((i, f"{indent}... elided lines {outer[k][0]}-{outer[k][1]} ..."))
            continue
        out.append((i, line))
    return out


def main():
    req = json.loads(sys.argv[1])
    try:
        reply = {"ok": True, "text": search(req) if req["op"] == "search" else view(req)}
    except Refused as e:
        reply = {"ok": False, "error": str(e)}
    except OSError as e:
        where = getattr(e, "filename", None) or req.get("path")
        reply = {"ok": False, "error": f"{where}: {e.strerror or e}"}
    except Exception as e:  # a file the parser chokes on (RecursionError, MemoryError...): the model goes on
        reply = {"ok": False, "error": f"internal error of the tool: {type(e).__name__}: {str(e)[:500]}"}
    out = getattr(sys.stdout, "buffer", None)
    line = MARKER + json.dumps(reply, ensure_ascii=False) + "\n"
    if out is not None:  # bytes: the locale of an image's python does not matter
        out.write(line.encode("utf-8", "replace"))
    else:
        sys.stdout.write(line)


if __name__ == "__main__":
    main()
