"""Rendering tables as Markdown, LaTeX and CSV, and :func:`report`: collect, aggregate, render, write the
files and hand the figures to :mod:`kasa.analysis.plots`."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable

from kasa.analysis.report.collect import collect, collect_wandb, load_paper_numbers, one_per_seed
from kasa.analysis.report.tables import MISSING, Cell, PairedRow, Table, build_tables
from kasa.analysis.stats import BOOTSTRAP_SEED, N_BOOTSTRAP
from kasa.errors import ReportError


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
    """``report.md``: per table the main table, then per-seed values and paired differences where there are any."""
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
    """``report.tex``: a booktabs table per paper table, plus one of paired differences where there are any."""
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
    """``report.csv``: one line per (table, row, task or avg) cell (:data:`CSV_FIELDS`)."""
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


def report(paths: Iterable[str | Path], out_dir: str | Path | None = None,
           formats: Iterable[str] = ("md", "tex", "csv"), wandb_path: str | None = None,
           baseline: str | None = "lora", plots: bool = False,
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
        from kasa.analysis import plots as plotting  # matplotlib only when figures are asked for

        written = plotting.write_plots(one_per_seed(recs, notes=False), tables, Path(out_dir) / "plots")
        texts["plots"] = "\n".join(str(p) for p in written)
        if wandb_images:
            logged = plotting.log_to_wandb(written, cfgs, Path(out_dir))
            if logged:
                texts["wandb"] = logged
    return texts
