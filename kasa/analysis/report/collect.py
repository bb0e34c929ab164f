"""Finding runs and reading them: ``results.json`` files (or W&B runs) -> :class:`Record` objects, their
pooling groups (:data:`REPORT_IGNORE`) and row labels, and each run's saved dev-set predictions."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from kasa.analysis.stats import in_table_units as _scale
from kasa.errors import ReportError  # noqa: F401  (re-exported)
from kasa.runs.files import validation_file
from kasa.runs.hashing import NEUTRAL_KEYS

# paper_numbers.json sits beside the package (kasa/analysis/), where package-data ships it.
PAPER_NUMBERS = Path(__file__).parent.with_name("paper_numbers.json")
# Config keys that tell rows of one table apart when a study varies them (first match wins for stages).
VARIANT_KEYS = ("study.stage", "method.r", "method.alpha", "method.beta", "method.gamma", "method.truncation_rank",
                "method.truncation", "method.regularizer", "method.singular_values")
# Where a classification run saves its dev-set predictions (kasa.tasks.classification.module.ClassificationModule).
PREDICTIONS_DIR = "predictions"
# Left out of the pooling hash: the seed and the keys that do not change what a run computes (one list, there).
REPORT_IGNORE = ("seed", *NEUTRAL_KEYS)
# Task names of multi-task runs (LLM-Adapters' data set names) -> paper_numbers.json's column keys.
TASK_ALIASES = {"social_i_qa": "siqa", "ARC-Easy": "arc_e", "ARC-Challenge": "arc_c", "openbookqa": "obqa"}


@dataclass
class Record:
    """One run's reported number for one task."""

    table: str
    method: str
    variant: str
    task: str
    seed: int
    value: float
    metric: str
    selection: str
    source: str
    not_comparable: tuple[str, ...] = ()  # metrics the run's evaluator marks not comparable (e.g. METEOR w/o Java)
    group: str = ""     # hash of the config without the seed (REPORT_IGNORE): runs pooled into one cell share it
    mtime: float = 0.0  # when the run finished (results.json mtime; W&B: last heartbeat): the newest repeat wins
    epoch: int | None = None  # the epoch the value was read at (best or last, as ``selection`` says)
    step: int | None = None  # and its optimiser step (several validations an epoch: which file holds it)
    params: dict[str, Any] = field(default_factory=dict)  # results.json params (trainable, total, adapter)
    wall_time_s: float | None = None
    memory: dict[str, Any] | None = None  # results.json "memory" when a run recorded it (kasa-train does not yet)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)  # validation rows, one per epoch

    @property
    def row(self) -> str:
        """The table row: the method, with the knobs that tell its configurations apart."""
        return self.method + (f" ({self.variant})" if self.variant else "")

    @property
    def run_dir(self) -> Path | None:
        """The folder of the run's results.json (None for W&B runs)."""
        return None if self.source.startswith("wandb:") or not self.source else Path(self.source).parent


def load_paper_numbers(path: str | Path = PAPER_NUMBERS) -> dict[str, Any]:
    """The ``tables`` of ``paper_numbers.json`` (KASA.md's numbers, per paper table)."""
    return json.loads(Path(path).read_text())["tables"]


