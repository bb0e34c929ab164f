"""Instruction following: ``task`` (data, prompt formats, the judge evaluator) and ``judge`` (MT-Bench's LLM judge)."""

from kasa.tasks.instruction.task import TASK

__all__ = ["TASK"]
