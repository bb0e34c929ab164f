"""Spectra of KaSA (and any LoRA-family) layers, and a Lightning callback that logs them during training.

For a wrapped layer (``lora_A`` = dV^T, r x in; ``lora_B`` = dU, out x r; KaSA's ``lora_diag`` = dsigma):

- :func:`learned_singular_values`: dsigma per layer and module;
- :func:`orthonormality_drift`: ``||B^T B - I_r||_F`` (dU) and ``||A A^T - I_r||_F`` (dV), how far the
  adapter's singular vectors are from the orthonormal frame that L3 pulls them towards;
- :func:`weight_spectra`: singular values of the original W, the truncated base W_world and W_world + dW.
  The base layer holds W_world after ``method.apply`` (KaSA truncates in place) and W is rebuilt as
  ``W_world + kasa_removed_us @ kasa_removed_vh`` (``keep_removed=true``), or its spectrum as W_world's kept
  singular values plus the removed ones (``kasa_removed_s``, the default); a merged layer is unmerged
  first in thought (``W_world = base - dW``).

:class:`SpectraCallback` writes ``<dir>/epoch_NNN.npz`` (dsigma per module) and appends to
``<dir>/spectra.json`` (dsigma and drift per module, epoch, step) every N epochs, and logs a heatmap image
when a W&B logger is attached. ``analysis.spectra=true`` in the run config turns it on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` for every module with ``lora_A`` and ``lora_B`` (KaSA, LoRA, PiSSA, MiLoRA, ...)."""
    return {n: m for n, m in model.named_modules()
            if isinstance(getattr(m, "lora_A", None), torch.Tensor) and isinstance(getattr(m, "lora_B", None), torch.Tensor)}


@torch.no_grad()
def learned_singular_values(model: nn.Module) -> dict[str, np.ndarray]:
    """dsigma (``lora_diag``) of every KaSA layer; layers without one (LoRA, singular_values=off) are left out."""
    return {n: m.lora_diag.detach().float().cpu().numpy() for n, m in adapter_layers(model).items()
            if isinstance(getattr(m, "lora_diag", None), torch.Tensor)}


@torch.no_grad()
def orthonormality_drift(model: nn.Module) -> dict[str, dict[str, float]]:
    """``{name: {"dU": ||B^T B - I||_F, "dV": ||A A^T - I||_F}}`` (L3's terms, unweighted, per layer)."""
    out = {}
    for n, m in adapter_layers(model).items():
        A, B = m.lora_A.detach().double(), m.lora_B.detach().double()
        eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        out[n] = {"dU": float(torch.linalg.norm(B.T @ B - eye)), "dV": float(torch.linalg.norm(A @ A.T - eye))}
    return out


def _base_weight(m: nn.Module) -> torch.Tensor:
    """The base layer's weight as (out x in) float64 (GPT-2's Conv1D stores in x out)."""
    from ..methods.base import get_weight

    return get_weight(m.base_layer).detach().double()


@torch.no_grad()
def weight_spectra(model: nn.Module) -> dict[str, dict[str, np.ndarray]]:
    """``{name: {"W": s, "W_world": s, "W_plus_dW": s}}``: singular values (descending) of each adapted weight.

    ``W_world`` is the truncated base (KaSA's ``W - U_t S_t V_t^T``; equal to W for methods that do not
    truncate), ``W_plus_dW`` the weight the model computes with (W_world + dW).
    """
    out = {}
    for n, m in adapter_layers(model).items():
        base = _base_weight(m)
        dw = m.delta_weight().double()
        world = base - dw if getattr(m, "merged", False) else base
        us, vh = getattr(m, "kasa_removed_us", None), getattr(m, "kasa_removed_vh", None)
        removed_s = getattr(m, "kasa_removed_s", None)
        sv = lambda x: torch.linalg.svdvals(x).cpu().numpy()  # noqa: E731
        s_world = sv(world)
        if us is not None and us.numel():
            s_w = sv(world + us.double() @ vh.double())
        elif removed_s is not None and removed_s.numel():
            # W_world holds exactly W's kept triplets, so W's spectrum is those plus the removed values
            kept = s_world[: s_world.size - removed_s.numel()]
            s_w = np.sort(np.concatenate([kept, removed_s.double().cpu().numpy()]))[::-1].copy()
        else:
            s_w = s_world
        out[n] = {"W": s_w, "W_world": s_world, "W_plus_dW": sv(world + dw)}
    return out


_LAYER = re.compile(r"\.(\d+)\.")


def short_name(name: str) -> str:
    """``model.roberta.encoder.layer.3.attention.self.query`` -> ``L3.query`` (heatmap row labels)."""
    m = _LAYER.search("." + name + ".")
    return f"L{m.group(1)}.{name.rsplit('.', 1)[-1]}" if m else name


