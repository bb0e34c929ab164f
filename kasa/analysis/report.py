"""``kasa-report``: the paper's tables from ``results.json`` files (and, optionally, W&B runs).

Rows are methods (plus the knob a study varies: ablation stage, rank, beta/gamma, ...), columns are tasks
(+ average). A cell is the median over seeds (the paper's aggregate), then mean ± std and n, with the
paper's number (``paper_numbers.json``, only what KASA.md gives) and our − paper difference beside it.
Only runs of one configuration are pooled: runs are grouped by a hash of the resolved config without the
seed and without keys that do not change the computation (:data:`REPORT_IGNORE`); groups of one method
that differ (epochs, lr, data size, ...) become separate rows labelled by the keys that differ. A cell
holds one value per seed: of repeated runs of one seed the newest (results.json modification time) is
kept, and the dropped ones are listed on stderr. A paper table's numbers are compared only with runs of
that table's model (a MiniLM run of ``experiment=glue_roberta_base`` goes to ``glue_roberta_base_minilm``).
Missing cells read ``—``. Which epoch a value comes from (best validation epoch or last) is read from each
results.json's ``metrics.selection`` / ``metrics.reported`` and stated in the caption.

Statistics (:mod:`kasa.analysis.stats` says how each is computed): under each table, the per-seed values with
their mean, 95% t interval, SD and the minimum detectable our − paper difference (MDE, unpaired: our seeds
against the paper's one run); then every row's paired difference against ``--baseline`` (default ``lora``)
over the seeds both ran: mean, paired t and percentile-bootstrap 95% intervals, paired t-test and Wilcoxon
p, paired MDE, and McNemar's test on the runs' saved dev-set predictions (``predictions/epoch<N>.jsonl``;
commonsense: ``generations/epoch<N>.jsonl``) pooled over those seeds.

    kasa-report multirun/ outputs/ --out reports/          # report.md, report.tex, report.csv, report_paired.csv
    kasa-report sweeps/glue --format md                    # Markdown to stdout
    kasa-report sweeps/ --out reports/ --plots --baseline lora   # + reports/plots/*.png|pdf (kasa.analysis.plots)
    kasa-report --wandb my-entity/kasa                     # W&B runs (needs the network and an API key)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .stats import (BOOTSTRAP_SEED, FRACTION_METRICS, MCNEMAR_EXACT_BELOW, N_BOOTSTRAP, McNemar, Paired,
                    mcnemar_from_correct, mde_unpaired, paired, summarise)
from .stats import in_table_units as _scale

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.json")
# Config keys that tell rows of one table apart when a study varies them (first match wins for stages).
VARIANT_KEYS = ("study.stage", "method.r", "method.alpha", "method.beta", "method.gamma", "method.truncation_rank",
                "method.truncation", "method.regularizer", "method.singular_values")
MISSING = "—"
# The paper's numbers come from one run per cell (KASA.md: the reference logs' seed 0) unless paper_numbers.json
# gives a table "paper_seeds"; the MDE against it is unpaired with m = that many runs.
PAPER_SEEDS = 1
# Where a classification run saves its dev-set predictions (kasa.training.classification.ClassificationModule).
PREDICTIONS_DIR = "predictions"
# Config keys that do not change what a run computes (besides the seed): left out of the pooling hash.
REPORT_IGNORE = ("seed", "run_name", "resume", "sweep_dir", "logger", "analysis", "trainer.enable_progress_bar",
                 "trainer.log_every_n_steps", "study.seeds")
# Task names of multi-task runs (LLM-Adapters' data set names) -> paper_numbers.json's column keys.
TASK_ALIASES = {"social_i_qa": "siqa", "ARC-Easy": "arc_e", "ARC-Challenge": "arc_c", "openbookqa": "obqa"}


class ReportError(ValueError):
    """Nothing to report: a path that does not exist, or no runs at all."""


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
    return json.loads(Path(path).read_text())["tables"]


def _get(d: dict, dotted: str) -> Any:
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
    of :func:`kasa.hashing.drop_neutral`."""
    import copy

    from ..hashing import drop_neutral

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
    seed = int(res.get("seed", _get(cfg, "seed") or 0))
    history = [h for h in (res.get("history") or []) if isinstance(h, dict)]
    epoch = m.get("best_epoch") if selection == "best" else (history[-1].get("epoch") if history else None)
    wall = res.get("wall_time_s")
    common = dict(table=table, method=method, variant="", seed=seed, selection=selection, source=source,
                  not_comparable=tuple(sorted((res.get("evaluation") or {}).get("not_comparable") or ())),
                  group=pooling_hash(cfg), mtime=float(mtime),
                  epoch=int(epoch) if isinstance(epoch, (int, float)) else None,
                  params=dict(res.get("params") or {}),
                  wall_time_s=float(wall) if isinstance(wall, (int, float)) else None,
                  memory=res.get("memory") if isinstance(res.get("memory"), dict) else None, history=history)
    tasks = ((paper or {}).get(table) or {}).get("tasks") or {}
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


