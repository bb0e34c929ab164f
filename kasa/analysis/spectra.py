"""Spectra of KaSA (and any LoRA-family) layers: what the adapter learned and what the truncation cut.

For a wrapped layer (``lora_A`` = dV^T, r x in; ``lora_B`` = dU, out x r; KaSA's ``lora_diag`` = dsigma):

- :func:`update_spectra`: singular values of the learned update ``dW = scaling * dU diag(dsigma) dV^T``, scaled
  as in the forward (what the model adds to W_world). This, not ``|dsigma|``, is what was learned: dsigma
  starts from N(0, 1) and moves little (on the MiniLM run of ``make notebooks`` ``|dsigma|`` at the end
  correlates ~1 with its initial draw), while dU starts at zero and carries the update; with dU, dV not
  orthonormal, ``|dsigma_i|`` is not a singular value of dW;
- :func:`dsigma_change`: ``dsigma - dsigma_init`` from the records of :class:`SpectraCallback`;
- :func:`learned_singular_values`: dsigma per layer and module (the raw parameter);
- :func:`orthonormality_drift`: ``||B^T B - I_r||_F`` (dU) and ``||A A^T - I_r||_F`` (dV), how far the
  adapter's singular vectors are from the orthonormal frame that L3 pulls them towards;
- :func:`weight_spectra`: singular values of the original W, the truncated base W_world and W_world + dW;
  :func:`spectrum_tails` and :func:`plot_spectrum_tails`: their tails, the part KaSA cuts.

Where dsigma's initialisation is recorded, and why there: :class:`SpectraCallback` writes its first record
(``epoch = -1``, ``step = 0``, ``spectra/init.npz``) at fit start, before any optimiser step, so it holds the
exact N(0, 1) draw. A buffer saved with every adapter would have done the same for runs without the callback,
but it would change the adapter's state-dict format (checkpoints, PEFT export, loading older adapters) for a
quantity only this analysis reads, and a resumed run keeps the first run's init record anyway.

The base layer holds W_world after ``method.apply`` (KaSA truncates in place); W is rebuilt as
``W_world + kasa_removed_us @ kasa_removed_vh`` when the factors are kept (``keep_removed=true``;
:func:`kasa.runs.load.load_run` with ``keep_removed=True`` keeps them), else (paper / reference truncation) its
spectrum as W_world's kept singular values plus the removed ones (``kasa_removed_s``). A merged layer is unmerged in
thought
(``W_world = base - dW``).

:class:`SpectraCallback` appends to ``<dir>/spectra.json`` (dsigma, the update's singular values and the drift
per module, epoch, step) every N epochs, writes ``<dir>/epoch_NNN.npz`` (dsigma per module), and logs heatmap
images when a W&B logger is attached. ``analysis.spectra=true`` in the run config turns it on.
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
            if isinstance(getattr(m, "lora_A", None), torch.Tensor)
            and isinstance(getattr(m, "lora_B", None), torch.Tensor)}


@torch.no_grad()
def learned_singular_values(model: nn.Module) -> dict[str, np.ndarray]:
    """dsigma (``lora_diag``) of every KaSA layer; layers without one (LoRA, singular_values=off) are left out."""
    return {n: m.lora_diag.detach().float().cpu().numpy() for n, m in adapter_layers(model).items()
            if isinstance(getattr(m, "lora_diag", None), torch.Tensor)}


def _low_rank_factors(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(B', A)`` in float64 with ``delta_weight() = B' @ A`` where the layer's update is exactly that product
    (KaSA: ``B' = dU diag(scaling * dsigma)``; plain LoRA: ``B' = scaling * B``), else None."""
    from kasa.methods.kasa import KasaLayer
    from kasa.methods.lora import LoraLayer

    if isinstance(m, KasaLayer):
        mid = m._middle()
        mid = mid.detach().double() if isinstance(mid, torch.Tensor) else float(mid)
        return m.lora_B.detach().double() * mid, m.lora_A.detach().double()
    if type(m) is LoraLayer:
        return m.lora_B.detach().double() * m.scaling, m.lora_A.detach().double()
    return None