def heatmap_matrix(dsigma: dict[str, np.ndarray], absolute: bool = True) -> tuple[list[str], np.ndarray]:
    """Rows = adapted modules in model order, columns = singular-value index; ``|dsigma|`` by default.

    Ranks that differ between modules are padded with NaN.
    """
    names = list(dsigma)
    width = max((len(v) for v in dsigma.values()), default=0)
    mat = np.full((len(names), width), np.nan)
    for i, n in enumerate(names):
        v = np.asarray(dsigma[n], dtype=float)
        mat[i, :len(v)] = np.abs(v) if absolute else v
    return [short_name(n) for n in names], mat


def plot_heatmap(dsigma: dict[str, np.ndarray], title: str = "learned singular values |dsigma|", ax=None):
    """A matplotlib heatmap of :func:`heatmap_matrix` (returns the figure)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels, mat = heatmap_matrix(dsigma)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3.0, 0.35 * mat.shape[1] + 2), max(2.5, 0.25 * len(labels) + 1)))
    else:
        fig = ax.figure
    im = ax.imshow(mat, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("singular value index i")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def load_spectra(spectra_dir: str | Path) -> list[dict[str, Any]]:
    """The records :class:`SpectraCallback` appended to ``<dir>/spectra.json`` (oldest first)."""
    path = Path(spectra_dir) / "spectra.json"
    return json.loads(path.read_text()) if path.exists() else []


try:
    import lightning as L

    _Callback = L.Callback
except ImportError:  # analysis functions stay usable without Lightning
    _Callback = object


class SpectraCallback(_Callback):
    """Records dsigma and the orthonormality drift every ``every_n_epochs`` epochs (and before training).

    Files: ``<out_dir>/epoch_NNN.npz`` (dsigma per module, keys are module names) and ``spectra.json``
    (a list of ``{"epoch", "step", "dsigma": {name: [...]}, "drift": {name: {"dU", "dV"}}}``). Epoch -1 is
    the state before the first step. With a W&B logger, a heatmap image is logged as ``spectra/dsigma``.
    """

    def __init__(self, out_dir: str | Path, every_n_epochs: int = 1):
        self.out_dir = Path(out_dir)
        self.every_n_epochs = max(1, int(every_n_epochs))

    def _model(self, pl_module) -> nn.Module:
        return getattr(pl_module, "model", pl_module)

    def record(self, model: nn.Module, epoch: int, step: int, loggers: list | None = None) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        dsigma = learned_singular_values(model)
        rec = {"epoch": epoch, "step": step, "dsigma": {k: v.tolist() for k, v in dsigma.items()},
               "drift": orthonormality_drift(model)}
        np.savez(self.out_dir / f"epoch_{epoch:03d}.npz" if epoch >= 0 else self.out_dir / "init.npz", **dsigma)
        records = [r for r in load_spectra(self.out_dir) if r["epoch"] != epoch]  # a resumed epoch replaces
        (self.out_dir / "spectra.json").write_text(json.dumps(records + [rec]))
        self._log_wandb(dsigma, rec, epoch, step, loggers or [])
        return rec

    def _log_wandb(self, dsigma, rec, epoch: int, step: int, loggers: list) -> None:
        wb = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
        if not wb or not dsigma:
            return
        try:  # a logging image must never cost a run
            import matplotlib.pyplot as plt
            import wandb

            fig = plot_heatmap(dsigma, title=f"|dsigma|, epoch {epoch}")
            drift = rec["drift"]
            wb[0].experiment.log({"spectra/dsigma": wandb.Image(fig),
                                  "spectra/drift_dU_mean": float(np.mean([d["dU"] for d in drift.values()])),
                                  "spectra/drift_dV_mean": float(np.mean([d["dV"] for d in drift.values()])),
                                  "trainer/global_step": step})
            plt.close(fig)
        except Exception as exc:  # noqa: BLE001
            print(f"[kasa] spectra W&B image skipped: {exc}")

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0 and not trainer.sanity_checking:
            self.record(self._model(pl_module), -1, 0, trainer.loggers)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs == 0 or last:
            self.record(self._model(pl_module), epoch, trainer.global_step, trainer.loggers)


def load_run_model(run_dir: str | Path, checkpoint: str = "last") -> tuple[nn.Module, Any]:
    """Rebuild a run's model from its folder: ``(model, method)``, the method applied (KaSA: the base truncated as
    in training) and the trained adapter of the ``last`` or ``best`` checkpoint loaded (:func:`kasa.runs_io.load_run`)."""
    from ..runs_io import load_run

    run = load_run(run_dir, checkpoint)
    return run.model, run.method
