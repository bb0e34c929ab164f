"""Early stopping on the monitored metric (``benchmark.early_stopping``): Lightning's ``EarlyStopping`` callback.

Off by default (``patience: null``); a section left at that default is not part of the config hash
(:func:`kasa.runs.hashing.drop_neutral`), so runs made before the section existed keep their folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and v == v and v >= 0


@dataclass
class EarlyStoppingConfig:
    """``benchmark.early_stopping``: its keys and defaults (a structured config, :mod:`kasa.config.schemas`) and
    its validation (:meth:`problem`)."""

    patience: int | None = None  # validation epochs without improvement before stopping; None: never stop early
    min_delta: float = 0.0  # an improvement is a rise of the monitored metric by more than this

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        rules = (("patience", "null (off) or an integer >= 1",
                  lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)),
                 ("min_delta", "a number >= 0", _number))
        from kasa.config.checks import first_problem

        return first_problem(self, "early_stopping", rules)

    @property
    def enabled(self) -> bool:
        return self.patience is not None

    def callback(self, monitor: str) -> Any:
        """Lightning's ``EarlyStopping`` on ``val/<monitor>`` (higher is better, as the best checkpoint's), checked
        after every validation epoch."""
        from lightning.pytorch.callbacks import EarlyStopping

        return EarlyStopping(monitor=f"val/{monitor}", mode="max", patience=self.patience, min_delta=self.min_delta)


def stopping_record(callback: Any, settings: EarlyStoppingConfig) -> dict[str, Any]:
    """``results.json``'s ``early_stopping``: the settings, the 0-based epoch whose validation stopped training
    (Lightning's ``stopped_epoch``; None: it ran to ``max_epochs``) and why (Lightning's ``stopping_reason``:
    ``patience_exhausted``, ``non_finite_metric``; None when it did not stop)."""
    reason = getattr(callback, "stopping_reason", None)  # Lightning >= 2.5
    stopped = (reason.value != 0) if reason is not None else bool(callback.stopped_epoch)
    return {"patience": settings.patience, "min_delta": settings.min_delta,
            "stopped_epoch": int(callback.stopped_epoch) if stopped else None,
            "reason": reason.name.lower() if stopped and reason is not None else None}
