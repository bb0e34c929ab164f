"""Backbones and their task heads (see :mod:`kasa.models.loader`)."""

from kasa.errors import ModelLoadError
from kasa.models.loader import load_model, load_tokenizer, resolve_path

__all__ = ["ModelLoadError", "load_model", "load_tokenizer", "resolve_path"]
