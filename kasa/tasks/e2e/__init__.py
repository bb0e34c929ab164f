"""E2E NLG (the paper's GPT-2 table): ``data`` (the release's loaders), ``metrics`` (the five official metrics) and
``task`` (the family)."""

from kasa.tasks.e2e.task import TASK

__all__ = ["TASK"]
