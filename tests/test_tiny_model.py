"""Real (no mocks) checks of the tiny offline test model built by swepost.train.tiny_model."""

import hashlib
import os
import pathlib

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from swepost.train.tiny_model import build_tiny_model  # noqa: E402

TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a shell command.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
}
TOOL_CHAT = [
    {"role": "user", "content": "Run the tests."},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "bash", "arguments": {"command": "pytest -q"}}}
        ],
    },
    {"role": "tool", "name": "bash", "content": "3 passed in 0.01s"},
    {"role": "assistant", "content": "All tests pass."},
]


def _hashes(folder: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    stats = build_tiny_model(out)
    return out, stats


@pytest.fixture(scope="module")
def tok(model_dir):
    return AutoTokenizer.from_pretrained(model_dir[0])


def test_reload_and_stats(model_dir, tok):
    out, stats = model_dir
    model = AutoModelForCausalLM.from_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 1_000_000
    assert stats == {
        "parameters": n_params,
        "vocab_size": len(tok),
        "eos_token": "<|im_end|>",
        "architecture": "Qwen2ForCausalLM",
    }
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.eos_token_id == eos_id == model.generation_config.eos_token_id
    assert model.config.vocab_size == len(tok)
    # Tool markers are single (non-special) tokens.
    for marker in ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]:
        assert len(tok.encode(marker, add_special_tokens=False)) == 1
        assert marker not in tok.all_special_tokens


def test_deterministic_per_seed(tmp_path, model_dir):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_tiny_model(a, seed=0)
    build_tiny_model(b, seed=0)
    build_tiny_model(c, seed=1)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= ha.keys()
    assert ha == hb == _hashes(model_dir[0])
    assert ha["model.safetensors"] != hc["model.safetensors"]


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n    return x  # ok\n",
        "café naïve ✓ 日本語 🚀 \t tabs  and  spaces",
        '{"name": "bash", "arguments": {"command": "pytest -q"}}',
        "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n",
        "",
    ],
)
def test_roundtrip(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_trl_recognises_template(tok):
    from trl.chat_template_utils import (
        add_response_schema,
        get_training_chat_template,
        qwen2_5_chat_template,
        supports_tool_calling,
    )

    assert tok.chat_template == qwen2_5_chat_template  # survives save/reload byte for byte
    assert supports_tool_calling(tok)
    training_template = get_training_chat_template(tok)
    assert "{% generation %}" in training_template

    rendered = tok.apply_chat_template(TOOL_CHAT, tools=[TOOL_SCHEMA], tokenize=False)
    assert '<tool_call>\n{"name": "bash", "arguments": {"command": "pytest -q"}}\n</tool_call>' in rendered

    enc = tok.apply_chat_template(
        TOOL_CHAT,
        tools=[TOOL_SCHEMA],
        return_assistant_tokens_mask=True,
        return_dict=True,
        chat_template=training_template,
    )
    mask = enc["assistant_masks"]
    assert 0 < sum(mask) < len(mask)
    assistant_text = tok.decode([t for t, m in zip(enc["input_ids"], mask, strict=True) if m])
    assert "All tests pass." in assistant_text and "Run the tests." not in assistant_text

    # GRPO tool use needs a response parser; set it on a fresh copy so the shared fixture stays untouched.
    parser_tok = add_response_schema(AutoTokenizer.from_pretrained(tok.name_or_path))
    prefix = parser_tok.apply_chat_template(TOOL_CHAT[:1], tokenize=False, add_generation_prompt=True)
    parsed = parser_tok.parse_response(
        '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call><|im_end|>', prefix=prefix
    )
    assert parsed["tool_calls"][0]["function"] == {"name": "bash", "arguments": {"command": "ls"}}


def test_training_steps_reduce_loss(model_dir, tok):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir[0])
    model.train()
    text = tok.apply_chat_template(TOOL_CHAT, tokenize=False)
    batch = tok([text], return_tensors="pt")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=batch["input_ids"]).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged


def test_the_readme_figures_are_those_of_swepost_model_tiny(swepost, repo_root):
    """The README's parameter count and vocabulary size are what a user's `swepost model tiny` builds."""
    import json
    import re

    stats = json.loads(swepost("model", "tiny", "--json", check=0).stdout)["stats"]
    section = (repo_root / "README.md").read_text().split("## The embedded tiny model", 1)[1].split("\n## ", 1)[0]
    params = re.search(r"([\d,]+) parameters", section).group(1)
    vocab = re.search(r"([\d,]+)-token vocabulary", section).group(1)
    assert (int(params.replace(",", "")), int(vocab.replace(",", ""))) == (stats["parameters"], stats["vocab_size"])