@torch.no_grad()
def update_spectra(model: nn.Module) -> dict[str, np.ndarray]:
    """``{name: singular values of dW}`` (descending, float64) of every adapter layer's learned update.

    KaSA and LoRA layers go through their factors (QR of ``B'`` and ``A^T``, then an r x r SVD: cheap enough for
    every epoch of a 7B run); other layers (PiSSA's residual form, DoRA) through ``delta_weight()``.
    """
    out = {}
    for n, m in adapter_layers(model).items():
        f = _low_rank_factors(m)
        if f is None:
            sv = torch.linalg.svdvals(m.delta_weight().detach().double())[: m.lora_A.shape[0]]
        else:
            rb = torch.linalg.qr(f[0], mode="r")[1]
            ra = torch.linalg.qr(f[1].T, mode="r")[1]
            sv = torch.linalg.svdvals(rb @ ra.T)
        out[n] = sv.cpu().numpy()
    return out


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
    from kasa.methods import get_weight

    return get_weight(m.base_layer).detach().double()


@torch.no_grad()
def weight_spectra(model: nn.Module) -> dict[str, dict[str, np.ndarray]]:
    """``{name: {"W": s, "W_world": s, "W_plus_dW": s}}``: singular values (descending) of each adapted weight.

    ``W_world`` is the truncated base (KaSA's ``W - U_t S_t V_t^T``; equal to W for methods that do not
    truncate), ``W_plus_dW`` the weight the model computes with (W_world + dW). ``truncation=activation_aware``
    without the removed factors cannot give W's spectrum (its W_world is not a truncated SVD of W): NaN there.
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
        elif removed_s is not None and removed_s.numel() and getattr(m, "truncation", "paper") == "activation_aware":
            s_w = np.full_like(s_world, np.nan)
        elif removed_s is not None and removed_s.numel():
            # W_world holds exactly W's kept triplets, so W's spectrum is those plus the removed values
            kept = s_world[: s_world.size - removed_s.numel()]
            s_w = np.sort(np.concatenate([kept, removed_s.double().cpu().numpy()]))[::-1].copy()
        else:
            s_w = s_world
        out[n] = {"W": s_w, "W_world": s_world, "W_plus_dW": sv(world + dw)}
    return out


def removed_ranks(model: nn.Module) -> dict[str, int]:
    """``{name: t}``: how many triplets each layer's truncation removed (0 for methods that do not truncate)."""
    return {n: int(getattr(m, "removed_rank", 0)) for n, m in adapter_layers(model).items()}


def spectrum_tails(spec: dict[str, dict[str, np.ndarray]], removed: dict[str, int], width: int | None = None
                   ) -> dict[str, dict[str, Any]]:
    """The last ``width`` singular values (default ``4 t``, at least 8) of W and W_world per module.

    Returns ``{name: {"index": i (0-based, ascending), "W": ..., "W_world": ..., "removed": bool mask (the t
    smallest, the triplets a paper / reference truncation cut), "removed_energy": ||removed||_F^2 / ||W||_F^2}}``.
    ``removed_energy`` is computed from W and W_world's spectra (``1 - ||W_world||_F^2 / ||W||_F^2``), which for
    a truncated SVD is exactly the removed triplets' share.
    """
    out = {}
    for n, sp in spec.items():
        k, t = len(sp["W_world"]), int(removed.get(n, 0))
        w_ = max(8, 4 * t) if width is None else int(width)
        lo = max(0, k - w_)
        idx = np.arange(lo, k)
        total = float(np.sum(np.square(sp["W"])))
        out[n] = {"index": idx, "W": np.asarray(sp["W"])[lo:], "W_world": np.asarray(sp["W_world"])[lo:],
                  "removed": idx >= k - t,
                  "removed_energy": 1.0 - float(np.sum(np.square(sp["W_world"]))) / total if total > 0 else 0.0}
    return out


