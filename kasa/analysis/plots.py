"""``kasa-report --plots``: learning curves, metric against cost with the Pareto front, forest plots of paired
differences. PNG and PDF per figure; the figures also go to W&B when the runs logged there.

Builders (:func:`learning_curves`, :func:`tradeoffs`, :func:`forest`) return plain data (series, intervals,
Pareto membership) that the renderers draw and the tests check; nothing here is read back from pixels.

Rules the figures follow:

- **Intervals:** every band or whisker is a 95% interval stated in the axis legend: Student's t interval of the
  mean over seeds for learning curves and the metric of a trade-off point; in the forest plot the paired t
  interval (thin line) and the percentile bootstrap interval (thick line) of the mean per-seed difference,
  exactly the numbers of the report's paired table. Fewer than 2 seeds at a point: the mean alone, no band.
- **Y axes:** an absolute metric's axis always includes 0 (and 100 for metrics in percent), and a loss's starts
  at 0, so a gap between methods is drawn against the whole scale and never magnified by a cropped axis;
  differences are shown (at their own scale, 0 marked) only in the forest plot.
- **Pareto front:** among a task's rows, a point is on the front when no other row has a cost at most as large
  AND a mean metric at least as large, one of them strictly: the rows worth their cost. Drawn as a step line.
- **Costs:** trainable parameters are results.json's ``params.adapter_final`` (AdaLoRA's final budget) else
  ``params.adapter`` (the count papers report, without the task head); wall time is ``wall_time_s`` (the whole
  run: loading, training, validation); memory is drawn only when a run recorded it (results.json ``memory``,
  one of :data:`MEMORY_KEYS`): kasa-train does not measure it, so by default the panel says so and stays empty
  (``python -m kasa.perf`` counts memory per method).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from kasa.analysis.stats import FRACTION_METRICS, summarise
from kasa.analysis.stats import in_table_units as _scale

# Inputs are kasa.analysis.report's Record (one per run and seed) and Table objects; not imported here, as
# report imports this module for --plots.
Record = Any
Table = Any

# results.json "memory" keys read as the counted memory of a run, in this order (bytes).
MEMORY_KEYS = ("counted_bytes", "peak_bytes", "cuda_peak_bytes")
MEMORY_MISSING = ("memory not recorded in results.json (kasa-train does not measure it; "
                  "python -m kasa.perf counts it per method)")
FORMATS = ("png", "pdf")


@dataclass
class Band:
    """One row's curve: per-seed series and, at each x, the mean and 95% t interval over the seeds there."""

    label: str
    x: list[float]
    mean: list[float]
    low: list[float]     # NaN where fewer than 2 seeds have a value
    high: list[float]
    n: list[int]
    per_seed: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)


@dataclass
class CurvePanel:
    table: str
    task: str
    y_label: str
    x_label: str
    source: str          # where the values come from ("results.json history", "logs/metrics.csv")
    bands: list[Band]
    percent: bool = False  # a metric in percent (its axis spans 0-100)


def _band(label: str, per_seed: dict[int, tuple[list[float], list[float]]]) -> Band:
    by_x: dict[float, dict[int, float]] = {}
    for seed, (xs, ys) in per_seed.items():
        for x, y in zip(xs, ys):
            by_x.setdefault(x, {})[seed] = y
    xs = sorted(by_x)
    sums = [summarise(by_x[x]) for x in xs]
    return Band(label, xs, [s.mean for s in sums], [s.ci[0] for s in sums], [s.ci[1] for s in sums],
                [s.n for s in sums], per_seed)


def _train_loss(rec: Record) -> tuple[list[float], list[float]] | None:
    """``(steps, train/loss)`` from the run's ``logs/metrics.csv`` (Lightning's CSVLogger), or None."""
    d = rec.run_dir
    f = d / "logs" / "metrics.csv" if d else None
    if f is None or not f.exists():
        return None
    xs, ys = [], []
    with f.open(newline="") as fh:
        for row in csv.DictReader(fh):
            v, s = row.get("train/loss"), row.get("step")
            if v not in (None, "") and s not in (None, ""):
                xs.append(float(s))
                ys.append(float(v))
    return (xs, ys) if xs else None


