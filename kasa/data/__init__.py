"""Datasets and LightningDataModules, one per benchmark family."""

from . import glue, packaged  # noqa: F401  (register the "glue", "vader" and "sarcasm" sources)
from .classification import ClassificationDataModule, DatasetError, Example, Splits, load_splits

__all__ = ["ClassificationDataModule", "DatasetError", "Example", "Splits", "load_splits"]
