"""The one place that touches TRL's private trainer attributes; everything else logs through these functions.

Written against TRL 1.16.0 (`trl/trainer/grpo_trainer.py`): GRPOTrainer keeps the values of the current logging
step in `trainer._metrics[mode][name]` (lists, averaged by `GRPOTrainer.log` and then cleared) and offers
`trainer._log_completion_extra(column, values)` for extra columns of the completions table (`log_completions`).
Neither has a public API yet; when TRL changes them, only this module changes.
"""

from __future__ import annotations


def log_metric(trainer, name: str, value: float, mode: str = "train") -> None:
    """Add one value of `name` to the current logging step; TRL logs the mean of a step's values."""
    trainer._metrics[mode][name].append(value)


def logged_metrics(trainer, mode: str = "train") -> dict[str, list[float]]:
    """The values of every metric in the current logging step (not yet averaged and logged)."""
    return trainer._metrics[mode]


def log_completion_column(trainer, column: str, values: list) -> None:
    """An extra column of TRL's completions table, one value per completion of this generation batch."""
    trainer._log_completion_extra(column, values)