def _get(d: dict, dotted: str) -> Any:
    """``d['a']['b']`` for ``'a.b'``; None where a key is missing."""
    for k in dotted.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def table_key(cfg: dict[str, Any], paper: dict[str, Any] | None = None) -> str:
    """The paper table a run belongs to: ``study.table`` when an experiment set it, else by family and model.

    A paper table compares one model (``paper_numbers.json``'s ``model``): a run of another model gets a
    table of its own, ``<table>_<model>``, so its numbers never sit beside the paper's.
    """
    model_name = str(_get(cfg, "model.name") or "model")
    model = model_name.replace("-", "_")
    study = _get(cfg, "study.table")
    if study:
        if _get(cfg, "study.per_model"):
            return f"{study}_{model}"
        ref_model = ((paper or {}).get(str(study)) or {}).get("model")
        return f"{study}_{model}" if ref_model and ref_model != model_name else str(study)
    dataset = str(_get(cfg, "dataset.name") or "")
    prefix = "glue" if dataset.startswith("glue_") else str(_get(cfg, "benchmark.name") or "runs")
    return f"{prefix}_{model}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _pooled_items(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flattened config minus :data:`REPORT_IGNORE` (and everything under those keys) and the neutral settings
    of :func:`kasa.runs.hashing.drop_neutral`."""
    import copy

    from kasa.runs.hashing import drop_neutral

    cfg = drop_neutral(copy.deepcopy(cfg))
    return {k: v for k, v in _flatten(cfg).items()
            if not any(k == ign or k.startswith(ign + ".") for ign in REPORT_IGNORE)}


def pooling_hash(cfg: dict[str, Any]) -> str:
    """Runs with the same hash differ only in the seed (and settings that do not change the computation)."""
    blob = json.dumps(_pooled_items(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def records_from_results(res: dict[str, Any], source: str = "", paper: dict[str, Any] | None = None,
                         mtime: float = 0.0, selection: str | None = None) -> list[Record]:
    """Records of one results.json: one per task (several when a run evaluates several tasks, e.g. commonsense).

    ``selection``: ``best`` | ``last`` reads that epoch's metrics (results.json ``metrics.best`` / ``metrics.final``)
    instead of the ones the run reported; None keeps the run's own ``metrics.selection``.
    """
    cfg = res.get("config") or {}
    m = res.get("metrics") or {}
    reported = m.get("reported") or {}
    selection_ = m.get("selection") or "?"
    if selection is not None and selection != selection_:
        other = m.get("best" if selection == "best" else "final")
        if not isinstance(other, dict) or not other:
            return []  # the run did not record that epoch's metrics: no value rather than a mislabelled one
        reported, selection_ = other, selection
    selection = selection_
    table = table_key(cfg, paper)
    method = str(res.get("method") or _get(cfg, "method.name"))
    if _get(cfg, "trainer.max_epochs") == 0 and _get(cfg, "trainer.max_steps") in (None, -1):
        method = "zero-shot"  # scored without training (kasa.recipe): the model as the method built it
    seed = int(res.get("seed", _get(cfg, "seed") or 0))
    history = [h for h in (res.get("history") or []) if isinstance(h, dict)]
    epoch = m.get("best_epoch") if selection == "best" else (history[-1].get("epoch") if history else None)
    step = m.get("best_step") if selection == "best" else (history[-1].get("step") if history else None)
    wall = res.get("wall_time_s")
    common = dict(table=table, method=method, variant="", seed=seed, selection=selection, source=source,
                  not_comparable=tuple(sorted((res.get("evaluation") or {}).get("not_comparable") or ())),
                  group=pooling_hash(cfg), mtime=float(mtime),
                  epoch=int(epoch) if isinstance(epoch, (int, float)) else None,
                  step=int(step) if isinstance(step, (int, float)) else None,
                  params=dict(res.get("params") or {}),
                  wall_time_s=float(wall) if isinstance(wall, (int, float)) else None,
                  memory=res.get("memory") if isinstance(res.get("memory"), dict) else None, history=history)
    # the tasks of one run that scores several: the paper table's, else those the run's evaluator counted
    tasks = (((paper or {}).get(table) or {}).get("tasks")
             or [TASK_ALIASES.get(t, t) for t in (res.get("evaluation") or {}).get("n_per_task") or ()])
    by_task = {TASK_ALIASES.get(k, k): v for k, v in reported.items()}
    multi = [t for t in tasks if isinstance(by_task.get(t), (int, float))]
    if multi:  # one run, several evaluated tasks (metric names are the task names)
        return [Record(task=t, value=_scale("accuracy", float(by_task[t])), metric="accuracy", **common) for t in multi]
    monitor = m.get("monitor") or _get(cfg, "dataset.monitor")
    value = reported.get(monitor)
    if not isinstance(value, (int, float)):
        return []
    return [Record(task=str(res.get("dataset") or _get(cfg, "dataset.name")), value=_scale(monitor, float(value)),
                   metric=str(monitor), **common)]


def collect(paths: Iterable[str | Path], paper: dict[str, Any] | None = None,
            selection: str | None = None) -> tuple[list[Record], list[dict]]:
    """Every ``results.json`` under ``paths`` (files or folders, searched recursively).

    Returns the records and, per run, its config (for finding the knobs a study varies). Skipped-run
    markers and unreadable files are ignored with a note on stderr.
    """
    recs: list[Record] = []
    cfgs: list[dict] = []
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob("results.json"))
        for f in files:
            try:
                res = json.loads(f.read_text())
                mtime = f.stat().st_mtime
            except (OSError, json.JSONDecodeError) as exc:
                print(f"kasa-report: skipping {f}: {exc}", file=sys.stderr)
                continue
            new = records_from_results(res, str(f), paper, mtime=mtime, selection=selection)
            recs.extend(new)
            cfgs.extend([res.get("config") or {}] * len(new))
    _set_variants(recs, cfgs)
    return recs, cfgs


def _label_key(k: str) -> str:
    """``method.r`` -> ``r`` for the usual knobs (:data:`VARIANT_KEYS`); other keys keep their full name."""
    return k.split(".", 1)[1] if k in VARIANT_KEYS else k


def _set_variants(recs: list[Record], cfgs: list[dict]) -> None:
    """Row label suffix: the config keys whose values tell the pooling groups of one (table, method) apart
    within a task (runs on different tasks differ in their per-task settings by design)."""
    flat: dict[str, dict[str, Any]] = {}  # group -> its pooled config items
    by_task: dict[tuple[str, str, str], set[str]] = {}
    for r, cfg in zip(recs, cfgs):
        flat.setdefault(r.group, _pooled_items(cfg))
        by_task.setdefault((r.table, r.method, r.task), set()).add(r.group)
    varying: dict[tuple[str, str], set[str]] = {}
    for (table, method, _task), groups in by_task.items():
        keys = varying.setdefault((table, method), set())
        if len(groups) > 1:
            items = [flat[g] for g in groups]
            for k in set().union(*items):
                if len({json.dumps(it.get(k), sort_keys=True, default=str) for it in items}) > 1:
                    keys.add(k)
    labels: dict[tuple[str, str], list[str]] = {}
    for tm, keys in varying.items():
        ordered = [k for k in VARIANT_KEYS if k in keys] + sorted(keys - set(VARIANT_KEYS))
        if "study.stage" in ordered:  # a stage names its method.* settings; they would only repeat it
            ordered = [k for k in ordered if not k.startswith("method.")]
        labels[tm] = ordered
    for r in recs:
        keys = labels.get((r.table, r.method), [])
        r.variant = ", ".join(f"{_label_key(k)}={_fmt_value(flat[r.group].get(k))}" for k in keys)


def _fmt_value(v: Any) -> str:
    # strings bare (lr=cosine, not lr="cosine"); everything else as JSON so lists and None read unambiguously
    return v if isinstance(v, str) else json.dumps(v, default=str)


def one_per_seed(recs: list[Record], notes: bool = True) -> list[Record]:
    """One record per (table, row, task, config group, seed): the newest finished run; the dropped repeats are
    listed on stderr (``notes``)."""
    best: dict[tuple, Record] = {}
    dropped: dict[tuple, list[Record]] = {}
    for r in recs:
        key = (r.table, r.method, r.variant, r.task, r.group, r.seed)
        old = best.get(key)
        if old is None or r.mtime > old.mtime:
            if old is not None:
                dropped.setdefault(key, []).append(old)
            best[key] = r
        else:
            dropped.setdefault(key, []).append(r)
    if notes:
        for key, rs in dropped.items():
            k = best[key]
            row = k.method + (f" ({k.variant})" if k.variant else "")
            print(f"kasa-report: {k.table} / {row} / {k.task}: seed {k.seed} ran {len(rs) + 1} times with one "
                  f"config; kept the newest ({k.source}), dropped {', '.join(d.source for d in rs)}",
                  file=sys.stderr)
    return [r for r in recs if best[(r.table, r.method, r.variant, r.task, r.group, r.seed)] is r]


def collect_wandb(path: str, paper: dict[str, Any] | None = None, selection: str | None = None) -> list[Record]:
    """Runs of a W&B project ``entity/project`` via the public API (needs the network and a key).

    The run config is the resolved Hydra config kasa-train logs; the value is the best or last
    ``val/<monitor>`` of the run's history, as its ``benchmark.selection`` says.
    """
    import wandb  # only here: the local report needs no W&B

    recs: list[Record] = []
    cfgs: list[dict] = []
    for run in wandb.Api().runs(path):
        cfg = dict(run.config)
        monitor = _get(cfg, "dataset.monitor")
        if not monitor:
            continue
        hist = [row.get(f"val/{monitor}") for row in run.scan_history(keys=[f"val/{monitor}"])]
        hist = [v for v in hist if isinstance(v, (int, float))]
        if not hist:
            continue
        chosen = selection or _get(cfg, "benchmark.selection") or "best"
        value = max(hist) if chosen == "best" else hist[-1]
        res = {"config": cfg, "method": _get(cfg, "method.name"), "seed": cfg.get("seed", 0),
               "dataset": _get(cfg, "dataset.name"),
               "metrics": {"reported": {monitor: value}, "selection": chosen, "monitor": monitor}}
        new = records_from_results(res, f"wandb:{path}/{run.id}", paper, mtime=_wandb_time(run))
        recs.extend(new)
        cfgs.extend([cfg] * len(new))
    _set_variants(recs, cfgs)
    return recs


def _wandb_time(run: Any) -> float:
    """A W&B run's last heartbeat (else its creation time) as a POSIX time; 0 when the API gives neither."""
    import datetime as dt

    for attr in ("heartbeat_at", "created_at"):
        stamp = getattr(run, attr, None)
        if isinstance(stamp, str):
            try:
                return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def _monitored_set(sets: set[str], metric: str) -> str | None:
    """Which ``set`` of a predictions file the metric was read on (MNLI-style runs save several dev sets)."""
    if len(sets) == 1:
        return next(iter(sets))
    for s in sorted(sets, key=len, reverse=True):
        if s and metric.endswith("_" + s):
            return s
    return "" if "" in sets else None


