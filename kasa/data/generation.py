"""Data of the generation families (E2E NLG, commonsense reasoning, instruction following).

Each loader returns plain records; :mod:`kasa.gen_families` turns them into prompts. Offline sources read
real BIG-bench data (``bigbench`` / ``bigbench_mix``); hub sources take a hub id or a local file in the
hub format (``json``/``jsonl``/``csv``/``parquet``), read by ``datasets.load_dataset``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..eval import commonsense as cs
from ..eval.utils import split_by_key
from .classification import DatasetError

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_rows(path: str, split: str = "train", name: str | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a hub dataset split, or of a local data file (``path`` ending .json/.jsonl/.csv/.parquet)."""
    import datasets

    suffix = Path(path).suffix.lower()
    if suffix in _FILE_BUILDERS:
        if not Path(path).exists():
            raise DatasetError(f"data file '{path}' does not exist")
        ds = datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=str(path), split="train", **kwargs)
    else:
        try:
            ds = datasets.load_dataset(path, name, split=split, **kwargs)
        except Exception as exc:  # offline / unknown id: name the dataset and the way out
            raise DatasetError(f"could not load dataset '{path}' (split {split}): {exc}. Offline, use the "
                               f"BIG-bench dataset configs or point dataset.source_args at a local copy (a data "
                               f"file, or a folder in the hub's layout).") from exc
    return [dict(r) for r in ds]


def _subsample(rows: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(rows):
        return rows
    return random.Random(seed).sample(rows, n)


# ---------------------------------------------------------------------------------------------------
# E2E NLG: {split: {mr: [references]}}


def e2e_splits(source: str, split_seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1),
               path: str = "tuetschek/e2e_nlg", eval_split: str = "validation",
               **load_kwargs: Any) -> dict[str, Mapping[str, list[str]]]:
    """``{"train": {mr: refs}, "eval": {mr: refs}}`` from BIG-bench ``gem/e2e_nlg`` or the hub/local E2E set."""
    from ..eval.e2e import load_e2e_bigbench, load_e2e_nlg

    if source == "bigbench":
        s = load_e2e_bigbench(fractions=tuple(fractions), seed=split_seed)
        return {"train": s["train"], "eval": s[eval_split]}
    if source == "hub":
        s = load_e2e_nlg(path, splits=["train", eval_split], **load_kwargs)
        return {"train": s["train"], "eval": s[eval_split]}
    raise DatasetError(f"unknown E2E source '{source}'; use bigbench or hub")


# ---------------------------------------------------------------------------------------------------
# commonsense: {"instruction", "input", "output", "answer"} records


BIGBENCH_COMMONSENSE = {"social_iqa": cs.bigbench_siqa, "strategyqa": cs.bigbench_strategyqa}


def commonsense_splits(source: str, tasks: Sequence[str] = ("social_iqa", "strategyqa"), split_seed: int = 0,
                       train_path: str | None = None, eval_dir: str | None = None,
                       eval_sets: Mapping[str, Mapping[str, Any]] | None = None,
                       max_train: int | None = None, max_eval_per_task: int | None = None
                       ) -> tuple[list[dict], dict[str, list[dict]]]:
    """Training records and ``{task: eval records}``.

    ``bigbench``: Social IQA and StrategyQA (as BoolQ) from BIG-bench, split 80/10/10 by instruction; the
    train parts are pooled (as Commonsense170K pools the 8 tasks) and every task is scored on its own
    validation part. ``hub``: ``train_path`` (Commonsense170K: a hub id or LLM-Adapters'
    ``commonsense_170k.json``) and either ``eval_dir`` (LLM-Adapters' ``dataset/`` folder with
    ``<task>/test.json``) or ``eval_sets`` (``{task: {path, name, split}}`` in the tasks' hub formats,
    converted by :func:`kasa.eval.commonsense.format_example`).
    """
    if source == "bigbench":
        train: list[dict] = []
        evals: dict[str, list[dict]] = {}
        for task in tasks:
            if task not in BIGBENCH_COMMONSENSE:
                raise DatasetError(f"no BIG-bench commonsense task '{task}'; known: {sorted(BIGBENCH_COMMONSENSE)}")
            parts = cs.split_examples(BIGBENCH_COMMONSENSE[task](), seed=split_seed)
            train += [{**r, "task": task} for r in parts["train"]]
            evals[task] = [dict(r) for r in parts["validation"]]
    elif source == "hub":
        if not train_path:
            raise DatasetError("commonsense source 'hub' needs train_path (Commonsense170K id or json file)")
        train = load_rows(train_path)
        evals = {}
        if eval_dir:
            for task in tasks:
                file = Path(eval_dir) / cs.canonical_task(task) / "test.json"
                evals[task] = load_rows(str(file))
        for task, spec in (eval_sets or {}).items():
            spec = dict(spec)
            rows = load_rows(spec.pop("path"), split=spec.pop("split", "validation"), name=spec.pop("name", None),
                             **spec)
            evals[task] = [cs.format_example(task, r) for r in rows]
        if not evals:
            raise DatasetError("commonsense source 'hub' needs eval_dir or eval_sets")
    else:
        raise DatasetError(f"unknown commonsense source '{source}'; use bigbench or hub")
    missing = [f for f in ("instruction", "output") if train and f not in train[0]]
    if missing:
        raise DatasetError(f"commonsense training records lack fields {missing}")
    for task, rows in evals.items():
        if rows and "answer" not in rows[0]:
            raise DatasetError(f"commonsense eval set '{task}' lacks the 'answer' field")
    train = _subsample(train, max_train, split_seed)
    evals = {t: _subsample(r, max_eval_per_task, split_seed) for t, r in evals.items()}
    return train, evals


