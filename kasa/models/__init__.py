"""Backbones and their task heads (see :mod:`kasa.models.loader`)."""

from .loader import ModelLoadError, load_model, load_tokenizer, resolve_path

__all__ = ["ModelLoadError", "load_model", "load_tokenizer", "resolve_path"]
