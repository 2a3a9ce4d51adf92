"""Stage `tasks-synth-qa`: code-understanding questions synthesized from issue texts (SWE-QA-Pro's data pipeline).

Issues (JSONL of {repo, title, body}) about repos pinned at a commit -> an LLM writes questions tagged what / why /
where / how -> near-duplicates removed (token Jaccard, per repo) -> topic clusters (sentence-transformers
embeddings, else TF-IDF, then k-means) -> a balanced sample (caps per cluster, per qa_type, in all) -> a teacher
agent answers each with the codeqa tools (a collect) -> an answer the judge rates >= reference_threshold becomes
the reference answer -> difficulty calibration: a direct answer with no tools is judged against the reference, and
questions it already answers (reward >= direct_answer_threshold) are dropped.

Writes a codeqa tasks artifact (tasks.jsonl) and report.json: the counts at each step, the clusters, every dropped
question and why, and every infrastructure failure (a request that failed, a reply never readable) with its
cause, apart from the drops: a failed request is never a bad question. When more than max_infra_failure_rate of a
step's requests fail, the stage exits 1 and writes nothing. The candidates the teacher answers
(`<name>-candidates`) and its trajectories (`<name>-teacher`) are artifacts of their own, parents of the result;
a re-run reuses a teacher run on the same questions, and the judge's cache (home/cache/judge) pays no judgement twice.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import string
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from swepost.artifacts import Artifact, ArtifactStore, producer_record, redact_secrets, sha256_path
from swepost.config import FileInput, PathInput, StageConfig, validate
from swepost.errors import BadInput, BadInputs, WorkFailed
from swepost.policies.args import check_policy_args
from swepost.policies.openai import OpenAIArgs
from swepost.records import SandboxLimits, Trajectory
from swepost.rewards.judge import JudgeConfig
from swepost.stages.collect import EpisodeLimits
from swepost.stages.tasks import TASKS_FILE

REPORT_FILE = "report.json"
QA_TYPES = ("what", "why", "where", "how")
PROMPTS = Path(__file__).resolve().parents[1] / "rewards" / "prompts"
QUESTION_PROMPT, DIRECT_PROMPT = PROMPTS / "synth_questions.md", PROMPTS / "synth_direct.md"
REFERENCE_JUDGE_PROMPT = PROMPTS / "synth_reference_judge.md"
QUESTION_FIELDS = ("repo", "commit", "title", "body", "max_questions", "qa_types")
DIRECT_FIELDS = ("repo", "question")
REMINDER = ("Your reply could not be read ({cause}). Reply with only the JSON object {{\"questions\": [{{\"question\": "
            "\"...\", \"qa_type\": \"...\"}}]}}, each qa_type one of {qa_types}.")


class PinnedRepo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(description="owner/name, as the issues and the mirror (owner__name) name it")
    commit: str = Field(description="the commit the questions are about (a hash, full or abbreviated)")


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field("openai", description="openai | hf | scripted | oracle | module:Class")
    policy_args: dict[str, Any] = Field(default_factory=dict, description="the policy's arguments; for openai, "
                                        "model, base_url and api_key default to llm's")
    samples: int = Field(1, ge=1, le=16, description="episodes per question; the best-judged answer is the reference")
    limits: EpisodeLimits = Field(default_factory=lambda: EpisodeLimits(max_turns=25),
                                  description="turns, context and seconds of one teacher episode")

    @field_validator("policy_args")
    @classmethod
    def _typed_policy_args(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return check_policy_args(info.data.get("policy"), value, later=("model",))


class TasksSynthQaConfig(StageConfig):
    NOT_IN_KEY = frozenset({"concurrency", "jobs"})  # speed, not results

    issues: Path = FileInput(description="issue texts: JSONL of {repo, title, body} per line (other keys such as "
                             "number and url are kept with each question)")
    commits: list[PinnedRepo] = Field(min_length=1, description="the commit of each repo the questions are about: "
                                      "{repo, commit} or `owner/name@commit`")
    repos: Path = PathInput(..., description="mirror folder of owner__name repos (folders, .git or .bundle)")
    name: str = Field("tasks-synth-qa", description="output artifact name (and prefix of -candidates, -teacher)")
    llm: OpenAIArgs = Field(description="the OpenAI-compatible endpoint that writes questions and direct answers "
                            "(model, base_url, api_key, temperature, max_tokens, timeout, max_retries, ...)")
    llm_attempts: int = Field(3, ge=1, description="replies asked for before one that cannot be read is a failure")
    question_prompt: Path | None = FileInput(None, description="template with {repo} {commit} {title} {body} "
                                             "{max_questions} {qa_types}; none: rewards/prompts/synth_questions.md")
    direct_prompt: Path | None = FileInput(None, description="template with {repo} {question}; none: "
                                           "rewards/prompts/synth_direct.md")
    reference_judge_prompt: Path | None = FileInput(None, description="judge template rating a teacher answer "
                                                    "against the issue ({reference}); none: "
                                                    "rewards/prompts/synth_reference_judge.md")
    questions_per_issue: int = Field(3, ge=1, le=20, description="questions asked for per issue (more are dropped)")
    qa_types: list[Literal["what", "why", "where", "how"]] = Field(
        default_factory=lambda: list(QA_TYPES), min_length=1, description="qa_types a question may have")
    dedup_threshold: float = Field(0.8, gt=0, le=1, description="a question whose word-set Jaccard with an "
                                   "earlier one of the same repo is at least this is a near-duplicate")
    clusters: int | None = Field(None, ge=1, description="topic clusters; none: about sqrt(questions / 2)")
    embeddings: Literal["auto", "tfidf", "sentence-transformers"] = Field(
        "auto", description="auto: sentence-transformers when installed and embedding_model is on disk, else TF-IDF")
    embedding_model: str = Field("sentence-transformers/all-MiniLM-L6-v2",
                                 description="the sentence-transformers model (hub id or folder)")
    max_per_cluster: int | None = Field(None, ge=1, description="questions kept per topic cluster; none: no cap")
    max_per_type: int | None = Field(None, ge=1, description="questions kept per qa_type; none: no cap")
    max_questions: int | None = Field(None, ge=1, description="questions sent to the teacher; none: all")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="the agent that answers with tools")
    backend: str = Field("auto", description="sandbox backend of the teacher: auto, docker, bwrap")
    jobs: int = Field(2, ge=1, le=512, description="teacher episodes (sandboxes) at once")
    sandbox_limits: SandboxLimits = Field(default_factory=SandboxLimits, description="sandbox limits of the teacher")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="the judge of teacher and direct answers; "
                               "with none of kind, base_url, model: llm's endpoint; kind lexical for demos")
    reference_threshold: float = Field(0.7, ge=0, le=1, description="judge reward a teacher answer needs to become "
                                       "the reference answer")
    direct_answer_threshold: float = Field(0.7, ge=0, le=1, description="a question whose direct answer (no "
                                           "tools) is judged at least this against the reference is too easy")
    concurrency: int = Field(8, ge=1, le=256, description="LLM and judge requests in flight")
    max_infra_failure_rate: float = Field(0.5, ge=0, le=1, description="the largest fraction of a step's requests "
                                          "(questions, teacher episodes, judgements, direct answers) that may fail; "
                                          "above it the stage exits 1")
    seed: int = Field(0, description="clustering and sampling seed")

    @field_validator("commits", mode="before")
    @classmethod
    def _pins(cls, value: Any) -> Any:
        """`owner/name@commit` strings (the CLI's --commit) as {repo, commit}."""
        if not isinstance(value, list):
            return value
        return [dict(zip(("repo", "commit"), v.rsplit("@", 1), strict=True)) if isinstance(v, str) and "@" in v
                else v for v in value]

    @model_validator(mode="after")
    def _one_commit_per_repo(self) -> TasksSynthQaConfig:
        repeated = [repo for repo, n in Counter(p.repo for p in self.commits).items() if n > 1]
        if repeated:
            raise ValueError(f"commits: {', '.join(repeated)} pinned more than once")
        return self


# --- input --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Issue:
    line: int
    repo: str
    title: str
    body: str
    extra: dict[str, Any]  # number, url, ...: the scalar columns kept with each question

    def text(self) -> str:
        return f"{self.title}\n\n{self.body}".strip()


def read_issues(path: Path, pinned: set[str]) -> list[Issue]:
    """Every issue row; BadInputs naming file, line and field for all the malformed ones at once."""
    from swepost.taskkinds.columns import repo_name

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read: {e}", file=str(path)) from None
    issues, problems = [], []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            issues.append(_issue(n, json.loads(raw), pinned, repo_name))
        except json.JSONDecodeError as e:
            problems.append(BadInput(f"invalid JSON: {e.msg} (column {e.colno})", file=str(path), line=n))
        except BadInput as e:
            problems.append(BadInput(e.detail, file=str(path), line=n, key=e.key))
    if problems:
        raise BadInputs(problems)
    if not issues:
        raise BadInput("no issues in the file", file=str(path))
    return issues


def _issue(line: int, row: Any, pinned: set[str], repo_name: Callable) -> Issue:
    if not isinstance(row, dict):
        raise BadInput(f"expected a JSON object per line, got {type(row).__name__}")
    repo, _ = repo_name(row, "repo")
    if repo is None:
        raise BadInput("required field missing (owner/name or a git URL)", key="repo")
    if repo not in pinned:
        raise BadInput(f"{repo} has no pinned commit: add it to commits (pinned: {', '.join(sorted(pinned))})",
                       key="repo")
    title = row.get("title")
    if not isinstance(title, str) or not title.strip():
        raise BadInput("required: the issue's title, a non-empty string", key="title")
    if "body" not in row:
        raise BadInput("required field missing (null for an issue without a body)", key="body")
    body = row["body"]
    if body is not None and not isinstance(body, str):
        raise BadInput(f"expected a string or null, got {type(body).__name__}", key="body")
    extra = {k: v for k, v in row.items() if k not in ("repo", "title", "body")
             and isinstance(v, (str, int, float, bool)) and len(str(v)) <= 500}
    return Issue(line, repo, title.strip(), (body or "").strip(), extra)


def resolve_pins(config: TasksSynthQaConfig) -> dict[str, str]:
    """owner/name -> the full commit hash, checked in its mirror (a bundle is read through a bare clone)."""
    from swepost.sandbox.repos import git, mirror_path

    out = {}
    for i, pin in enumerate(config.commits):
        try:
            mirror = mirror_path(config.repos, pin.repo)
        except BadInput as e:
            raise BadInput(e.detail, key=f"commits.{i}.repo") from None
        if not re.fullmatch(r"[0-9A-Za-z][\w./-]*", pin.commit):  # never an option to git
            raise BadInput(f"{pin.commit!r} is not a commit hash", key=f"commits.{i}.commit")
        with tempfile.TemporaryDirectory(prefix="swepost-synth-") as tmp:
            git_dir = mirror
            if mirror.is_file():
                git_dir = Path(tmp) / "mirror.git"
                git("clone", "--quiet", "--bare", str(mirror), str(git_dir))
            found = git("rev-parse", "--verify", "--quiet", f"{pin.commit}^{{commit}}", cwd=git_dir, check=False)
        full = found.stdout.strip()
        if found.returncode != 0:
            raise BadInput(f"{pin.commit} is not a commit of {pin.repo} in {mirror}", key=f"commits.{i}.commit")
        if not full.startswith(pin.commit.lower()):
            raise BadInput(f"{pin.commit!r} names a ref (now {full[:12]}), not a commit: pin the commit",
                           key=f"commits.{i}.commit")
        out[pin.repo] = full
    return out


def load_template(path: Path | None, default: Path, fields: tuple[str, ...], setting: str) -> str:
    """A str.format template, its fields checked so a typo fails before any request."""
    path = path or default
    try:
        text = Path(path).read_text(encoding="utf-8")
        used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read the {setting}: {e}", file=str(path)) from None
    except ValueError as e:
        raise BadInput(f"not a valid str.format template: {e} (write {{{{ and }}}} for braces)",
                       file=str(path)) from None
    unknown = sorted(used - set(fields))
    if unknown:
        raise BadInput(f"unknown template field(s) {', '.join('{' + f + '}' for f in unknown)} (known: "
                       f"{', '.join(fields)}; write {{{{ and }}}} for braces)", file=str(path))
    return text


# --- the LLM ------------------------------------------------------------------------------------------------------

class Unreadable(ValueError):
    """The LLM answered, but not with what was asked: asked again, then a failure."""


class LlmFailed(Exception):
    """No usable reply: the endpoint failed (after its retries), or every reply was unreadable."""


class ChatLLM:
    """One-message chats with the `llm` endpoint, through OpenAIPolicy (its retries with backoff, timeouts and key
    redaction); one client per thread. A reply `parse` rejects is asked again with a reminder."""

    def __init__(self, args: OpenAIArgs, attempts: int, reminder: str = ""):
        self.kwargs = {name: getattr(args, name) for name in OpenAIArgs.model_fields}
        self.attempts, self.reminder = attempts, reminder
        self._local, self._made, self._lock = threading.local(), [], threading.Lock()

    def ask(self, prompt: str, parse: Callable[[str], Any] = lambda text: text) -> Any:
        from swepost.policies.base import PolicyError

        policy = self._policy()
        messages = [{"role": "user", "content": prompt}]
        cause = ""
        for _ in range(self.attempts):
            policy.start(None)  # a fresh time budget (episode_timeout) for each request
            try:
                reply = policy.reply(messages, [])
            except PolicyError as e:
                raise LlmFailed(str(e)) from None
            text = reply.message.get("content") or ""
            try:
                if not text.strip():
                    raise Unreadable(f"empty reply (finish_reason {reply.finish_reason})")
                return parse(text.rsplit("</think>", 1)[-1].strip())
            except Unreadable as e:
                cause = str(e)
                # the reply and a reminder: at temperature 0 the same prompt would give the same reply
                messages = [messages[0]] + ([{"role": "assistant", "content": text},
                                             {"role": "user", "content": self.reminder.format(cause=cause)}]
                                            if text and self.reminder else [])
        raise LlmFailed(f"{policy.model} at {policy.base_url}: no usable reply in {self.attempts} attempts; "
                        f"last: {cause}")

    def _policy(self):
        from swepost.policies.openai import OpenAIPolicy

        if not hasattr(self._local, "policy"):
            self._local.policy = OpenAIPolicy(**self.kwargs)
            with self._lock:
                self._made.append(self._local.policy)
        return self._local.policy

    def close(self) -> None:
        for policy in self._made:
            policy.close()


def parse_questions(text: str, qa_types: list[str]) -> tuple[list[dict[str, str]], list[str]]:
    """(questions, why each rejected item was rejected) from a reply holding {"questions": [...]} or a bare list,
    in ```json fences or prose. Unreadable when there is no such list, or nothing in it is a usable question."""
    chunks = [m.group(1) for m in re.finditer(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", text, re.DOTALL)]
    items = None
    for chunk in chunks + [text]:
        items = next((v for v in _json_values(chunk) if isinstance(v, list)
                      or (isinstance(v, dict) and isinstance(v.get("questions"), list))), None)
        if items is not None:
            break
    if items is None:
        raise Unreadable(f"no {{\"questions\": [...]}} in the reply: {' '.join(text.split())[:200]!r}")
    items = items["questions"] if isinstance(items, dict) else items
    questions, rejected = [], []
    for item in items:
        question = item.get("question") if isinstance(item, dict) else None
        kind = item.get("qa_type") if isinstance(item, dict) else None
        kind = re.split(r"[\s/_.-]+", kind.strip().lower())[0] if isinstance(kind, str) and kind.strip() else None
        if not isinstance(question, str) or not question.strip():
            rejected.append(f"no question in {json.dumps(item)[:200]}")
        elif kind not in qa_types:
            rejected.append(f"qa_type {item.get('qa_type')!r} is not one of {', '.join(qa_types)}: {question[:200]!r}")
        else:
            questions.append({"question": " ".join(question.split()), "qa_type": kind})
    if items and not questions:
        raise Unreadable(f"no usable question: {'; '.join(rejected)[:300]}")
    return questions, rejected


_OPENING = re.compile(r"[\[{]")


def _json_values(text: str):
    """Every JSON object or list in `text`, in order, skipping what does not decode."""
    decoder, start = json.JSONDecoder(), 0
    while (match := _OPENING.search(text, start)) is not None:
        try:
            value, start = decoder.raw_decode(text, match.start())
        except ValueError:
            start = match.start() + 1
            continue
        yield value


# --- the steps ----------------------------------------------------------------------------------------------------

@dataclass
class Question:
    id: str
    repo: str
    commit: str
    text: str
    qa_type: str
    issue: Issue
    cluster: str = ""
    reference: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """As a codeqa row (the codeqa kind's own columns; the rest goes to the task's metadata)."""
        row = {"kind": "codeqa", "repo": self.repo, "base_commit": self.commit, "question": self.text,
               "qa_type": self.qa_type, "source_issue": {"line": self.issue.line, "title": self.issue.title,
                                                         **self.issue.extra}, "synthesis": self.evidence}
        if self.reference:
            row["reference_answer"] = self.reference
        if self.cluster:
            row["cluster"] = self.cluster
        return row

    def brief(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.text, "qa_type": self.qa_type, "issue_line": self.issue.line}


_WORD = re.compile(r"[a-z0-9_]+")


def jaccard(a: str, b: str) -> float:
    x, y = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    return len(x & y) / len(x | y) if x | y else 1.0


def near_duplicates(questions: list[Question], threshold: float) -> tuple[list[Question], list[dict]]:
    """The questions with no near-duplicate earlier in the list (same repo), and a drop for each other one."""
    kept: list[Question] = []
    dropped = []
    for q in questions:
        score, twin = max(((jaccard(q.text, k.text), k) for k in kept if k.repo == q.repo),
                          key=lambda x: x[0], default=(0.0, None))
        if twin is not None and score >= threshold:
            dropped.append({**q.brief(), "step": "dedup",
                            "reason": f"near-duplicate of {twin.id} (Jaccard {score:.2f} >= {threshold:g})"})
        else:
            kept.append(q)
    return kept, dropped


def cluster_texts(texts: list[str], config: TasksSynthQaConfig,
                  common: tuple[str, ...] = ()) -> tuple[list[int], dict[str, Any]]:
    """A cluster label per text, and how: embeddings or TF-IDF vectors, k-means, each cluster's top words.
    `common`: words every question may hold (the repos' names) that say nothing of its topic."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

    k = min(len(texts), config.clusters or max(1, round(math.sqrt(len(texts) / 2))))
    info: dict[str, Any] = {"method": "tfidf", "k": k}
    stop = sorted(ENGLISH_STOP_WORDS | set(QA_TYPES) | {"does", "did", "doing"} | {w.lower() for w in common})
    try:
        tfidf = TfidfVectorizer(stop_words=stop, sublinear_tf=True)
        matrix = tfidf.fit_transform(texts)
    except ValueError:  # no word left that is not a stop word
        return [0] * len(texts), {**info, "k": 1, "note": "no vocabulary: one cluster", "terms": [[]]}
    vectors = matrix
    if config.embeddings != "tfidf":
        vectors, note = _embed(texts, config)
        if vectors is None:
            vectors, info["note"] = matrix, note
        else:
            info["method"] = f"sentence-transformers ({config.embedding_model})"
    labels = [0] * len(texts) if k == 1 else \
        KMeans(n_clusters=k, n_init=10, random_state=config.seed).fit(vectors).labels_.tolist()
    words = tfidf.get_feature_names_out()
    terms = []
    for c in range(k):
        rows = [i for i, label in enumerate(labels) if label == c]
        weight = matrix[rows].mean(axis=0).A1 if rows else []
        terms.append([str(words[j]) for j in sorted(range(len(weight)), key=lambda j: -weight[j])[:3]
                      if weight[j] > 0])
    return labels, {**info, "terms": terms}


def _embed(texts: list[str], config: TasksSynthQaConfig):
    """(normalized embeddings, None), or (None, why not) in auto mode; BadInput when asked for by name and
    unavailable. Auto never downloads: the model must be on disk (a folder, or the hub cache)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        if config.embeddings == "auto":
            return None, "sentence-transformers is not installed: TF-IDF"
        raise BadInput("sentence-transformers is not installed (pip install sentence-transformers)",
                       key="embeddings") from None
    try:
        local = {"local_files_only": True} if config.embeddings == "auto" else {}
        model = SentenceTransformer(config.embedding_model, device="cpu", **local)
        return model.encode(texts, normalize_embeddings=True), None
    except Exception as e:  # noqa: BLE001 - a missing or broken model, whatever the library raises
        if config.embeddings == "auto":
            return None, f"{config.embedding_model} not usable ({type(e).__name__}: {str(e)[:200]}): TF-IDF"
        raise BadInput(f"cannot load {config.embedding_model}: {e}", key="embedding_model") from None


def balance(questions: list[Question], config: TasksSynthQaConfig) -> tuple[list[Question], list[dict]]:
    """Round-robin over clusters, and over qa_types inside each, so that every cap (per cluster, per qa_type, in
    all) cuts evenly; the order inside a cluster is shuffled by `seed`."""
    rng = random.Random(config.seed)
    queues = {}
    for cluster in sorted({q.cluster for q in questions}, key=lambda c: (len(c), c)):
        by_type = defaultdict(list)
        for q in questions:
            if q.cluster == cluster:
                by_type[q.qa_type].append(q)
        for group in by_type.values():
            rng.shuffle(group)
        queues[cluster] = [q for round_ in _zip_all(*(by_type[t] for t in sorted(by_type))) for q in round_]
    kept, dropped = [], []
    per_cluster, per_type = Counter(), Counter()
    for q in (q for round_ in _zip_all(*queues.values()) for q in round_):
        reason = None
        if config.max_questions is not None and len(kept) >= config.max_questions:
            reason = f"max_questions {config.max_questions} reached"
        elif config.max_per_cluster is not None and per_cluster[q.cluster] >= config.max_per_cluster:
            reason = f"cluster {q.cluster} has its max_per_cluster {config.max_per_cluster}"
        elif config.max_per_type is not None and per_type[q.qa_type] >= config.max_per_type:
            reason = f"qa_type {q.qa_type} has its max_per_type {config.max_per_type}"
        if reason:
            dropped.append({**q.brief(), "step": "balance", "reason": reason})
            continue
        kept.append(q)
        per_cluster[q.cluster] += 1
        per_type[q.qa_type] += 1
    order = {q.id: i for i, q in enumerate(questions)}
    return sorted(kept, key=lambda q: order[q.id]), dropped


def _zip_all(*lists: list) -> list[list]:
    """[[a0, b0, ...], [a1, b1, ...], ...] over lists of different lengths."""
    return [[x[i] for x in lists if i < len(x)] for i in range(max(map(len, lists), default=0))]


def check_failures(step: str, failed: list[dict], total: int, rate: float) -> None:
    """WorkFailed with the causes counted when more than `rate` of a step's requests failed."""
    if not total or len(failed) / total <= rate:
        return
    causes = Counter(" ".join(f["cause"].split())[:300] for f in failed).most_common(3)
    lines = "\n".join(f"  {n} x {cause}" for cause, n in causes)
    raise WorkFailed(f"tasks-synth-qa: {len(failed)} of {total} {step} requests failed (more than "
                     f"max_infra_failure_rate {rate:g}); no artifact written. Most common causes:\n{lines}")


def in_threads(fn: Callable, items: list, concurrency: int) -> list:
    if not items:
        return []
    with ThreadPoolExecutor(min(concurrency, len(items)), thread_name_prefix="synth-qa") as pool:
        return list(pool.map(fn, items))


def generate(issues: list[Issue], pins: dict[str, str], llm: ChatLLM, config: TasksSynthQaConfig,
             report: dict) -> list[Question]:
    from swepost.stages.tasks import row_to_task

    template = load_template(config.question_prompt, QUESTION_PROMPT, QUESTION_FIELDS, "question_prompt")

    def ask(issue: Issue):
        prompt = template.format(repo=issue.repo, commit=pins[issue.repo], title=issue.title,
                                 body=issue.body or "(no description)", max_questions=config.questions_per_issue,
                                 qa_types=", ".join(config.qa_types))
        try:
            return llm.ask(prompt, lambda text: parse_questions(text, list(config.qa_types)))
        except LlmFailed as e:
            return e

    questions, rejected_before = [], len(report["dropped"])
    for issue, result in zip(issues, in_threads(ask, issues, config.concurrency), strict=True):
        where = {"issue_line": issue.line, "title": issue.title}
        if isinstance(result, LlmFailed):
            report["failed"].append({**where, "step": "generate", "cause": str(result)})
            continue
        found, rejected = result
        report["dropped"] += [{**where, "step": "generate", "reason": f"invalid: {why}"} for why in rejected]
        for n, item in enumerate(found):
            task = row_to_task({"kind": "codeqa", "repo": issue.repo, "base_commit": pins[issue.repo],
                                "question": item["question"]})
            q = Question(task.instance_id, issue.repo, pins[issue.repo], item["question"], item["qa_type"], issue)
            if n >= config.questions_per_issue:
                report["dropped"].append({**q.brief(), "step": "generate",
                                          "reason": f"over questions_per_issue {config.questions_per_issue}"})
            else:
                questions.append(q)
    report["counts"].update(issues=len(issues), issues_failed=len(report["failed"]), generated=len(questions),
                            rejected=len(report["dropped"]) - rejected_before)
    check_failures("question-writing", report["failed"], len(issues), config.max_infra_failure_rate)
    return questions


def answer_with_teacher(questions: list[Question], config: TasksSynthQaConfig, store: ArtifactStore,
                        producer: dict, report: dict) -> tuple[list[Question], list[str]]:
    """The questions whose teacher answer the judge kept as their reference; and the parents (candidates and
    trajectories artifacts)."""
    from swepost.rewards.filters import failure_cause, is_infra_failure
    from swepost.stages import get_stage
    from swepost.stages.tasks import row_to_task

    with store.write(f"{config.name}-candidates", "tasks", producer=producer) as w:
        (w.path / TASKS_FILE).write_text("".join(json.dumps(row_to_task(q.row()).model_dump(mode="json"),
                                                            ensure_ascii=False) + "\n" for q in questions))
        w.stats["tasks"] = len(questions)
    candidates = w.artifact
    stage = get_stage("collect")
    args = dict(config.teacher.policy_args)
    if config.teacher.policy == "openai":  # the teacher talks to llm's server unless told otherwise
        llm = {"model": config.llm.model, "base_url": config.llm.base_url,
               "api_key": config.llm.api_key.get_secret_value() if config.llm.api_key else None}
        args = {**{k: v for k, v in llm.items() if v is not None}, **args}
    collect = validate(stage.config_model(), {
        "tasks": candidates.id, "name": f"{config.name}-teacher", "policy": config.teacher.policy,
        "policy_args": args, "environment": "codeqa", "repos": config.repos, "backend": config.backend,
        "samples": config.teacher.samples, "concurrency": config.jobs, "grade": False,
        "limits": config.teacher.limits.model_dump(), "sandbox_limits": config.sandbox_limits.model_dump(),
        "max_infra_failure_rate": config.max_infra_failure_rate, "seed": config.seed,
        "judge": judge_config(config, store.root)}, prefix=("teacher",))
    trajectories = _finished(store, collect, candidates) or stage.runner()(collect, store)
    episodes = defaultdict(list)
    for line in (trajectories.path / "trajectories.jsonl").read_text().splitlines():
        traj = Trajectory.model_validate_json(line)
        episodes[traj.instance_id].append(traj)
    answered = [(q, t) for q in questions for t in episodes[q.id] if t.answer and t.answer.strip()]
    judgements = _judge_many(judge_config(config, store.root, config.reference_judge_prompt or REFERENCE_JUDGE_PROMPT),
                             [{"question": q.text, "answer": t.answer, "reference": q.issue.text()}
                              for q, t in answered])
    by_question = defaultdict(list)
    for (q, t), j in zip(answered, judgements, strict=True):
        by_question[q.id].append((t, j))
    kept, judge_failed = [], []
    for q in questions:
        infra = [failure_cause(t) for t in episodes[q.id] if is_infra_failure(t)]
        scored = [(t, j) for t, j in by_question[q.id] if not j.failed]
        failed = [j.cause or "judge failed" for _, j in by_question[q.id] if j.failed]
        judge_failed += [{**q.brief(), "step": "reference_judge", "cause": c} for c in failed]
        best = max(scored, key=lambda x: x[1].reward, default=None)
        if best is not None and best[1].reward >= config.reference_threshold:
            q.reference = best[0].answer or ""
            q.evidence.update(teacher={"episode_id": best[0].episode_id, "turns": best[0].turns,
                                       "judge_reward": best[1].reward, "judge_total": best[1].total,
                                       "rationale": best[1].rationale})
            kept.append(q)
        elif infra or failed:  # no verdict on this question: a failure, not a bad question
            report["failed"].append({**q.brief(), "step": "teacher" if infra else "reference_judge",
                                     "cause": (infra + failed)[0]})
        elif best is None:
            statuses = ", ".join(sorted({str(t.exit_status) for t in episodes[q.id]})) or "no episode"
            report["dropped"].append({**q.brief(), "step": "reference",
                                      "reason": f"the teacher gave no answer ({statuses})"})
        else:
            report["dropped"].append({**q.brief(), "step": "reference", "reason": f"teacher answer judged "
                                      f"{best[1].reward:.2f} < reference_threshold {config.reference_threshold:g}"})
    report["counts"].update(teacher_episodes=sum(len(v) for v in episodes.values()), references_kept=len(kept))
    report["teacher"] = trajectories.id
    check_failures("reference-judge", judge_failed, len(answered), config.max_infra_failure_rate)
    return kept, [candidates.id, trajectories.id]


def _finished(store: ArtifactStore, collect: Any, candidates: Artifact) -> Artifact | None:
    """The teacher run of an earlier call on the same questions (candidates of the same content) with the same
    settings (credentials and the judge aside: the teacher's episodes are not graded), so a re-run after a later
    step failed pays no episode twice."""
    def settings(config: dict) -> dict:
        return {k: v for k, v in config.items() if k not in ("judge", "tasks")}

    def questions(tasks_id: Any) -> Any:
        found = store.find(tasks_id) if isinstance(tasks_id, str) else None
        return found.manifest.get("files", {}).get(TASKS_FILE) if found is not None else None

    wanted = settings(json.loads(json.dumps(redact_secrets(collect.model_dump(mode="json")))))
    done = [a for a in store.all() if a.name == collect.name and a.kind == "trajectories"
            and settings(config := a.manifest.get("producer", {}).get("config") or {}) == wanted
            and questions(config.get("tasks")) == candidates.manifest["files"][TASKS_FILE]]
    return done[-1] if done else None


def calibrate(questions: list[Question], llm: ChatLLM, config: TasksSynthQaConfig, home: Path,
              report: dict) -> list[Question]:
    """Drop the questions a direct answer, with no tools, already answers as the reference does."""
    template = load_template(config.direct_prompt, DIRECT_PROMPT, DIRECT_FIELDS, "direct_prompt")

    def ask(q: Question):
        try:
            return llm.ask(template.format(repo=q.repo, question=q.text))
        except LlmFailed as e:
            return e

    answers = in_threads(ask, questions, config.concurrency)
    failed = [{**q.brief(), "step": "direct_answer", "cause": str(a)}
              for q, a in zip(questions, answers, strict=True) if isinstance(a, LlmFailed)]
    check_failures("direct-answer", failed, len(questions), config.max_infra_failure_rate)
    answered = [(q, a) for q, a in zip(questions, answers, strict=True) if not isinstance(a, LlmFailed)]
    judgements = _judge_many(judge_config(config, home), [{"question": q.text, "answer": a, "reference": q.reference}
                                                           for q, a in answered])
    kept = []
    for (q, answer), j in zip(answered, judgements, strict=True):
        if j.failed:
            failed.append({**q.brief(), "step": "direct_judge", "cause": j.cause or "judge failed"})
        elif j.reward >= config.direct_answer_threshold:
            report["dropped"].append({**q.brief(), "step": "calibrate", "reason": f"too easy: the direct answer "
                                      f"(no tools) judged {j.reward:.2f} >= direct_answer_threshold "
                                      f"{config.direct_answer_threshold:g}"})
        else:
            q.evidence["direct_answer"] = {"judge_reward": j.reward, "judge_total": j.total, "chars": len(answer)}
            kept.append(q)
    report["failed"] += failed
    check_failures("direct-answer judge", [f for f in failed if f["step"] == "direct_judge"], len(answered),
                   config.max_infra_failure_rate)
    return kept


def judge_config(config: TasksSynthQaConfig, home: Path, prompt: Path | None = None) -> JudgeConfig:
    """The `judge` setting; with no endpoint or kind named, llm's endpoint. Cached under home/cache/judge unless
    cache_dir says otherwise (a re-run pays no judgement twice), with `prompt` instead of its own when given."""
    judge = config.judge
    if judge.kind is None and not judge.base_url and not judge.model:
        base_url = config.llm.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        judge = judge.model_copy(update={"kind": "openai", "base_url": base_url, "model": config.llm.model,
                                         "api_key": judge.api_key or config.llm.api_key})
    if judge.cache_dir is None:
        judge = judge.model_copy(update={"cache_dir": home / "cache" / "judge"})
    return judge.model_copy(update={"prompt": prompt}) if prompt is not None else judge


def _judge_many(judge: JudgeConfig, items: list[dict[str, Any]]) -> list:
    from swepost.rewards.judge import make_judge

    with make_judge(judge) as j:
        return j.judge_many(items)


# --- the stage ----------------------------------------------------------------------------------------------------

def run_synth_qa(config: TasksSynthQaConfig, store: ArtifactStore) -> Artifact:
    issues = read_issues(config.issues, {p.repo for p in config.commits})
    pins = resolve_pins(config)
    for path, default, fields, setting in ((config.question_prompt, QUESTION_PROMPT, QUESTION_FIELDS,
                                            "question_prompt"),
                                           (config.direct_prompt, DIRECT_PROMPT, DIRECT_FIELDS, "direct_prompt")):
        load_template(path, default, fields, setting)  # a broken template fails before any request
    from swepost.rewards.judge import load_prompt

    load_prompt(config.reference_judge_prompt or REFERENCE_JUDGE_PROMPT)  # and the judge's, when a file
    if config.judge.prompt is not None:
        load_prompt(config.judge.prompt)
    report: dict[str, Any] = {"counts": {}, "clusters": [], "dropped": [], "failed": []}
    data = config.model_dump(mode="json")
    producer = producer_record("tasks-synth-qa", data, seed=config.seed, issues_sha256=sha256_path(config.issues))
    llm = ChatLLM(config.llm, config.llm_attempts, REMINDER.replace("{qa_types}", ", ".join(config.qa_types)))
    try:
        questions = generate(issues, pins, llm, config, report)
        questions, dropped = near_duplicates(questions, config.dedup_threshold)
        report["dropped"] += dropped
        report["counts"].update(near_duplicates=len(dropped), unique=len(questions))
        if not questions:
            raise WorkFailed(f"tasks-synth-qa: no question left to answer from {len(issues)} issues "
                             f"({len(report['failed'])} failed, {len(report['dropped'])} dropped)")
        repo_words = tuple({w for q in questions for w in re.split(r"[/_.-]+", q.repo) if w})
        labels, info = cluster_texts([q.text for q in questions], config, repo_words)
        for q, label in zip(questions, labels, strict=True):
            q.cluster = str(label)
        questions, dropped = balance(questions, config)
        report["dropped"] += dropped
        report["counts"].update(clusters=info["k"], sampled=len(questions), over_caps=len(dropped))
        report["clustering"] = {k: v for k, v in info.items() if k != "terms"}
        report["clusters"] = [{"id": str(c), "terms": terms, "size": labels.count(c),
                               "sampled": sum(q.cluster == str(c) for q in questions)}
                              for c, terms in enumerate(info["terms"])]
        questions, parents = answer_with_teacher(questions, config, store, producer, report)
        questions = calibrate(questions, llm, config, store.root, report)
    finally:
        llm.close()
    counts = report["counts"]
    counts.update(kept=len(questions), dropped=len(report["dropped"]), failed=len(report["failed"]),
                  dropped_by_step=dict(Counter(d["step"] for d in report["dropped"])),
                  failed_by_step=dict(Counter(f["step"] for f in report["failed"])),
                  qa_types=dict(Counter(q.qa_type for q in questions)))
    for c in report["clusters"]:
        c["kept"] = sum(q.cluster == c["id"] for q in questions)
    from swepost.stages.tasks import row_to_task

    with store.write(config.name, "tasks", producer=producer, parents=parents) as w:
        (w.path / TASKS_FILE).write_text("".join(json.dumps(row_to_task(q.row()).model_dump(mode="json"),
                                                            ensure_ascii=False) + "\n" for q in questions))
        (w.path / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        w.stats.update(tasks=len(questions), issues=len(issues), generated=counts["generated"],
                       dropped=counts["dropped"], failed=counts["failed"], clusters=counts["clusters"])
    return w.artifact


def summary_lines(report: dict, limit: int = 40) -> list[str]:
    """What a user reads after a run: the funnel, then each failure and drop with its reason."""
    c = report["counts"]
    lines = [f"{c.get('issues', 0)} issues -> {c.get('generated', 0)} questions -> {c.get('unique', 0)} unique -> "
             f"{c.get('sampled', 0)} sampled in {c.get('clusters', 0)} clusters -> {c.get('references_kept', 0)} "
             f"with a reference -> {c.get('kept', 0)} kept"]
    rows = [f"failed ({f['step']}) {f.get('id') or 'issue line ' + str(f.get('issue_line'))}: {f['cause']}"
            for f in report["failed"]]
    rows += [f"dropped ({d['step']}) {d.get('id') or 'issue line ' + str(d.get('issue_line'))}: {d['reason']}"
             for d in report["dropped"]]
    return lines + rows[:limit] + ([f"... {len(rows) - limit} more in {REPORT_FILE}"] if len(rows) > limit else [])
