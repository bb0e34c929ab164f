"""``kasa-export RUN_DIR --format {peft,lora,merged} --out DIR``: a trained adapter for use outside kasa.

- ``peft``: ``adapter_config.json`` + ``adapter_model.safetensors`` that ``peft.PeftModel.from_pretrained(base, DIR)``
  loads on the ORIGINAL base model (LoRA, DoRA, KaSA, AdaLoRA, VeRA; PiSSA and CorDA in PEFT's converted form);
- ``lora``: the exact plain LoRA on the original weights (``lora_A`` / ``lora_B`` only, scaling folded, ``lora_alpha
  = r``), as vLLM and TGI serve it, for every method whose update is low rank;
- ``merged``: the merged model, ``save_pretrained`` in safetensors, with its tokenizer (and head), loadable with
  ``AutoModelFor...from_pretrained`` alone.

Which method has which format, how kasa's tensor names map onto PEFT's and why a pair is refused:
:mod:`kasa.methods.export`. Every folder also gets ``kasa_export.json`` (method, format, source run and
checkpoint, and the SHA-256 of every file), which :func:`verify_export` checks.

Python: ``export_run(run_dir, "peft", out)`` from a run folder, or ``export_model(model, method, "lora", out,
base_model="...")`` for a model adapted in your own loop.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from kasa.errors import (
    ExportError,  # noqa: F401  (re-exported)
    UnreadableFileError,
)
from kasa.methods.export import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_config_json,
    check_format,
    lora_adapter,
    peft_adapter,
)
from kasa.runs.files import atomic_write_text, read_json, read_safetensors, sha256, write_safetensors

MANIFEST = "kasa_export.json"


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise ExportError(f"--out {out} exists and is not empty; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))


def _finish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    tmp.replace(out)  # the folder appears whole or not at all


def export_model(model: nn.Module, method: Any, fmt: str, out: str | Path, *, base_model: str | None = None,
                 revision: str | None = None, task_type: str | None = None, tokenizer: Any = None,
                 overwrite: bool = False, source: dict[str, Any] | None = None, dequantize: bool = False) -> Path:
    """Write ``model`` (adapted by ``method`` and trained) to ``out`` in format ``fmt``; returns ``out``.

    ``base_model``: what ``adapter_config.json`` names as ``base_model_name_or_path`` (the ORIGINAL weights).
    ``task_type``: PEFT's (``SEQ_CLS``, ``CAUSAL_LM``; None: a generic ``PeftModel``). ``tokenizer``: saved beside a
    merged model. ``merged`` merges ``model`` in place (irreversibly: the adapter layers are unloaded); on a quantised
    base it refuses unless ``dequantize`` (the dense dequantised base plus the adapter, in the base's compute dtype).
    """
    check_format(method.name, fmt, method.config)
    out = Path(out)
    tmp = _prepare_out(out, overwrite)
    try:
        if fmt == "merged":
            method.merge_and_unload(model, safe=True, dequantize=dequantize)
            if dequantize:  # the layers no adapter wrapped are still quantised: a plain checkpoint holds dense ones
                from kasa.models.quantize import dequantize_model

                dequantize_model(model)
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        else:
            adapter = peft_adapter(method, model) if fmt == "peft" else lora_adapter(method, model)
            adapter.config.update(base_model_name_or_path=base_model, revision=revision, task_type=task_type)
            write_safetensors(tmp / ADAPTER_WEIGHTS, adapter.tensors)
            atomic_write_text(tmp / ADAPTER_CONFIG, adapter_config_json(adapter.config))
        _write_manifest(tmp, {"format": fmt, "method": method.name, "base_model": base_model, **(source or {})})
        _finish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_manifest(folder: Path, info: dict[str, Any]) -> None:
    import json

    from kasa import __version__

    files = {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    atomic_write_text(folder / MANIFEST, json.dumps({**info, "kasa": __version__, "sha256": files}, indent=2,
                                                     default=str) + "\n")


def verify_export(folder: str | Path) -> dict[str, Any]:
    """Check an export folder against its ``kasa_export.json`` and parse its weights; returns the manifest.

    A changed, missing, truncated or foreign file fails with one line naming it (:class:`UnreadableFileError`).
    """
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    for name, digest in (manifest.get("sha256") or {}).items():
        path = folder / name
        if not path.is_file():
            raise UnreadableFileError(f"{path}: missing (listed in {folder / MANIFEST})")
        if sha256(path) != digest:
            raise UnreadableFileError(f"{path}: its SHA-256 differs from {folder / MANIFEST} (changed after export)")
    for path in sorted(folder.glob("*.safetensors")):
        read_safetensors(path)
    return manifest


def export_run(run_dir: str | Path, fmt: str, out: str | Path, checkpoint: str | None = None,
               overwrite: bool = False, dequantize: bool = False) -> Path:
    """Export a finished or interrupted run folder (its config and ``checkpoints/``) as ``fmt`` into ``out``.

    ``checkpoint``: ``best`` | ``last`` | None (the one ``benchmark.selection`` reports, best by default). The
    format is checked against the method before any model loads.
    """
    from kasa.runs.checkpoints import default_checkpoint, find_checkpoint
    from kasa.runs.load import load_run, run_config

    cfg, cfg_file = run_config(run_dir)
    check_format(cfg.method.name, fmt, cfg.method)
    quant = cfg.model.get("quantization")
    if fmt == "merged" and quant and not dequantize:
        raise ExportError(f"the run trained on a model.quantization={quant} base: --format merged needs --dequantize "
                          "(the merged model is then the dequantised base plus the adapter, dense)")
    which = checkpoint or default_checkpoint(cfg)
    find_checkpoint(run_dir, which)  # a missing checkpoint fails before the model loads
    run = load_run(run_dir, which, cfg=cfg, keep_removed=fmt == "lora")
    return export_loaded_run(run, fmt, out, config_file=cfg_file, overwrite=overwrite, dequantize=dequantize)


def export_loaded_run(run: Any, fmt: str, out: str | Path, *, config_file: str | None = None,
                      overwrite: bool = False, dequantize: bool = False) -> Path:
    """:func:`export_model` of a run already in memory (a :class:`~kasa.runs.load.LoadedRun`); the manifest names
    the run folder and checkpoint. ``merged`` merges ``run.model`` in place."""
    from kasa.models import resolve_path
    from kasa.tasks import get_task

    cfg, m = run.cfg, run.cfg.model
    source = {"run_dir": str(Path(run.run_dir).resolve()), "config_file": config_file, "checkpoint": run.checkpoint,
              "checkpoint_file": str(run.checkpoint_path.name), "epoch": run.epoch}
    return export_model(run.model, run.method, fmt, out, base_model=resolve_path(m.name_or_path),
                        revision=m.get("revision"), task_type=get_task(cfg.benchmark.get("family")).peft_task_type,
                        tokenizer=run.tokenizer, overwrite=overwrite, source=source, dequantize=dequantize)