# ------------------------------------------------------------------------------------------------------
# aggregation

@dataclass
class Cell:
    """One (row, task) cell: the values over seeds and their summary; the paper's number beside them."""

    n: int = 0
    median: float | None = None
    mean: float | None = None
    std: float | None = None          # sample SD over seeds; None for one seed
    paper: float | None = None
    selections: tuple[str, ...] = ()
    ci: tuple[float, float] | None = None   # 95% t interval of the mean (n >= 2)
    values: dict[int, float] = field(default_factory=dict)  # seed -> value
    mde_paper: float | None = None    # smallest our - paper difference detectable (stats.mde_unpaired)

    @property
    def diff(self) -> float | None:
        return None if self.median is None or self.paper is None else self.median - self.paper


@dataclass
class PairedRow:
    """``row - baseline`` on one task over their shared seeds, with McNemar on pooled predictions if saved."""

    row: str
    baseline: str
    task: str
    stats: Paired
    mcnemar: McNemar | None = None
    mcnemar_seeds: int = 0        # seeds whose predictions entered the McNemar table
    mcnemar_note: str = ""        # why McNemar is missing (or partial)


@dataclass
class Table:
    key: str
    title: str
    tasks: list[str]          # dataset names, column order
    task_labels: dict[str, str]
    rows: list[str]           # row labels
    cells: dict[tuple[str, str], Cell]   # (row, task or "avg")
    paper_only_rows: list[str]
    selections: set[str]
    n_runs: int
    not_comparable: dict[str, int] = field(default_factory=dict)  # metric -> runs whose evaluator says so
    baseline: str | None = None        # the row paired differences are taken against
    baseline_note: str = ""            # how it was chosen when --baseline named no row of this table
    paired: list[PairedRow] = field(default_factory=list)
    paper_seeds: int = PAPER_SEEDS
    n_resamples: int = N_BOOTSTRAP
    bootstrap_seed: int = BOOTSTRAP_SEED

    def caption(self) -> str:
        sel = {"best": "the best validation epoch", "last": "the last epoch"}
        read = " and ".join(sel.get(s, s) for s in sorted(self.selections)) or "?"
        mixed = " (MIXED across runs)" if len(self.selections) > 1 else ""
        sara = (" sara: rank rule unverified (arXiv 2408.03290 not reachable; see kasa/methods/sara.py)."
                if any(r.split()[0].lower() == "sara" for r in self.rows + self.paper_only_rows) else "")
        ns = sorted({c.n for (r, t), c in self.cells.items() if t != "avg" and c.n})
        n_txt = (f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}") + " seed(s) per cell" if ns else "no runs"
        return (f"{self.title}. Cell: median over seeds, then mean ± SD (n seeds); the paper's number, our − paper "
                f"difference and MDE beside it; {MISSING}: missing. {n_txt}. MDE: the smallest true our − paper "
                f"difference this design detects (two-sided t-test, alpha 0.05, power 0.8, our SD, unpaired: our "
                f"n seeds against {self.paper_seeds} paper run(s)). Metric read at {read}{mixed} "
                f"(results.json metrics.selection). {self.n_runs} run(s)."
                + "".join(f" NOT COMPARABLE with the official scorer: {m} in {n} run(s) (results.json "
                          f"evaluation.not_comparable)." for m, n in sorted(self.not_comparable.items()))
                + sara)

    def seeds_caption(self) -> str:
        return (f"{self.title}: per-seed values. 95% CI: Student's t interval of the mean over the seeds "
                f"(mean ± t(0.975, n−1)·SD/√n; none for n = 1). MDE vs paper: as in the table above.")

    def paired_caption(self) -> str:
        small = sorted({p.stats.n for p in self.paired if p.stats.n < 6})
        wil = (f" With n < 6 pairs ({', '.join(map(str, small))} here) the Wilcoxon test cannot reach p < 0.05 "
               "(its smallest two-sided p is 2/2^n)." if small else "")
        return (f"{self.title}: paired differences row − {self.baseline}{self.baseline_note} over the seeds both "
                f"ran (same seed: same data order and split), in the table's units. Mean of the per-seed "
                f"differences; 95% CI: paired t interval and percentile bootstrap ({self.n_resamples:,} resamples "
                f"of the seeds, numpy seed {self.bootstrap_seed}; too narrow for few seeds, read the t interval "
                f"there); p: paired t-test and Wilcoxon signed-rank, two-sided; MDE: the smallest true difference "
                f"detectable with power 0.8 at alpha 0.05 (paired t-test, observed SD of the differences)."
                f"{wil} McNemar (accuracy on the dev set, classification runs that saved predictions): pooled "
                f"predictions of the shared seeds at each run's reported epoch; b = examples only the row gets "
                f"right, c = only {self.baseline}; exact binomial test below {MCNEMAR_EXACT_BELOW} discordant "
                f"pairs, else chi-square with continuity correction; pooling repeats each dev example once per "
                f"seed, so its p is optimistic.")