def load_correctness(rec: Record) -> dict[Any, tuple[bool, Any]] | None:
    """``{example: (correct, label)}`` of a run's dev set at its reported epoch, or None when it saved none.

    Classification runs: ``predictions/epoch<N>.jsonl`` (the monitored dev set; regression runs give None).
    Commonsense runs: ``generations/epoch<N>.jsonl`` scored with the evaluator's answer extraction (examples
    keyed by task and prompt).
    """
    d = rec.run_dir
    if d is None or rec.epoch is None:
        return None
    epochs = [r.get("epoch") for r in rec.history]
    name = validation_file(rec.epoch)
    if len(epochs) != len(set(epochs)):
        # several validations an epoch (trainer.val_check_interval): each has its own epoch<E>-step<S> file; a run
        # from before they were named by step has only the epoch's last one, so no paired test is drawn from it
        if rec.step is None:
            return None
        name = validation_file(rec.epoch, rec.step)
    pred_file = d / PREDICTIONS_DIR / name
    if pred_file.exists():
        rows = [json.loads(ln) for ln in pred_file.read_text().splitlines() if ln.strip()]
        chosen = _monitored_set({str(r.get("set", "")) for r in rows}, rec.metric)
        rows = [r for r in rows if str(r.get("set", "")) == chosen]
        if not rows or any(isinstance(r["label"], float) and not float(r["label"]).is_integer() for r in rows) \
                or rec.metric in ("pearson", "spearman"):
            return None
        return {int(r["idx"]): (r["pred"] == r["label"], r["label"]) for r in rows}
    gen_file = d / "generations" / name
    if gen_file.exists():
        from kasa.tasks.commonsense import prompts as cs

        rows = [json.loads(ln) for ln in gen_file.read_text().splitlines() if ln.strip()]
        if not rows or not all("task" in r and "answer" in r and "generation" in r for r in rows):
            return None
        if rec.task in {TASK_ALIASES.get(r["task"], r["task"]) for r in rows}:
            rows = [r for r in rows if TASK_ALIASES.get(r["task"], r["task"]) == rec.task]
        out: dict[Any, tuple[bool, Any]] = {}
        seen: dict[tuple[str, str], int] = {}
        for r in rows:
            k = (r["task"], r["prompt"])
            seen[k] = seen.get(k, 0) + 1
            try:
                got = cs.extract_answer(r["task"], cs.response_from_generation(r["generation"]))
            except (KeyError, ValueError):
                return None
            out[(*k, seen[k])] = (got == r["answer"], r["answer"])
        return out
    return None