# ---------------------------------------------------------------------------------------------------
# instruction following: Alpaca records {"instruction", "input", "output"}


def _bigbench_instructions() -> list[dict[str, str]]:
    """Open-ended instruction/response pairs built from real BIG-bench data (no synthetic text):
    StrategyQA questions with their written explanations, E2E restaurant descriptions, Social IQA answers."""
    from ..assets import bigbench_task

    out = []
    for ex in bigbench_task("strategyqa")["examples"]:
        if ex.get("target"):
            out.append({"instruction": "Answer the question with yes or no and explain why.",
                        "input": ex["input"].strip(), "output": ex["target"].strip(), "source": "strategyqa"})
    for ex in bigbench_task("gem/e2e_nlg")["examples"]:
        out.append({"instruction": "Write one sentence describing a restaurant with these attributes.",
                    "input": ex["input"].strip(), "output": ex["target"].strip(), "source": "e2e_nlg"})
    for ex in bigbench_task("social_iqa")["examples"]:
        scores = ex["target_scores"]
        best = [k for k, v in scores.items() if v == max(scores.values())]
        if len(best) == 1:
            out.append({"instruction": ex["input"].strip(), "input": "", "output": best[0].strip() + ".",
                        "source": "social_iqa"})
    return out


def chat_record(messages: Sequence[Mapping[str, Any]]) -> dict[str, str] | None:
    """The first user turn and the assistant reply after it as an Alpaca record, or None if there is no such pair.

    Leading system turns are put before the instruction (blank line between). Later turns are dropped: the
    synthetic sets and their test prompts are single-turn (LlamaDuo reads ``messages[0]`` / ``messages[1]``).
    """
    system: list[str] = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), (m.get("content") or "").strip()
        if role == "system":
            system.append(content)
            continue
        if role != "user" or i + 1 >= len(messages) or messages[i + 1].get("role") != "assistant":
            return None
        answer = (messages[i + 1].get("content") or "").strip()
        if not content or not answer:
            return None
        return {"instruction": "\n\n".join([*system, content]), "input": "", "output": answer}
    return None


def _chat_rows(path: str, split: str, revision: str | None) -> list[dict[str, Any]]:
    rows = load_rows(path, split=split, **({"revision": revision} if revision else {}))
    if rows and "messages" not in rows[0]:
        raise DatasetError(f"'{path}' split {split} has no 'messages' column (columns: {sorted(rows[0])}); "
                           "chat-format sets keep [{role, content}, ...] there")
    out = []
    for r in rows:
        rec = chat_record(r["messages"] or [])
        if rec is not None:
            rec["source"] = r.get("category") or path
            out.append(rec)
    if not out:
        raise DatasetError(f"'{path}' split {split} holds no user/assistant pair ({len(rows)} rows)")
    if len(out) < len(rows):
        print(f"[kasa] {path}[{split}]: {len(rows) - len(out)} of {len(rows)} rows have no user/assistant pair; "
              "skipped", flush=True)
    return out


def instruction_splits(source: str, path: str | None = None, split_seed: int = 0, val_fraction: float = 0.02,
                       max_train: int | None = None, max_eval: int | None = None, split: str = "train",
                       eval_path: str | None = None, eval_split: str | None = None, revision: str | None = None
                       ) -> tuple[list[dict], list[dict]]:
    """Alpaca-format training records and held-out records (no prompt is in both).

    ``bigbench``: the pairs of :func:`_bigbench_instructions`; ``hub``: ``path`` = ``yahma/alpaca-cleaned``
    (or any hub id / local json with ``instruction``, ``input``, ``output``); ``chat``: a set with a ``messages``
    column (the KaSA paper's GPT-4o synthetic sets ``llama-duo/synth_<task>_dataset_dedup``, split
    ``train_sft_gpt4o``), turned into records by :func:`chat_record`. Held-out records come from
    ``eval_path``/``eval_split`` when given (LlamaDuo's ``llama-duo/coverage_dataset``, ``test_<task>``), else
    ``val_fraction`` of the training set split by instruction + input; training prompts equal to a held-out
    prompt are dropped either way.
    """
    if source == "bigbench":
        rows = _bigbench_instructions()
    elif source == "hub":
        rows = load_rows(path or "yahma/alpaca-cleaned", split=split, **({"revision": revision} if revision else {}))
    elif source == "chat":
        if not path:
            raise DatasetError("instruction source 'chat' needs source_args.path (a hub id or local folder)")
        rows = _chat_rows(path, split, revision)
    else:
        raise DatasetError(f"unknown instruction source '{source}'; use bigbench, hub or chat")
    missing = [f for f in ("instruction", "output") if rows and f not in rows[0]]
    if missing or not rows:
        raise DatasetError(f"instruction data lack fields {missing or ['instruction', 'output']}")

    def key(r: Mapping[str, Any]) -> str:
        return f"{r['instruction']}\x00{r.get('input') or ''}"

    if eval_path or eval_split:
        if not (eval_path or path):
            raise DatasetError("a held-out split (eval_split) needs source_args.eval_path or source_args.path")
        held = _chat_rows(eval_path or path, eval_split or "test", revision if not eval_path else None)
        seen = {key(r) for r in held}
        train = [r for r in rows if key(r) not in seen]
        if len(train) < len(rows):
            print(f"[kasa] dropped {len(rows) - len(train)} training records whose prompt is a held-out prompt",
                  flush=True)
    else:
        parts = split_by_key(rows, key=key, fractions=(1 - val_fraction, val_fraction), names=("train", "eval"),
                             seed=split_seed)
        train, held = parts["train"], parts["eval"]
    return _subsample(train, max_train, split_seed), _subsample(held, max_eval, split_seed)