def _summary_cell(got: list[Record], paper_value: float | None, paper_seeds: int) -> Cell:
    c = Cell(paper=paper_value, selections=tuple(sorted({g.selection for g in got})))
    if not got:
        return c
    by_seed = {g.seed: g.value for g in got}
    s = summarise(by_seed)
    c.n, c.median, c.mean, c.values = s.n, s.median, s.mean, dict(zip(s.seeds, s.values))
    c.std = None if math.isnan(s.sd) else s.sd
    c.ci = None if math.isnan(s.ci[0]) else s.ci
    if paper_value is not None and c.std is not None:
        c.mde_paper = mde_unpaired(c.std, c.n, paper_seeds)
    return c


def pick_baseline(rows: list[str], baseline: str | None) -> tuple[str | None, str]:
    """The row ``baseline`` names: that label, else the one plain row of that method, else the one row whose varied
    knob has that value (``--baseline lora`` picks ``kasa (stage=lora)`` in the component ablation); else the
    first row (with a note saying so). ``None``: no paired comparison."""
    if baseline is None or len(rows) < 2:
        return None, ""
    for pred in (lambda r: r == baseline, lambda r: r.split(" ")[0] == baseline,
                 lambda r: "(" in r and any(part.split("=", 1)[-1] == baseline
                                            for part in r[r.index("(") + 1:-1].split(", "))):
        hits = [r for r in rows if pred(r)]
        if len(hits) == 1:
            return hits[0], ""
    return rows[0], f" (no row '{baseline}' in this table: its first row)"


def _monitored_set(sets: set[str], metric: str) -> str | None:
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
    pred_file = d / PREDICTIONS_DIR / f"epoch{rec.epoch}.jsonl"
    if pred_file.exists():
        rows = [json.loads(ln) for ln in pred_file.read_text().splitlines() if ln.strip()]
        chosen = _monitored_set({str(r.get("set", "")) for r in rows}, rec.metric)
        rows = [r for r in rows if str(r.get("set", "")) == chosen]
        if not rows or any(isinstance(r["label"], float) and not float(r["label"]).is_integer() for r in rows) \
                or rec.metric in ("pearson", "spearman"):
            return None
        return {int(r["idx"]): (r["pred"] == r["label"], r["label"]) for r in rows}
    gen_file = d / "generations" / f"epoch{rec.epoch}.jsonl"
    if gen_file.exists():
        from ..eval import commonsense as cs

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


