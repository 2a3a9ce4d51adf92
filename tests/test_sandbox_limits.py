"""Sandbox limits per task and per stage: defaults <- task `env.limits` <- stage `sandbox_limits`, merged in
one place (task_sandbox.limits_for) and enforced by a real docker container."""

from __future__ import annotations

import pytest

from swepost.config import validate
from swepost.errors import BadInput
from swepost.records import Task
from swepost.sandbox.base import Limits
from swepost.sandbox.task_sandbox import limits_for, open_task_sandbox
from swepost.stages.collect import CollectConfig

MEMORY = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null"


def task(image: str | None = None, **limits) -> Task:
    return Task.model_validate({"instance_id": "t-1", "problem_statement": "x",
                                "env": {"image": image, "workdir": "/testbed", "limits": limits or None}})


def memory_limit(box) -> int:
    return int(box.run(MEMORY).output.split()[0])


def test_task_memory_reaches_the_container_cgroup_and_a_stage_override_wins(base_image):
    """Defence: the task's memory_mb is the container's cgroup limit (not the 2048 MiB default), and a
    stage's sandbox_limits beats the task's."""
    t = task(base_image, memory_mb=300, pids=100)
    with open_task_sandbox(t, backend="docker") as box:
        assert memory_limit(box) == 300 << 20
    with open_task_sandbox(t, backend="docker", limits={"memory_mb": 400}) as box:
        assert memory_limit(box) == 400 << 20
        assert box.limits.pids == 100  # what the stage does not set stays the task's


def test_merge_order_and_defaults():
    assert limits_for(task()) == Limits()
    t = task(cpus=2, timeout_s=30, network_allow=["10.0.0.5:3128"])
    merged = limits_for(t, CollectConfig(tasks="t", sandbox_limits={"timeout_s": 60}).sandbox_limits)
    assert (merged.cpus, merged.timeout_s, merged.network_allow, merged.memory_mb) == (2, 60, ["10.0.0.5:3128"], 2048)
    assert limits_for(t.model_copy(update={"env": t.env.model_copy(update={"network": True})})).network is True


def test_unknown_or_bad_keys_name_the_field():
    with pytest.raises(ValueError, match="memroy_mb"):
        task(memroy_mb=512)
    with pytest.raises(BadInput, match=r"sandbox_limits\.memroy_mb"):
        limits_for(task(), {"memroy_mb": 512})
    with pytest.raises(BadInput, match=r"sandbox_limits\.pids"):
        validate(CollectConfig, {"tasks": "t", "sandbox_limits": {"pids": 0}})
    with pytest.raises(ValueError, match="network_allow"):
        task(network_allow=["proxy.internal:3128"])
