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

Modules: :mod:`.collect` (runs -> records), :mod:`.tables` (aggregates and statistics), :mod:`.render`
(Markdown/LaTeX/CSV, :func:`report`, figures via :mod:`kasa.analysis.plots`), :mod:`kasa.cli.report` (``kasa-report``).
"""

from __future__ import annotations

# Last, on purpose: importing the submodule binds the package attribute ``collect`` to the module; this rebinds it
# to the function, which is what ``from kasa.analysis.report import collect`` has always meant.
from kasa.analysis.report.collect import (
                                         PAPER_NUMBERS,
                                         PREDICTIONS_DIR,
                                         REPORT_IGNORE,
                                         TASK_ALIASES,
                                         VARIANT_KEYS,
                                         Record,
                                         ReportError,
                                         collect,
                                         collect_wandb,
                                         load_correctness,
                                         load_paper_numbers,
                                         one_per_seed,
                                         pooling_hash,
                                         records_from_results,
                                         table_key,
)
from kasa.analysis.report.render import (
                                         COMPANIONS,
                                         CSV_FIELDS,
                                         PAIRED_CSV_FIELDS,
                                         RENDERERS,
                                         report,
                                         to_csv,
                                         to_latex,
                                         to_markdown,
                                         to_paired_csv,
)
from kasa.analysis.report.tables import MISSING, PAPER_SEEDS, Cell, PairedRow, Table, build_tables, pick_baseline

__all__ = ["COMPANIONS", "CSV_FIELDS", "MISSING", "PAIRED_CSV_FIELDS", "PAPER_NUMBERS", "PAPER_SEEDS",
           "PREDICTIONS_DIR", "RENDERERS", "REPORT_IGNORE", "TASK_ALIASES", "VARIANT_KEYS", "Cell", "PairedRow",
           "Record", "ReportError", "Table", "build_tables", "collect", "collect_wandb", "load_correctness",
           "load_paper_numbers", "one_per_seed", "pick_baseline", "pooling_hash", "records_from_results",
           "report", "table_key", "to_csv", "to_latex", "to_markdown", "to_paired_csv"]