def _pooled_mcnemar(row_recs: dict[int, Record], base_recs: dict[int, Record], seeds: Iterable[int],
                    cache: dict[str, Any]) -> tuple[McNemar | None, int, str]:
    """McNemar over the pooled predictions of ``seeds``; (None, 0, why) when no seed has both runs' predictions."""
    def corr(r: Record):
        if r.source not in cache:
            cache[r.source] = load_correctness(r)
        return cache[r.source]

    a_all: list[bool] = []
    b_all: list[bool] = []
    used, differ = 0, []
    for s in seeds:
        a, b = corr(row_recs[s]), corr(base_recs[s])
        if a is None or b is None:
            continue
        if a.keys() != b.keys() or any(a[k][1] != b[k][1] for k in a):
            differ.append(s)  # not the same dev set (examples or labels): not a paired design
            continue
        keys = sorted(a, key=str)
        a_all += [a[k][0] for k in keys]
        b_all += [b[k][0] for k in keys]
        used += 1
    note = f"; seed(s) {', '.join(map(str, differ))} left out: the two runs' dev sets differ" if differ else ""
    if not used:
        return None, 0, ("no saved dev-set predictions" if not differ else note.lstrip("; "))
    return mcnemar_from_correct(a_all, b_all), used, note


def build_tables(recs: list[Record], paper: dict[str, Any] | None = None, baseline: str | None = "lora",
                 n_resamples: int = N_BOOTSTRAP, bootstrap_seed: int = BOOTSTRAP_SEED) -> list[Table]:
    """Aggregate records into one :class:`Table` per paper table (plus tables the paper lacks), with paired
    differences of every row against ``baseline`` (:func:`pick_baseline`; None: none)."""
    paper = paper if paper is not None else load_paper_numbers()
    by_table: dict[str, list[Record]] = {}
    for r in one_per_seed(recs):
        by_table.setdefault(r.table, []).append(r)
    tables = []
    cache: dict[str, Any] = {}
    for key in sorted(by_table):
        rs = by_table[key]
        ref = paper.get(key, {})
        paper_seeds = int(ref.get("paper_seeds", PAPER_SEEDS))
        ref_tasks = list(ref.get("tasks", {}))
        tasks = ref_tasks + sorted({r.task for r in rs} - set(ref_tasks))
        labels = {t: ref.get("tasks", {}).get(t, t) for t in tasks}
        rows: list[str] = []
        values: dict[tuple[str, str], list[Record]] = {}
        for r in rs:
            row = r.row
            if row not in rows:
                rows.append(row)
            values.setdefault((row, r.task), []).append(r)
        for m in ref.get("numbers", {}):
            if m not in rows:
                rows.append(m)
        rows.sort(key=lambda x: (x.split(" ")[0] != "kasa", x))
        cells: dict[tuple[str, str], Cell] = {}
        for row in rows:
            method = row.split(" ")[0]
            paper_row = ref.get("numbers", {}).get(method, {}) if row == method else {}
            for t in tasks:
                cells[(row, t)] = _summary_cell(values.get((row, t), []), paper_row.get(t), paper_seeds)
            meds = [cells[(row, t)].median for t in tasks]
            avg = Cell(paper=ref.get("averages", {}).get(method) if row == method else None)
            if all(v is not None for v in meds) and meds:
                avg.median = statistics.fmean(meds)
                avg.n = min(cells[(row, t)].n for t in tasks)
            if avg.paper is None and paper_row and all(t in paper_row for t in tasks):
                avg.paper = statistics.fmean(paper_row[t] for t in tasks)
            cells[(row, "avg")] = avg
        extra = []
        for name, nums in ref.get("reference_rows", {}).items():
            extra.append(name)
            for t in tasks:
                cells[(name, t)] = Cell(paper=nums.get(t))
            cells[(name, "avg")] = Cell(paper=statistics.fmean(nums[t] for t in tasks)
                                        if all(t in nums for t in tasks) else None)
        flagged: dict[str, set] = {}
        for r in rs:
            for m in r.not_comparable:
                flagged.setdefault(m, set()).add((r.source, r.seed))
        tb = Table(key, ref.get("title", key), tasks, labels, rows, cells, extra,
                   {r.selection for r in rs}, len({(r.source, r.seed) for r in rs}),
                   {m: len(v) for m, v in flagged.items()}, paper_seeds=paper_seeds, n_resamples=n_resamples,
                   bootstrap_seed=bootstrap_seed)
        with_runs = [row for row in rows if any(cells[(row, t)].n for t in tasks)]
        tb.baseline, tb.baseline_note = pick_baseline(with_runs, baseline)
        if tb.baseline is not None:
            for t in tasks:
                base = {r.seed: r for r in values.get((tb.baseline, t), [])}
                for row in with_runs:
                    mine = {r.seed: r for r in values.get((row, t), [])}
                    if row == tb.baseline or not base or not mine:
                        continue
                    st = paired({s: r.value for s, r in mine.items()}, {s: r.value for s, r in base.items()},
                                n_resamples=n_resamples, seed=bootstrap_seed)
                    if st is None:
                        continue
                    mc, used, note = _pooled_mcnemar(mine, base, st.seeds, cache)
                    tb.paired.append(PairedRow(row, tb.baseline, t, st, mc, used, note))
        tables.append(tb)
    return tables


