"""Issue 15's SFT -> RFT run on the tiny model with the local index, through a recipe: the bundled corpus is
indexed, the bundled questions' yes/no comparisons are imported as search tasks, the tiny model is fine-tuned on
answers in `<answer>` tags, and RFT then samples *from the tiny model itself* (hf policy, temperature 1) in the
search environment over the index, keeps what exact match verifies (one trajectory per question, the longest), and
fine-tunes on it. A 200k-parameter model can learn a yes/no answer's form in a few steps, not the 24 questions'
facts: the subset makes the loop's successes real rather than scripted."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.slow


def test_sft_then_rft_samples_the_tiny_model_in_the_search_environment(repo_root, store, tmp_path):
    from swepost.recipes import load_recipe, run

    rows = [json.loads(line) for line in (repo_root / "data" / "pydocs_questions.jsonl").read_text().splitlines()]
    yes_no = [r for r in rows if r["golden_answers"][0] in ("yes", "no")]
    assert len(yes_no) >= 4
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in yes_no))
    # the SFT data: one reply per question, its gold answer in tags (the form text_reply reads)
    (tmp_path / "answers.jsonl").write_text("".join(
        json.dumps({"instance_id": r["id"], "turns": [f"<answer>{r['golden_answers'][0]}</answer>"]}) + "\n"
        for r in yes_no))
    (tmp_path / "recipe.yaml").write_text(f"""
name: ir
model: ${{stages.model}}
stages:
  - name: model
    stage: tiny-model
  - name: corpus
    stage: corpus-index
    config: {{corpus: {repo_root / 'data' / 'pydocs_corpus.jsonl'}}}
  - name: tasks
    stage: tasks-import
    config: {{source: questions.jsonl, kind: search}}
  - name: answers
    stage: collect
    config:
      tasks: ${{stages.tasks}}
      index: ${{stages.corpus}}
      policy: scripted
      policy_args: {{path: answers.jsonl, per_task: true}}
  - name: data
    stage: filter
    config: {{trajectories: "${{stages.answers}}"}}
  - name: sft
    stage: sft
    config: {{data: "${{stages.data}}", model: "${{model}}", max_steps: 60, learning_rate: 1.0e-2, max_length: 4096}}
  - name: rft
    stage: rft
    config:
      tasks: ${{stages.tasks}}
      model: ${{stages.sft}}
      index: ${{stages.corpus}}
      rounds: 2
      samples: 4
      policy: hf
      policy_args: {{max_new_tokens: 24, temperature: 0.6}}
      concurrency: 2
      limits: {{max_turns: 1}}
      filter: {{max_per_task: 1, prefer: longest}}
      sft: {{max_steps: 4, learning_rate: 1.0e-3, max_length: 4096}}
""")
    run(load_recipe(tmp_path / "recipe.yaml"), store)
    print(f"the tiny model's RFT samples: see {store.root}", file=sys.stderr)

    index = store.resolve("ir-corpus")
    assert index.kind == "index" and index.stats["passages"] > 3000
    sampled = [json.loads(line) for line in (store.resolve("ir-rft-r1-trajectories").path /
                                             "trajectories.jsonl").read_text().splitlines()]
    assert len(sampled) == 4 * len(yes_no)
    # the tiny model's own replies, graded by exact match against the gold answers over the local index
    assert all(t["policy"]["name"] == "hf" and t["environment"] == "search" for t in sampled)
    right = [t for t in sampled if t["resolved"] == "RESOLVED_FULL"]
    assert right, [t["messages"][2]["content"] for t in sampled]
    for t in right:
        assert t["evidence"]["em"] == 1.0 and t["answer"].strip().lower() in ("yes", "no")
        assert "<answer>" in t["messages"][2]["content"]  # its own words, not a script's
    # RFT kept one verified trajectory per solved question and fine-tuned on them
    data = store.resolve("ir-rft-r1-data")
    kept = [json.loads(line) for line in (data.path / "train.jsonl").read_text().splitlines()]
    assert len(kept) == len({t["instance_id"] for t in right})
    ckpt = store.resolve("ir-rft-r1")  # the last round that trained
    assert ckpt.kind == "checkpoint"
    # lineage: the rounds' trajectories name the index they searched
    assert index.id in store.resolve("ir-rft-r1-trajectories").parents
