"""The one place stages register, by the short name recipes use.

A stage is a config model (a StageConfig subclass, light to import) and a run function
`run(config, store) -> Artifact`, both named by import path so nothing heavy loads until a stage runs.
Later stages add one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from swepost.errors import BadInput


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function"

    def config_model(self):
        return _load(self.config)

    def runner(self):
        return _load(self.run)


def _load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


STAGES: dict[str, StageSpec] = {s.name: s for s in [
    StageSpec("tiny-model", "build the embedded tiny Qwen2 model (checkpoint)",
              "swepost.stages.tiny_model:TinyModelConfig", "swepost.stages.tiny_model:run"),
    StageSpec("corpus-index", "index a corpus JSONL for search: BM25 on tantivy (index)",
              "swepost.stages.corpus:CorpusIndexConfig", "swepost.stages.corpus:run_corpus_index"),
    StageSpec("tasks-import", "import SWE-bench-format tasks (tasks)",
              "swepost.stages.tasks:TasksImportConfig", "swepost.stages.tasks:run_import"),
    StageSpec("tasks-validate", "check tasks in sandboxes; drop flaky or broken tests (tasks)",
              "swepost.stages.validate:TasksValidateConfig", "swepost.stages.validate:run_validate"),
    StageSpec("tasks-synth-qa", "code questions from issue texts, answered by a teacher agent, calibrated (tasks)",
              "swepost.stages.synth_qa:TasksSynthQaConfig", "swepost.stages.synth_qa:run_synth_qa"),
    StageSpec("tasks-mine", "bug-fixing tasks mined from git history, executed on Ray (tasks)",
              "swepost.stages.mine:TasksMineConfig", "swepost.stages.mine:run_mine"),
    StageSpec("tasks-select", "keep the tasks earlier attempts found hard, by solve rate (tasks)",
              "swepost.stages.select:TasksSelectConfig", "swepost.stages.select:run_select"),
    StageSpec("collect", "run a policy on tasks in sandboxes; graded trajectories (trajectories)",
              "swepost.stages.collect:CollectConfig", "swepost.stages.collect:run_collect"),
    StageSpec("eval", "resolved rate, pass@k and SWE-bench predictions of a policy (eval)",
              "swepost.stages.evaluate:EvalConfig", "swepost.stages.evaluate:run_eval"),
    StageSpec("filter", "keep the trajectories that pass the rules; SFT data (sft-data)",
              "swepost.stages.filter:FilterConfig", "swepost.stages.filter:run_filter"),
    StageSpec("sft", "SFT on sft-data (checkpoint)", "swepost.stages.sft:SftConfig", "swepost.stages.sft:run_sft"),
    StageSpec("rft", "rejection fine-tuning rounds: collect, filter, sft (checkpoint)",
              "swepost.stages.rft:RftConfig", "swepost.stages.rft:run_rft"),
    StageSpec("rl", "GRPO / DAPO in the environment, rewards from hidden tests or a judge (checkpoint)",
              "swepost.stages.rl:RlConfig", "swepost.stages.rl:run_rl"),
]}


def get_stage(name: str) -> StageSpec:
    if name not in STAGES:
        raise BadInput(f"unknown stage {name!r} (known: {', '.join(STAGES)})")
    return STAGES[name]
