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

    kasa-report multirun/ outputs/ --out reports/          # report.md, report.tex, report.csv
    kasa-report sweeps/glue --format md                    # Markdown to stdout
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

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.json")
# Metrics stored as fractions in results.json and printed in percent, as the paper does.
FRACTION_METRICS = {"accuracy", "accuracy_m", "accuracy_mm", "f1", "mcc", "pearson", "spearman"}
# Config keys that tell rows of one table apart when a study varies them (first match wins for stages).
VARIANT_KEYS = ("study.stage", "method.r", "method.alpha", "method.beta", "method.gamma", "method.truncation_rank",
                "method.truncation", "method.regularizer", "method.singular_values")
MISSING = "—"
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
    """The flattened config minus :data:`REPORT_IGNORE` (and everything under those keys)."""
    return {k: v for k, v in _flatten(cfg).items()
            if not any(k == ign or k.startswith(ign + ".") for ign in REPORT_IGNORE)}


def pooling_hash(cfg: dict[str, Any]) -> str:
    """Runs with the same hash differ only in the seed (and settings that do not change the computation)."""
    blob = json.dumps(_pooled_items(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _scale(metric: str, value: float) -> float:
    return value * 100.0 if metric in FRACTION_METRICS and abs(value) <= 1.0 else value


def records_from_results(res: dict[str, Any], source: str = "", paper: dict[str, Any] | None = None,
                         mtime: float = 0.0) -> list[Record]:
    """Records of one results.json: one per task (several when a run evaluates several tasks, e.g. commonsense)."""
    cfg = res.get("config") or {}
    m = res.get("metrics") or {}
    reported = m.get("reported") or {}
    selection = m.get("selection") or "?"
    table = table_key(cfg, paper)
    method = str(res.get("method") or _get(cfg, "method.name"))
    seed = int(res.get("seed", _get(cfg, "seed") or 0))
    common = dict(table=table, method=method, variant="", seed=seed, selection=selection, source=source,
                  not_comparable=tuple(sorted((res.get("evaluation") or {}).get("not_comparable") or ())),
                  group=pooling_hash(cfg), mtime=float(mtime))
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


def collect(paths: Iterable[str | Path], paper: dict[str, Any] | None = None) -> tuple[list[Record], list[dict]]:
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
            new = records_from_results(res, str(f), paper, mtime=mtime)
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


def collect_wandb(path: str, paper: dict[str, Any] | None = None) -> list[Record]:
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
        selection = _get(cfg, "benchmark.selection") or "best"
        value = max(hist) if selection == "best" else hist[-1]
        res = {"config": cfg, "method": _get(cfg, "method.name"), "seed": cfg.get("seed", 0),
               "dataset": _get(cfg, "dataset.name"),
               "metrics": {"reported": {monitor: value}, "selection": selection, "monitor": monitor}}
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
    n: int = 0
    median: float | None = None
    mean: float | None = None
    std: float | None = None
    paper: float | None = None
    selections: tuple[str, ...] = ()

    @property
    def diff(self) -> float | None:
        return None if self.median is None or self.paper is None else self.median - self.paper


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

    def caption(self) -> str:
        sel = {"best": "the best validation epoch", "last": "the last epoch"}
        read = " and ".join(sel.get(s, s) for s in sorted(self.selections)) or "?"
        mixed = " (MIXED across runs)" if len(self.selections) > 1 else ""
        sara = (" sara: rank rule unverified (arXiv 2408.03290 not reachable; see kasa/methods/sara.py)."
                if any(r.split()[0].lower() == "sara" for r in self.rows + self.paper_only_rows) else "")
        return (f"{self.title}. Cell: median over seeds, then mean ± std (n seeds); the paper's number and "
                f"our − paper difference beside it; {MISSING}: missing. Metric read at {read}{mixed} "
                f"(results.json metrics.selection). {self.n_runs} run(s)."
                + "".join(f" NOT COMPARABLE with the official scorer: {m} in {n} run(s) (results.json "
                          f"evaluation.not_comparable)." for m, n in sorted(self.not_comparable.items()))
                + sara)


def _stats(values: list[float]) -> tuple[float, float, float]:
    med = statistics.median(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return med, mean, std


def build_tables(recs: list[Record], paper: dict[str, Any] | None = None) -> list[Table]:
    """Aggregate records into one :class:`Table` per paper table (plus tables the paper lacks)."""
    paper = paper if paper is not None else load_paper_numbers()
    by_table: dict[str, list[Record]] = {}
    for r in one_per_seed(recs):
        by_table.setdefault(r.table, []).append(r)
    tables = []
    for key in sorted(by_table):
        rs = by_table[key]
        ref = paper.get(key, {})
        ref_tasks = list(ref.get("tasks", {}))
        tasks = ref_tasks + sorted({r.task for r in rs} - set(ref_tasks))
        labels = {t: ref.get("tasks", {}).get(t, t) for t in tasks}
        rows: list[str] = []
        values: dict[tuple[str, str], list[Record]] = {}
        for r in rs:
            row = r.method + (f" ({r.variant})" if r.variant else "")
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
                got = values.get((row, t), [])
                c = Cell(paper=paper_row.get(t), selections=tuple(sorted({g.selection for g in got})))
                if got:
                    c.n = len(got)
                    c.median, c.mean, c.std = _stats([g.value for g in got])
                cells[(row, t)] = c
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
        tables.append(Table(key, ref.get("title", key), tasks, labels, rows, cells, extra,
                            {r.selection for r in rs}, len({(r.source, r.seed) for r in rs}),
                            {m: len(v) for m, v in flagged.items()}))
    return tables


# ------------------------------------------------------------------------------------------------------
# rendering

def _f(v: float | None, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def _cell_text(c: Cell, avg: bool = False) -> str:
    if c.median is None:
        ours = MISSING
    elif avg:
        ours = _f(c.median)
    else:
        ours = f"{_f(c.median)} ({_f(c.mean)} ± {c.std:.1f}, n={c.n})"
    if c.paper is None:
        return ours
    return f"{ours} / paper {_f(c.paper)} ({_f(c.diff, signed=True)})" if c.median is not None else \
        f"{MISSING} / paper {_f(c.paper)}"


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
    return "\n".join(out)


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("—", "--"), ("−", "-")):
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
                    ours += rf"{{\scriptsize ${_f(c.mean)}\pm{c.std:.1f}$}}"
                if c.paper is not None:
                    ours += rf" [{_f(c.paper)}" + (f", {_f(c.diff, True)}]" if c.diff is not None else "]")
                cells.append(_tex_escape(ours) if c.median is None else ours.replace("—", "--"))
            out.append(_tex_escape(row) + " & " + " & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_tex_escape(tb.caption())}}}",
                rf"\label{{tab:{tb.key}}}", r"\end{table}", ""]
    return "\n".join(out)


CSV_FIELDS = ["table", "row", "task", "n", "median", "mean", "std", "paper", "diff", "selection"]


def to_csv(tables: list[Table]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    for tb in tables:
        for row in tb.rows + tb.paper_only_rows:
            for t in tb.tasks + ["avg"]:
                c = tb.cells[(row, t)]
                w.writerow({"table": tb.key, "row": row, "task": t, "n": c.n,
                            "median": "" if c.median is None else round(c.median, 4),
                            "mean": "" if c.mean is None else round(c.mean, 4),
                            "std": "" if c.std is None else round(c.std, 4),
                            "paper": "" if c.paper is None else c.paper,
                            "diff": "" if c.diff is None else round(c.diff, 4),
                            "selection": "+".join(c.selections)})
    return buf.getvalue()


RENDERERS = {"md": to_markdown, "tex": to_latex, "csv": to_csv}


def report(paths: Iterable[str | Path], out_dir: str | Path | None = None, formats: Iterable[str] = ("md", "tex", "csv"),
           wandb_path: str | None = None) -> dict[str, str]:
    """Collect, aggregate and render; write ``report.<fmt>`` into ``out_dir`` when given. Returns the texts.

    Raises :class:`ReportError` for a path that does not exist and when no run is found at all.
    """
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReportError(f"no such file or folder: {', '.join(missing)}")
    paper = load_paper_numbers()
    recs, _ = collect(paths, paper)
    if wandb_path:
        recs += collect_wandb(wandb_path, paper)
    if not recs:
        where = " ".join(str(p) for p in paths) + (f" or W&B project {wandb_path}" if wandb_path else "")
        raise ReportError(f"no runs found under {where} (no results.json with a reported metric)")
    tables = build_tables(recs, paper)
    texts = {fmt: RENDERERS[fmt](tables) for fmt in formats}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for fmt, text in texts.items():
            (out / f"report.{fmt}").write_text(text)
    return texts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kasa-report", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", help="folders searched recursively for results.json (or the files)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read the runs of this W&B project")
    p.add_argument("--format", default="md,tex,csv", help="comma list of md, tex, csv (default: all)")
    p.add_argument("--out", help="folder for report.md/.tex/.csv (default: Markdown to stdout)")
    a = p.parse_args(argv)
    formats = [f.strip() for f in a.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in RENDERERS]
    if bad:
        p.error(f"unknown format(s) {bad}; choose from {sorted(RENDERERS)}")
    if not a.paths and not a.wandb:
        p.error("give at least one folder or --wandb ENTITY/PROJECT")
    try:
        texts = report(a.paths, a.out, formats, a.wandb)
    except ReportError as exc:
        print(f"kasa-report: error: {exc}", file=sys.stderr)
        return 2
    if a.out:
        print(f"kasa-report: wrote {', '.join(f'report.{f}' for f in formats)} to {a.out}")
    else:
        for fmt in formats:
            print(texts[fmt])
    return 0


if __name__ == "__main__":
    sys.exit(main())
