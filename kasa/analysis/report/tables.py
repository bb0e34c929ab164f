"""Aggregation and statistics: records -> one :class:`Table` per paper table, with per-cell summaries over
seeds, the paper's numbers beside them, and paired differences against a baseline row (tests from
:mod:`kasa.analysis.stats`)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

from kasa.analysis.report.collect import Record, load_correctness, load_paper_numbers, one_per_seed
from kasa.analysis.stats import (
    BOOTSTRAP_SEED,
    MCNEMAR_EXACT_BELOW,
    N_BOOTSTRAP,
    McNemar,
    Paired,
    mcnemar_from_correct,
    mde_unpaired,
    paired,
    summarise,
)

MISSING = "—"
# The paper's numbers come from one run per cell (KASA.md: the reference logs' seed 0) unless paper_numbers.json
# gives a table "paper_seeds"; the MDE against it is unpaired with m = that many runs.
PAPER_SEEDS = 1


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
        """Our median - the paper's number; None when either is missing."""
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
    """One paper table: rows (methods and their varied knobs) by tasks plus ``avg``, with captions per part."""

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
        """The main table's caption: how a cell is aggregated, the epoch read, runs, comparability flags."""
        sel = {"best": "the best validation epoch", "last": "the last epoch"}
        read = " and ".join(sel.get(s, s) for s in sorted(self.selections)) or "?"
        mixed = " (MIXED across runs)" if len(self.selections) > 1 else ""
        sara = ""
        if any(r.split()[0].lower() == "sara" for r in self.rows + self.paper_only_rows):
            from kasa.methods.sara import UNVERIFIED_NOTE  # the method package only when a SARA row needs its note

            sara = f" {UNVERIFIED_NOTE}."
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
        """Caption of the per-seed values table."""
        return (f"{self.title}: per-seed values. 95% CI: Student's t interval of the mean over the seeds "
                f"(mean ± t(0.975, n−1)·SD/√n; none for n = 1). MDE vs paper: as in the table above.")

    def paired_caption(self) -> str:
        """Caption of the paired-differences table: the tests and their caveats."""
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


def pooled_mcnemar(row_recs: dict[int, Record], base_recs: dict[int, Record], seeds: Iterable[int],
                    cache: dict[tuple, Any]) -> tuple[McNemar | None, int, str]:
    """McNemar over the pooled predictions of ``seeds``; (None, 0, why) when no seed has both runs' predictions.
    ``cache`` keeps each record's correctness between calls."""
    def corr(r: Record):
        # one run holds a record per task (commonsense) and its correctness is the task's: the key names both
        key = (r.source, r.task, r.epoch, r.step)
        if key not in cache:
            cache[key] = load_correctness(r)
        return cache[key]

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
    cache: dict[tuple, Any] = {}
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
                    mc, used, note = pooled_mcnemar(mine, base, st.seeds, cache)
                    tb.paired.append(PairedRow(row, tb.baseline, t, st, mc, used, note))
        tables.append(tb)
    return tables
