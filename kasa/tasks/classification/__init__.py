"""Sequence classification and regression: VADER sentiment, sarcasm, GLUE and BIG-bench classification tasks.

``data`` (splits, sources, the datamodule), ``glue`` / ``packaged`` (sources), ``metrics`` (GLUE's metrics),
``module`` (the LightningModule) and ``task`` (the family).
"""

from kasa.tasks.classification import files, glue, packaged  # noqa: F401  (register their sources)
from kasa.tasks.classification.task import TASK

__all__ = ["TASK"]
