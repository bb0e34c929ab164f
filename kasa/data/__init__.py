"""Datasets and LightningDataModules, one per benchmark family."""

from .classification import ClassificationDataModule, DatasetError, Example, Splits, load_splits

__all__ = ["ClassificationDataModule", "DatasetError", "Example", "Splits", "load_splits"]
