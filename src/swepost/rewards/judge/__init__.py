"""An LLM judge of answers to code questions (SWE-QA-Pro style): five axes 1-10, the eval score (their sum) and
the RL reward (weighted, in [0, 1]), failures that are never scores, a disk cache, and a lexical stand-in.

    judge = make_judge({"base_url": "http://localhost:8000/v1", "model": "Qwen/Qwen3-32B",
                        "cache_dir": home / "cache" / "judge"})
    judgements = judge.judge_many([{"question": q, "answer": a, "reference": ref, "rubric": points}, ...])
    group = group_rewards(judgements, on_failure="group_mean")   # RL: group.rewards, group.judge_failed
    summarize(judgements)                                        # eval: per-axis means, total, counts

Files: scores.py (axes, Judgement, reply parsing, group_rewards, summarize), base.py (items, capping, judge_many),
chat.py (OpenAIJudge), lexical.py (LexicalJudge), cache.py (JudgeCache), prompt.py (the prompt file),
config.py (JudgeConfig, make_judge). The default prompt is rewards/prompts/judge.md.
"""

from swepost.rewards.judge.base import DEFAULT_MAX_ANSWER_CHARS, Judge, JudgeItem, cap_answer
from swepost.rewards.judge.cache import JudgeCache, judgement_key
from swepost.rewards.judge.chat import OpenAIJudge
from swepost.rewards.judge.config import JudgeConfig, make_judge
from swepost.rewards.judge.lexical import LexicalJudge
from swepost.rewards.judge.prompt import DEFAULT_PROMPT, JudgePrompt, load_prompt
from swepost.rewards.judge.scores import (
    AXES,
    DEFAULT_WEIGHTS,
    GroupRewards,
    Judgement,
    MalformedReply,
    group_rewards,
    parse_reply,
    summarize,
)

__all__ = [
    "AXES", "DEFAULT_MAX_ANSWER_CHARS", "DEFAULT_PROMPT", "DEFAULT_WEIGHTS", "GroupRewards", "Judge", "JudgeCache",
    "JudgeConfig", "JudgeItem", "JudgePrompt", "Judgement", "LexicalJudge", "MalformedReply", "OpenAIJudge",
    "cap_answer", "group_rewards", "judgement_key", "load_prompt", "make_judge", "parse_reply", "summarize",
]