def dsigma_change(records: list[dict[str, Any]], index: int = -1) -> dict[str, np.ndarray]:
    """``{name: dsigma - dsigma_init}`` for the record at ``index`` (default the last) of :func:`load_spectra`.

    The init is the first record, which :class:`SpectraCallback` writes before the first optimiser step
    (``epoch = -1``); a spectra folder without it (the callback turned on only after resuming) raises.
    """
    if not records or records[0].get("epoch") != -1:
        raise ValueError("no initial spectra record (epoch -1): the run did not record dsigma before its first step")
    init, rec = records[0]["dsigma"], records[index]["dsigma"]
    return {n: np.asarray(rec[n], dtype=float) - np.asarray(init[n], dtype=float) for n in rec}


_LAYER = re.compile(r"\.(\d+)\.")


def short_name(name: str) -> str:
    """``model.roberta.encoder.layer.3.attention.self.query`` -> ``L3.query`` (heatmap row labels)."""
    m = _LAYER.search("." + name + ".")
    return f"L{m.group(1)}.{name.rsplit('.', 1)[-1]}" if m else name


def heatmap_matrix(values: dict[str, Any], absolute: bool = False) -> tuple[list[str], np.ndarray]:
    """Rows = adapted modules in model order, columns = index i; e.g. :func:`update_spectra` or
    :func:`dsigma_change`. ``absolute``: ``|value|``. Rows of different lengths are padded with NaN."""
    names = list(values)
    width = max((len(v) for v in values.values()), default=0)
    mat = np.full((len(names), width), np.nan)
    for i, n in enumerate(names):
        v = np.asarray(values[n], dtype=float)
        mat[i, :len(v)] = np.abs(v) if absolute else v
    return [short_name(n) for n in names], mat


def _pyplot():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # headless by default; a notebook's own backend (inline) stays
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(values: dict[str, Any], title: str, ax=None, diverging: bool = False, label: str = ""):
    """A heatmap of :func:`heatmap_matrix` (returns the figure). ``diverging``: a signed quantity (a change),
    coloured around 0 with a symmetric range; otherwise a sequential map from 0."""
    plt = _pyplot()
    labels, mat = heatmap_matrix(values)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3.0, 0.35 * mat.shape[1] + 2), max(2.5, 0.25 * len(labels) + 1)))
    else:
        fig = ax.figure
    finite = mat[np.isfinite(mat)]
    top = float(np.abs(finite).max()) if finite.size else 1.0
    kw = dict(cmap="RdBu_r", vmin=-top, vmax=top) if diverging else dict(cmap="viridis", vmin=0.0, vmax=top)
    im = ax.imshow(mat, aspect="auto", interpolation="nearest", **kw)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xticks(range(mat.shape[1]), [str(i + 1) for i in range(mat.shape[1])], fontsize=7)
    ax.set_xlabel("index i (1 = largest singular value of dW)" if not diverging else "index i of dsigma")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    return fig


