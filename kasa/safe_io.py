"""Reading and writing weights without trusting them: safetensors for what kasa writes, ``weights_only`` pickles.

Every reader fails with one line naming the file (:class:`UnreadableFileError`) on a missing, truncated, tampered
or foreign file; none of them can execute code from the file (safetensors holds only a JSON header and raw tensor
bytes; ``torch.load(weights_only=True)`` refuses every pickle opcode that builds something other than tensors,
numbers, strings and containers).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class UnreadableFileError(ValueError):
    """A weights or config file that is missing, truncated, tampered with or of another format."""


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise UnreadableFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"{path}: not a readable JSON file ({_reason(exc)})") from None
    if not isinstance(obj, dict):
        raise UnreadableFileError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def read_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{path}: no such file")
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # noqa: BLE001 -- SafetensorError, OSError, ...: one line naming the file
        raise UnreadableFileError(f"{path}: not a valid safetensors file ({_reason(exc)})") from None


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                      ) -> None:
    """Contiguous CPU copies of ``tensors`` (shared storage split, as safetensors requires) written to ``path``."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr() if v.numel() else -len(out) - 1
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    save_file(out, str(path), metadata={"format": "pt", **(metadata or {})})


def load_torch(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; anything unreadable is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- UnpicklingError, EOFError, RuntimeError (zip), ...
        raise UnreadableFileError(f"{path}: not a loadable checkpoint ({_reason(exc)}); kasa loads checkpoints "
                                  "with torch.load(weights_only=True)") from None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["UnreadableFileError", "atomic_write_text", "load_torch", "read_json", "read_safetensors", "sha256",
           "write_safetensors"]