# ------------------------------------------------------------------------------------------------------
# rendering

def _f(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def _p(p: float | None) -> str:
    """A p value: three decimals, ``<0.001`` below that."""
    if p is None or math.isnan(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ci(ci: tuple[float, float] | None, signed: bool = False) -> str:
    if ci is None or any(math.isnan(v) for v in ci):
        return MISSING
    return f"[{_f(ci[0], signed)}, {_f(ci[1], signed)}]"


def _seed_values(values: dict[int, float] | tuple, seeds: tuple[int, ...] | None = None, signed: bool = False) -> str:
    items = values.items() if isinstance(values, dict) else zip(seeds or (), values)
    return " ".join(f"s{s}:{_f(v, signed)}" for s, v in items)


def _mcnemar_text(p: PairedRow) -> str:
    if p.mcnemar is None:
        return f"{MISSING} ({p.mcnemar_note})" if p.mcnemar_note else MISSING
    m = p.mcnemar
    test = "exact" if m.test.startswith("exact") else "χ²"
    return (f"b={m.b} c={m.c}, p={_p(m.p)} ({test}, {m.n} pairs, {p.mcnemar_seeds} seed(s){p.mcnemar_note})")


def _cell_text(c: Cell, avg: bool = False) -> str:
    if c.median is None:
        ours = MISSING
    elif avg:
        ours = _f(c.median)
    else:
        ours = f"{_f(c.median)} ({_f(c.mean)} ± {c.std:.1f}, n={c.n})" if c.std is not None else \
            f"{_f(c.median)} (n={c.n})"
    if c.paper is None:
        return ours
    if c.median is None:
        return f"{MISSING} / paper {_f(c.paper)}"
    mde_txt = f", MDE {_f(c.mde_paper)}" if c.mde_paper is not None and not avg else ""
    return f"{ours} / paper {_f(c.paper)} ({_f(c.diff, signed=True)}{mde_txt})"


def _stat_rows(tb: Table) -> list[tuple[str, str, Cell]]:
    return [(row, t, tb.cells[(row, t)]) for row in tb.rows for t in tb.tasks if tb.cells[(row, t)].n]


def to_markdown(tables: list[Table]) -> str:
    out = []
    for tb in tables:
        out.append(f"### {tb.key}\n\n{tb.caption()}\n")
        cols = [tb.task_labels[t] for t in tb.tasks] + ["Avg."]
        out.append("| method | " + " | ".join(cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for row in tb.rows + tb.paper_only_rows:
            cells = [_cell_text(tb.cells[(row, t)]) for t in tb.tasks] + [_cell_text(tb.cells[(row, "avg")], True)]
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out.append("")
        stat = _stat_rows(tb)
        if stat:
            out.append(f"#### {tb.key}: per-seed values\n\n{tb.seeds_caption()}\n")
            out.append("| method | task | n | values by seed | mean | 95% CI (t) | SD | median | paper | "
                       "ours − paper | MDE vs paper |")
            out.append("|---" * 11 + "|")
            for row, t, c in stat:
                out.append(f"| {row} | {tb.task_labels[t]} | {c.n} | {_seed_values(c.values)} | {_f(c.mean)} | "
                           f"{_ci(c.ci)} | {_f(c.std)} | {_f(c.median)} | {_f(c.paper)} | "
                           f"{_f(c.diff, True)} | {_f(c.mde_paper)} |")
            out.append("")
        if tb.paired:
            out.append(f"#### {tb.key}: paired differences vs {tb.baseline}\n\n{tb.paired_caption()}\n")
            out.append("| row − baseline | task | n | differences by seed | mean | 95% CI (t) | 95% CI (bootstrap) | "
                       "paired t p | Wilcoxon p | MDE (paired) | McNemar |")
            out.append("|---" * 11 + "|")
            for p in tb.paired:
                s = p.stats
                out.append(f"| {p.row} − {p.baseline} | {tb.task_labels[p.task]} | {s.n} | "
                           f"{_seed_values(s.diffs, s.seeds, True)} | {_f(s.mean, True)} | {_ci(s.t_ci, True)} | "
                           f"{_ci(s.bootstrap_ci, True)} | {_p(s.t_p)} | {_p(s.wilcoxon_p)} | {_f(s.mde)} | "
                           f"{_mcnemar_text(p)} |")
            out.append("")
    return "\n".join(out)


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("—", "--"), ("−", "-"), ("χ²", r"$\chi^2$"), ("√", r"$\sqrt{}$"),
                 ("<", r"$<$")):
        s = s.replace(a, b)
    return s


def to_latex(tables: list[Table]) -> str:
    out = []
    for tb in tables:
        cols = [tb.task_labels[t] for t in tb.tasks] + ["Avg."]
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
                "Method & " + " & ".join(_tex_escape(c) for c in cols) + r" \\", r"\midrule"]
        for row in tb.rows + tb.paper_only_rows:
            cells = []
            for t in tb.tasks + ["avg"]:
                c = tb.cells[(row, t)]
                ours = _f(c.median)
                if c.median is not None and t != "avg":
                    ours += rf"{{\scriptsize ${_f(c.mean)}\pm{_f(c.std)}$, n={c.n}}}"
                if c.paper is not None:
                    extra = f", {_f(c.diff, True)}" if c.diff is not None else ""
                    if c.mde_paper is not None and t != "avg":
                        extra += f", MDE {_f(c.mde_paper)}"
                    ours += rf" [{_f(c.paper)}{extra}]"
                cells.append(_tex_escape(ours) if c.median is None else ours.replace("—", "--"))
            out.append(_tex_escape(row) + " & " + " & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex_escape(tb.caption())}}}",
                rf"\label{{tab:{tb.key}}}", r"\end{table}", ""]
        if tb.paired:
            out += [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{llccccccc}", r"\toprule",
                    r"Row $-$ baseline & Task & n & Mean & 95\% CI (t) & 95\% CI (bootstrap) & $p_t$ & $p_W$ & "
                    r"MDE \\", r"\midrule"]
            for p in tb.paired:
                s = p.stats
                out.append(" & ".join(_tex_escape(x) for x in (
                    f"{p.row} − {p.baseline}", tb.task_labels[p.task], str(s.n), _f(s.mean, True),
                    _ci(s.t_ci, True), _ci(s.bootstrap_ci, True), _p(s.t_p), _p(s.wilcoxon_p), _f(s.mde))) + r" \\")
            out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex_escape(tb.paired_caption())}}}",
                    rf"\label{{tab:{tb.key}_paired}}", r"\end{table}", ""]
    return "\n".join(out)