def plot_spectrum_tails(spec: dict[str, dict[str, np.ndarray]], removed: dict[str, int], width: int | None = None,
                        relative: bool = True):
    """One panel per module kind (query, value, ...), one colour per layer: the tail of W's spectrum (solid,
    removed triplets marked x) against W_world's (dashed, kept part; the removed values are 0 in W_world), log
    scale, singular values relative to each W's largest (``relative``). Returns the figure."""
    plt = _pyplot()
    tails = spectrum_tails(spec, removed, width)
    kinds = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in tails))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 3.8), squeeze=False)
    layers = sorted({short_name(n).split(".")[0] for n in tails})
    cmap = plt.get_cmap("viridis")
    for ax, kind in zip(axes[0], kinds):
        for n, tl in tails.items():
            if n.rsplit(".", 1)[-1] != kind:
                continue
            layer = short_name(n).split(".")[0]
            c = cmap(layers.index(layer) / max(1, len(layers) - 1))
            top = spec[n]["W"][0] if relative else 1.0
            ax.semilogy(tl["index"] + 1, tl["W"] / top, "-", color=c, lw=1.2,
                        label=f"{layer}: {100 * tl['removed_energy']:.2g}% of ||W||$^2$ cut")
            kept = ~tl["removed"]
            ax.semilogy(tl["index"][kept] + 1, tl["W_world"][kept] / top, "--", color=c, lw=1.0)
            ax.semilogy(tl["index"][tl["removed"]] + 1, tl["W"][tl["removed"]] / top, "x", color=c, ms=5)
        t = max((removed.get(n, 0) for n in tails if n.endswith(kind)), default=0)
        k = max((len(spec[n]["W_world"]) for n in tails if n.endswith(kind)), default=0)
        if t:
            ax.axvspan(k - t + 0.5, k + 0.5, color="0.9", zorder=0)
        ax.set_title(f"{kind}: tail of the spectrum (solid W, dashed W_world, x removed)", fontsize=9)
        ax.set_xlabel("singular value index i (k = min(out, in) is the smallest)")
        ax.set_ylabel("s_i / s_1(W)" if relative else "s_i")
        ax.legend(fontsize=6.5, loc="lower left")
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
    """Records dsigma, the update's singular values and the orthonormality drift every ``every_n_epochs``
    epochs, and once before training (the init, see the module docstring).

    Files: ``<out_dir>/init.npz`` and ``epoch_NNN.npz`` (dsigma per module, keys are module names) and
    ``spectra.json`` (a list of ``{"epoch", "step", "dsigma": {name: [...]}, "update": {name: [...]},
    "drift": {name: {"dU", "dV"}}}``; epoch -1 is the state before the first step). With a W&B logger, heatmaps
    of the update's singular values and of ``dsigma - dsigma_init`` are logged as ``spectra/update`` and
    ``spectra/dsigma_change``.
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
               "update": {k: v.tolist() for k, v in update_spectra(model).items()},
               "drift": orthonormality_drift(model)}
        np.savez(self.out_dir / f"epoch_{epoch:03d}.npz" if epoch >= 0 else self.out_dir / "init.npz", **dsigma)
        records = [r for r in load_spectra(self.out_dir) if r["epoch"] != epoch]  # a resumed epoch replaces
        records = sorted(records + [rec], key=lambda r: r["epoch"])
        (self.out_dir / "spectra.json").write_text(json.dumps(records))
        self._log_wandb(records, rec, epoch, step, loggers or [])
        return rec

    def _log_wandb(self, records: list, rec: dict, epoch: int, step: int, loggers: list) -> None:
        wb = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
        if not wb or not rec["update"]:
            return
        try:  # a logging image must never cost a run
            import wandb

            plt = _pyplot()
            payload: dict[str, Any] = {"trainer/global_step": step}
            fig = plot_heatmap(rec["update"], title=f"singular values of dW, epoch {epoch}")
            payload["spectra/update"] = wandb.Image(fig)
            plt.close(fig)
            if rec["dsigma"] and records[0]["epoch"] == -1:
                fig = plot_heatmap(dsigma_change(records, records.index(rec)), diverging=True,
                                   title=f"dsigma - dsigma_init, epoch {epoch}")
                payload["spectra/dsigma_change"] = wandb.Image(fig)
                plt.close(fig)
            drift = rec["drift"]
            payload["spectra/drift_dU_mean"] = float(np.mean([d["dU"] for d in drift.values()]))
            payload["spectra/drift_dV_mean"] = float(np.mean([d["dV"] for d in drift.values()]))
            wb[0].experiment.log(payload)
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