def learning_curves(recs: list[Record]) -> list[CurvePanel]:
    """Per (table, task): the validation metric per epoch (``history``) and the training loss per step
    (``logs/metrics.csv``), one band per row, over the seeds."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in recs:
        groups.setdefault((r.table, r.task), []).append(r)
    panels = []
    for (table, task), rs in sorted(groups.items()):
        metric = rs[0].metric
        key = metric if any(metric in h for r in rs for h in r.history) else task  # multi-task: per-task key
        val: dict[str, dict[int, tuple[list[float], list[float]]]] = {}
        loss: dict[str, dict[int, tuple[list[float], list[float]]]] = {}
        # several validations an epoch (trainer.val_check_interval) in any run: the x axis is the optimiser step
        by_step = any(len({h.get("epoch") for h in r.history}) < len(r.history) for r in rs)
        x = "step" if by_step else "epoch"
        for r in rs:
            pts = [(float(h[x]), _scale(metric, float(h[key]))) for h in r.history
                   if isinstance(h.get(key), (int, float)) and x in h]
            if pts:
                val.setdefault(r.row, {})[r.seed] = ([p[0] for p in pts], [p[1] for p in pts])
            tl = _train_loss(r)
            if tl:
                loss.setdefault(r.row, {})[r.seed] = tl
        pct = metric in FRACTION_METRICS
        if val:
            panels.append(CurvePanel(table, task, f"validation {metric}" + (" (%)" if pct else ""),
                                     "optimiser step" if by_step else "epoch",
                                     "results.json history", [_band(k, v) for k, v in sorted(val.items())], pct))
        if loss:
            panels.append(CurvePanel(table, task, "training loss", "optimiser step", "logs/metrics.csv",
                                     [_band(k, v) for k, v in sorted(loss.items())]))
    return panels


# ------------------------------------------------------------------------------------------------------
# metric against cost

@dataclass
class TradeoffPoint:
    row: str
    cost: float          # mean over seeds
    mean: float
    low: float           # 95% t interval of the metric (NaN for one seed)
    high: float
    n: int
    pareto: bool = False


@dataclass
class TradeoffPanel:
    table: str
    task: str
    cost: str            # "trainable parameters", "wall time (s)", "memory (bytes)"
    y_label: str
    points: list[TradeoffPoint]
    note: str = ""       # why the panel is empty
    percent: bool = False


def pareto_front(points: Iterable[tuple[float, float]]) -> list[bool]:
    """For ``(cost, value)`` pairs: True where no other pair has cost <= and value >=, one strictly."""
    pts = list(points)
    return [not any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for j, (c2, v2) in enumerate(pts) if j != i)
            for i, (c, v) in enumerate(pts)]


def _params(r: Record) -> float | None:
    v = r.params.get("adapter_final", r.params.get("adapter"))
    return float(v) if isinstance(v, (int, float)) else None


def _memory(r: Record) -> float | None:
    for k in MEMORY_KEYS:
        v = (r.memory or {}).get(k)
        if isinstance(v, (int, float)):
            return float(v)
    return None


COSTS = (("trainable parameters", _params), ("wall time (s)", lambda r: r.wall_time_s),
         ("memory (bytes)", _memory))


def tradeoffs(recs: list[Record]) -> list[TradeoffPanel]:
    """Per (table, task) and cost: each row's mean metric (95% t interval) at its mean cost, Pareto front marked.
    A cost no run recorded gives an empty panel with a note."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in recs:
        groups.setdefault((r.table, r.task), []).append(r)
    panels = []
    for (table, task), rs in sorted(groups.items()):
        metric = rs[0].metric
        pct = metric in FRACTION_METRICS
        y_label = f"{metric}" + (" (%)" if pct else "")
        by_row: dict[str, list[Record]] = {}
        for r in rs:
            by_row.setdefault(r.row, []).append(r)
        for name, fn in COSTS:
            pts = []
            for row, rr in sorted(by_row.items()):
                costs = [c for c in (fn(r) for r in rr) if c is not None]
                if not costs:
                    continue
                s = summarise({r.seed: r.value for r in rr})
                pts.append(TradeoffPoint(row, sum(costs) / len(costs), s.mean, s.ci[0], s.ci[1], s.n))
            for p, on in zip(pts, pareto_front((p.cost, p.mean) for p in pts)):
                p.pareto = on
            note = "" if pts else (MEMORY_MISSING if name.startswith("memory") else f"no run recorded its {name}")
            panels.append(TradeoffPanel(table, task, name, y_label, pts, note, pct))
    return panels


# ------------------------------------------------------------------------------------------------------
# forest plot of paired differences

@dataclass
class ForestRow:
    label: str           # "row (task)"
    n: int
    mean: float
    t_ci: tuple[float, float]
    bootstrap_ci: tuple[float, float]


@dataclass
class ForestPanel:
    table: str
    baseline: str
    rows: list[ForestRow]


def forest(tables: list[Table]) -> list[ForestPanel]:
    """One panel per table with paired rows: each row − baseline per task (the report's paired table)."""
    out = []
    for tb in tables:
        if not tb.paired:
            continue
        rows = [ForestRow(f"{p.row} ({tb.task_labels.get(p.task, p.task)})", p.stats.n, p.stats.mean, p.stats.t_ci,
                          p.stats.bootstrap_ci) for p in tb.paired]
        out.append(ForestPanel(tb.key, tb.baseline or "", rows))
    return out


