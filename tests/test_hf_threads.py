"""collect and eval build one `hf` policy per worker thread: building several at once, in a fresh interpreter
where transformers has resolved nothing yet, must work (it failed with "cannot import name
'AutoModelForCausalLM'" and "Cannot copy out of meta tensor" before the loads were serialised)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

RACE = """
import json, sys, threading
from swepost.policies.hf import HFPolicy
errors, barrier = [], threading.Barrier(6)
def build():
    barrier.wait()
    try:
        HFPolicy(model=sys.argv[1])
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=build) for _ in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(errors))
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from swepost.train.tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_model(folder, vocab_size=512)
    return folder


def test_six_threads_build_hf_policies_at_once(model_dir):
    r = subprocess.run([sys.executable, "-c", RACE, str(model_dir)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
