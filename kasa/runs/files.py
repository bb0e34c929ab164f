"""Run-folder files, read and written in one place: the file names, atomic writes, the saved config, and weights read
without trusting them (safetensors for what kasa writes, ``weights_only`` pickles).

Writers are atomic: a file appears under its name only complete (a temporary file in the same folder, fsynced,
renamed), so a crash or a kill never leaves a half-written results.json, config.yaml or checkpoint.

Every reader fails with one line naming the file (:class:`UnreadableFileError`) on a missing, truncated, tampered
or foreign file; none of them can execute code from the file (safetensors holds only a JSON header and raw tensor
bytes; ``torch.load(weights_only=True)`` refuses every pickle opcode that builds something other than tensors,
numbers, strings and containers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from kasa.errors import RunError, UnreadableFileError

RESULTS_FILE = "results.json"  # a finished run: metrics, config, parameter counts (kasa.recipe.summarise)
CONFIG_FILE = "config.yaml"  # written when training starts: an interrupted run still has its config
HYDRA_CONFIG_FILE = ".hydra/config.yaml"  # folders made before kasa wrote config.yaml


def validation_file(epoch: int, step: int | None = None) -> str:
    """Name of a per-validation file (predictions, generations, judgements): ``epoch<E>.jsonl``, or
    ``epoch<E>-step<S>.jsonl`` for runs that validate several times an epoch (``trainer.val_check_interval``), so
    no validation overwrites another's."""
    return f"epoch{epoch}.jsonl" if step is None else f"epoch{epoch}-step{step}.jsonl"


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






# -- the run's own config ------------------------------------------------------------------------------
def plain_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """A config as a resolved plain dict, without Hydra's own ``hydra`` node."""
    if isinstance(cfg, dict):
        return cfg
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def saved_config(run_dir: str | Path) -> tuple[dict[str, Any], str] | None:
    """The resolved config a run folder was trained with, and the file it came from.

    ``results.json`` (finished), else ``config.yaml`` (written at the start), else Hydra's ``.hydra/config.yaml``
    (folders made before kasa wrote ``config.yaml``).
    """
    run_dir = Path(run_dir)
    res = read_json_or_none(run_dir / RESULTS_FILE)
    if res and isinstance(res.get("config"), dict):
        return res["config"], RESULTS_FILE
    for name in (CONFIG_FILE, HYDRA_CONFIG_FILE):
        path = run_dir / name
        if path.is_file():
            try:
                return plain_config(OmegaConf.load(path)), name
            except Exception as exc:  # noqa: BLE001 -- any unreadable file is named, not a traceback
                raise RunError(f"{path} does not parse as a config ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:200]})") from None
    return None


# -- small file helpers -----------------------------------------------------------------------------------
def read_json_or_none(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[Any]:
    """A file that appears under ``path`` only complete: written to a temporary file in the same folder,
    fsynced, then renamed over ``path`` (a rename within one filesystem is atomic)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut once the folder is synced
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``text`` under ``path``, atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)


def write_jsonl(path: str | Path, rows: Any) -> None:
    """One JSON object per line under ``path`` (folders created), atomically: predictions and generations."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON under ``path``, atomically (dataclasses as dicts, anything else as its str)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)
