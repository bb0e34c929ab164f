"""Datasets and LightningDataModules, one per benchmark family."""

from . import glue  # noqa: F401  (registers the "glue" source)
from .classification import ClassificationDataModule, DatasetError, Example, Splits, load_splits

__all__ = ["ClassificationDataModule", "DatasetError", "Example", "Splits", "load_splits"]