# ------------------------------------------------------------------------------------------------------
# rendering

def _plt():
    try:
        import matplotlib
    except ImportError as exc:  # an optional dependency (the dev extra has it)
        raise RuntimeError("kasa-report --plots needs matplotlib (pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        p = out_dir / f"{stem}.{fmt}"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        paths.append(p)
    return paths


def y_limits(values: Iterable[float], percent: bool) -> tuple[float, float]:
    """The y range of an absolute metric: always including 0 (and 100 for percent), so gaps are not magnified."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    lo = min([0.0, *vals])
    hi = max([100.0 if percent else 0.0, *vals])
    if hi == lo:
        hi = lo + 1.0
    pad = 0.02 * (hi - lo)
    return (lo if lo == 0 else lo - pad), (hi if percent and hi == 100.0 else hi + pad)


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)


def _task_figures(panels: list[Any], panel_width: float) -> Iterator[tuple[Any, str, str, list[tuple[Any, Any]]]]:
    """One figure per (table, task) of ``panels``, a row of axes with one panel each: ``(fig, table, task,
    [(ax, panel), ...])``."""
    plt = _plt()
    by_task: dict[tuple[str, str], list[Any]] = {}
    for p in panels:
        by_task.setdefault((p.table, p.task), []).append(p)
    for (table, task), ps in by_task.items():
        fig, axes = plt.subplots(1, len(ps), figsize=(panel_width * len(ps), 3.8), squeeze=False)
        yield fig, table, task, list(zip(axes[0], ps))


def render_curves(panels: list[CurvePanel], out_dir: Path) -> list[Path]:
    plt = _plt()
    paths: list[Path] = []
    for fig, table, task, axes in _task_figures(panels, 5.2):
        for ax, p in axes:
            ys = []
            for b in p.bands:
                line, = ax.plot(b.x, b.mean, marker="o" if len(b.x) < 30 else None, ms=3,
                                label=f"{b.label} (n={max(b.n)})")
                ok = [i for i, lo in enumerate(b.low) if math.isfinite(lo)]
                if ok:
                    ax.fill_between([b.x[i] for i in ok], [b.low[i] for i in ok], [b.high[i] for i in ok],
                                    color=line.get_color(), alpha=0.2, lw=0)
                ys += b.mean + [v for v in b.low + b.high if math.isfinite(v)]
            ax.set_ylim(*y_limits(ys, p.percent))
            ax.set_xlabel(p.x_label)
            ax.set_ylabel(p.y_label)
            ax.set_title(f"{task}: {p.y_label} ({p.source})", fontsize=8)
            ax.legend(fontsize=7, title="mean, band: 95% t interval over seeds", title_fontsize=7)
        fig.suptitle(table, fontsize=9)
        paths += _save(fig, out_dir, f"{_safe(table)}_{_safe(task)}_curves")
        plt.close(fig)
    return paths


def log_cost_axis(cost: str, values: list[float]) -> bool:
    """Whether a trade-off panel's x axis is logarithmic: trainable-parameter counts spanning at least a decade.
    Near-equal counts (KaSA vs LoRA differ by 0.1%) on a log axis get overlapping minor labels and no scale."""
    return cost == "trainable parameters" and min(values) > 0 and max(values) / min(values) >= 10


def render_tradeoffs(panels: list[TradeoffPanel], out_dir: Path) -> list[Path]:
    plt = _plt()
    paths: list[Path] = []
    for fig, table, task, axes in _task_figures(panels, 4.6):
        for ax, p in axes:
            ax.set_xlabel(p.cost)
            ax.set_ylabel(p.y_label)
            if not p.points:
                ax.text(0.5, 0.5, textwrap.fill(p.note, 38), ha="center", va="center", fontsize=8,
                        transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            for pt in p.points:
                err = ([[pt.mean - pt.low], [pt.high - pt.mean]] if math.isfinite(pt.low) else None)
                ax.errorbar(pt.cost, pt.mean, yerr=err, fmt="o", capsize=3,
                            color="tab:red" if pt.pareto else "tab:blue")
                ax.annotate(f"{pt.row} (n={pt.n})", (pt.cost, pt.mean), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            front = sorted((pt.cost, pt.mean) for pt in p.points if pt.pareto)
            if len(front) > 1:
                ax.step([c for c, _ in front], [v for _, v in front], where="post", color="tab:red", lw=1,
                        label="Pareto front")
            ax.plot([], [], "o", color="tab:red", label="on the Pareto front")
            ax.plot([], [], "o", color="tab:blue", label="dominated")
            ax.set_ylim(*y_limits([v for pt in p.points for v in (pt.mean, pt.low, pt.high)], p.percent))
            if log_cost_axis(p.cost, [pt.cost for pt in p.points]):
                ax.set_xscale("log")
            else:
                ax.ticklabel_format(axis="x", style="plain", useOffset=False)
                ax.tick_params(axis="x", labelrotation=30)
            ax.legend(fontsize=6, title="mean ± 95% t interval over seeds", title_fontsize=6)
        fig.suptitle(f"{table}: {task}", fontsize=9)
        paths += _save(fig, out_dir, f"{_safe(table)}_{_safe(task)}_tradeoff")
        plt.close(fig)
    return paths


def render_forest(panels: list[ForestPanel], out_dir: Path) -> list[Path]:
    plt = _plt()
    paths: list[Path] = []
    for p in panels:
        fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.45 * len(p.rows)))
        for i, r in enumerate(reversed(p.rows)):
            if all(math.isfinite(v) for v in r.t_ci):  # end ticks: an interval narrower than the dot still shows
                ax.plot(r.t_ci, [i, i], color="black", lw=1, marker="|", ms=7)
            if all(math.isfinite(v) for v in r.bootstrap_ci):
                ax.plot(r.bootstrap_ci, [i, i], color="tab:blue", lw=4, alpha=0.6)
            ax.plot([r.mean], [i], "o", color="black", ms=4)
        ax.axvline(0.0, color="grey", ls="--", lw=0.8)
        ax.set_yticks(range(len(p.rows)), [f"{r.label}, n={r.n}" for r in reversed(p.rows)], fontsize=7)
        ax.set_xlabel(f"difference vs {p.baseline} (mean over paired seeds, table units)")
        ax.plot([], [], color="black", lw=1, marker="|", ms=7, label="95% paired t interval")
        ax.plot([], [], color="tab:blue", lw=4, alpha=0.6, label="95% percentile bootstrap")
        ax.legend(fontsize=6, loc="best")
        ax.set_title(f"{p.table}: paired differences vs {p.baseline}", fontsize=9)
        paths += _save(fig, out_dir, f"{_safe(p.table)}_forest")
        plt.close(fig)
    return paths


def write_plots(recs: list[Record], tables: list[Table], out_dir: str | Path) -> list[Path]:
    """Every figure for these records (one per seed) and tables, PNG and PDF, into ``out_dir``; the paths."""
    out_dir = Path(out_dir)
    return (render_curves(learning_curves(recs), out_dir) + render_tradeoffs(tradeoffs(recs), out_dir)
            + render_forest(forest(tables), out_dir))


# ------------------------------------------------------------------------------------------------------
# W&B

def log_to_wandb(files: list[Path], cfgs: list[dict[str, Any]], out_dir: Path) -> str:
    """Log the PNGs as W&B images to each project the runs logged to (``logger.wandb``), in a run named
    ``kasa-report``: online with a key and a reachable host, else offline under ``out_dir/wandb`` (``wandb sync``
    uploads it). Returns a line saying what happened ("" when no run logged to W&B); never raises."""
    projects = sorted({(str(wb.get("project") or "kasa"), wb.get("entity") or None, str(wb.get("mode") or "auto"))
                       for cfg in cfgs if isinstance(wb := (cfg.get("logger") or {}).get("wandb"), dict)}, key=str)
    pngs = [f for f in files if f.suffix == ".png"]
    if not projects or not pngs:
        return ""
    try:
        import wandb

        from kasa.config.checks import probe_url
        from kasa.training.loggers import WANDB_PROBE_TIMEOUT_S, _wandb_mode
    except ImportError as exc:
        return f"W&B images skipped ({exc})"
    done = []
    for project, entity, requested in projects:
        mode = _wandb_mode(requested)
        if mode == "online" and probe_url(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai",
                                          timeout=WANDB_PROBE_TIMEOUT_S):
            mode = "offline"
        try:
            if wandb.run is not None:  # one report run per project, not a run left open by a caller
                wandb.finish()
            run = wandb.init(project=project, entity=entity, name="kasa-report", job_type="report", mode=mode,
                             dir=str(out_dir))
            run.log({f"report/{p.stem}": wandb.Image(str(p)) for p in pngs})
            run.finish()
        except Exception as exc:  # noqa: BLE001 -- the figures are on disk already; W&B is a copy
            print(f"kasa-report: W&B images for {project} failed ({' '.join(str(exc).split())[:200]})",
                  file=sys.stderr)
            continue
        done.append(f"{entity + '/' if entity else ''}{project} ({mode}"
                    + ("; `wandb sync` uploads it" if mode == "offline" else "") + ")")
    return f"logged {len(pngs)} figure(s) as W&B images to {', '.join(done)}" if done else ""