CSV_FIELDS = ["table", "row", "task", "n", "median", "mean", "std", "ci_low", "ci_high", "values", "paper", "diff",
              "mde_paper", "selection"]
PAIRED_CSV_FIELDS = ["table", "row", "baseline", "task", "n", "seeds", "diffs", "mean", "sd", "t_ci_low", "t_ci_high",
                     "bootstrap_ci_low", "bootstrap_ci_high", "t_p", "wilcoxon_p", "mde_paired", "mcnemar_b",
                     "mcnemar_c", "mcnemar_n", "mcnemar_p", "mcnemar_test", "mcnemar_seeds"]


def _r(v: float | None, nd: int = 4) -> Any:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, nd)


def to_csv(tables: list[Table]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for tb in tables:
        for row in tb.rows + tb.paper_only_rows:
            for t in tb.tasks + ["avg"]:
                c = tb.cells[(row, t)]
                w.writerow({"table": tb.key, "row": row, "task": t, "n": c.n, "median": _r(c.median),
                            "mean": _r(c.mean), "std": _r(c.std), "ci_low": _r(c.ci[0]) if c.ci else "",
                            "ci_high": _r(c.ci[1]) if c.ci else "",
                            "values": ";".join(f"{s}:{v:.6g}" for s, v in c.values.items()),
                            "paper": "" if c.paper is None else c.paper, "diff": _r(c.diff),
                            "mde_paper": _r(c.mde_paper), "selection": "+".join(c.selections)})
    return buf.getvalue()


def to_paired_csv(tables: list[Table]) -> str:
    """One line per paired comparison (``report_paired.csv``); p values unrounded."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PAIRED_CSV_FIELDS)
    w.writeheader()
    for tb in tables:
        for p in tb.paired:
            s, m = p.stats, p.mcnemar
            w.writerow({"table": tb.key, "row": p.row, "baseline": p.baseline, "task": p.task, "n": s.n,
                        "seeds": ";".join(map(str, s.seeds)), "diffs": ";".join(f"{d:.6g}" for d in s.diffs),
                        "mean": _r(s.mean), "sd": _r(s.sd), "t_ci_low": _r(s.t_ci[0]), "t_ci_high": _r(s.t_ci[1]),
                        "bootstrap_ci_low": _r(s.bootstrap_ci[0]), "bootstrap_ci_high": _r(s.bootstrap_ci[1]),
                        "t_p": _r(s.t_p, 12), "wilcoxon_p": _r(s.wilcoxon_p, 12), "mde_paired": _r(s.mde),
                        "mcnemar_b": m.b if m else "", "mcnemar_c": m.c if m else "", "mcnemar_n": m.n if m else "",
                        "mcnemar_p": _r(m.p, 12) if m else "", "mcnemar_test": m.test if m else p.mcnemar_note,
                        "mcnemar_seeds": p.mcnemar_seeds})
    return buf.getvalue()


RENDERERS = {"md": to_markdown, "tex": to_latex, "csv": to_csv}
# Extra files a format brings: csv also writes the paired comparisons (report_paired.csv).
COMPANIONS = {"csv": {"paired.csv": to_paired_csv}}


def report(paths: Iterable[str | Path], out_dir: str | Path | None = None, formats: Iterable[str] = ("md", "tex", "csv"),
           wandb_path: str | None = None, baseline: str | None = "lora", plots: bool = False,
           wandb_images: bool = True, n_resamples: int = N_BOOTSTRAP, bootstrap_seed: int = BOOTSTRAP_SEED,
           selection: str | None = None) -> dict[str, str]:
    """Collect, aggregate and render; write ``report.<fmt>`` into ``out_dir`` when given. Returns the texts
    (``"paired.csv"`` too when csv is asked for).

    ``plots``: also write the figures of :mod:`kasa.analysis.plots` into ``out_dir/plots`` (PNG and PDF; and
    as W&B images when the runs logged to W&B and ``wandb_images``). Raises :class:`ReportError` for a path
    that does not exist, when no run is found at all, and for ``plots`` without ``out_dir``. ``selection``:
    ``best`` | ``last`` reads every run at that epoch instead of the one it reported (captions say which).
    """
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReportError(f"no such file or folder: {', '.join(missing)}")
    if plots and out_dir is None:
        raise ReportError("--plots needs --out DIR (the figures go to DIR/plots)")
    paper = load_paper_numbers()
    if selection not in (None, "best", "last"):
        raise ReportError(f"selection={selection!r}: use best or last")
    recs, cfgs = collect(paths, paper, selection)
    if wandb_path:
        recs += collect_wandb(wandb_path, paper, selection)
    if not recs:
        where = " ".join(str(p) for p in paths) + (f" or W&B project {wandb_path}" if wandb_path else "")
        raise ReportError(f"no runs found under {where} (no results.json with a reported metric)")
    tables = build_tables(recs, paper, baseline=baseline, n_resamples=n_resamples, bootstrap_seed=bootstrap_seed)
    texts = {fmt: RENDERERS[fmt](tables) for fmt in formats}
    for fmt in formats:
        texts.update({name: fn(tables) for name, fn in COMPANIONS.get(fmt, {}).items()})
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (out / (f"report.{name}" if "." not in name else f"report_{name}")).write_text(text)
    if plots:
        from . import plots as plotting

        written = plotting.write_plots(one_per_seed(recs, notes=False), tables, Path(out_dir) / "plots")
        texts["plots"] = "\n".join(str(p) for p in written)
        if wandb_images:
            logged = plotting.log_to_wandb(written, cfgs, Path(out_dir))
            if logged:
                texts["wandb"] = logged
    return texts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kasa-report", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", help="folders searched recursively for results.json (or the files)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read the runs of this W&B project")
    p.add_argument("--format", default="md,tex,csv", help="comma list of md, tex, csv (default: all)")
    p.add_argument("--out", help="folder for report.md/.tex/.csv (default: Markdown to stdout)")
    p.add_argument("--baseline", default="lora",
                   help="row the paired differences are taken against (default: lora; 'none': no paired tables)")
    p.add_argument("--plots", action="store_true",
                   help="also write learning curves, cost trade-offs and forest plots (PNG + PDF) to OUT/plots")
    p.add_argument("--no-wandb-images", action="store_true",
                   help="with --plots: do not log the figures to W&B even when the runs logged there")
    p.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, metavar="N",
                   help=f"bootstrap resamples for the paired intervals (default {N_BOOTSTRAP})")
    p.add_argument("--bootstrap-seed", type=int, default=BOOTSTRAP_SEED, help="numpy seed of the bootstrap")
    p.add_argument("--selection", choices=("best", "last"), default=None,
                   help="read every run at its best validation epoch or its last one (default: the epoch each run "
                        "reported, benchmark.selection); captions say which")
    a = p.parse_args(argv)
    formats = [f.strip() for f in a.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in RENDERERS]
    if bad:
        p.error(f"unknown format(s) {bad}; choose from {sorted(RENDERERS)}")
    if not a.paths and not a.wandb:
        p.error("give at least one folder or --wandb ENTITY/PROJECT")
    if a.bootstrap < 100:
        p.error(f"--bootstrap {a.bootstrap}: use at least 100 resamples")
    baseline = None if a.baseline.lower() == "none" else a.baseline
    try:
        texts = report(a.paths, a.out, formats, a.wandb, baseline=baseline, plots=a.plots,
                       wandb_images=not a.no_wandb_images, n_resamples=a.bootstrap, bootstrap_seed=a.bootstrap_seed,
                       selection=a.selection)
    except ReportError as exc:
        print(f"kasa-report: error: {exc}", file=sys.stderr)
        return 2
    if a.out:
        names = [f"report.{f}" for f in formats] + [f"report_{n}" for f in formats for n in COMPANIONS.get(f, {})]
        print(f"kasa-report: wrote {', '.join(names)} to {a.out}")
        if a.plots:
            print(f"kasa-report: wrote {len(texts['plots'].splitlines())} figure file(s) to {Path(a.out) / 'plots'}")
        if texts.get("wandb"):
            print(f"kasa-report: {texts['wandb']}")
    else:
        for fmt in formats:
            print(texts[fmt])
            for name in COMPANIONS.get(fmt, {}):
                print(texts[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
