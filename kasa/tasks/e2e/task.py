"""E2E NLG (the paper's GPT-2 table): ``MR -> reference`` pairs, beam search, the five official E2E metrics.

Splits: ``tuetschek/e2e_nlg`` (``hub``: the hub, or a local folder of the original release's CSV files; no package
on the index ships E2E), or BIG-bench ``gem/e2e_nlg`` for users who have BIG-bench (``bigbench``, a user path);
training uses every (MR, reference) pair, validation one beam-search output per unique MR scored against all its
references by :func:`kasa.tasks.e2e.metrics.e2e_metrics` (the ``tuetschek/e2e-metrics`` definitions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from kasa.tasks.base import CausalLMTask, Examples, as_dict, cap
from kasa.tasks.e2e.data import e2e_splits
from kasa.training.causal_lm import BaseEvaluator, CompletionExample, EvalItem


class E2EEvaluator(BaseEvaluator):
    """The five official E2E metrics of one output per MR against that MR's references (paper scale:
    BLEU, METEOR, ROUGE-L x100). The output is cut at its first newline: a completion is one line."""

    def __init__(self, use_java: bool | None = None):
        self.use_java = use_java
        self.info: dict[str, Any] = {"evaluator": "e2e-metrics"}

    def __call__(self, items: Sequence[EvalItem], generations: Sequence[str], module: Any,
                 out_dir: Path | None) -> dict[str, float]:
        from kasa.tasks.e2e.metrics import e2e_metrics, to_paper_scale

        hyps = [g.split("\n")[0].strip() for g in generations]
        scores = e2e_metrics(hyps, [it.meta["references"] for it in items], use_java=self.use_java)
        self.info = {"evaluator": "e2e-metrics", "backend": scores.backend, "n_instances": scores.n_instances,
                     "scale": "BLEU, METEOR, ROUGE_L x100; NIST, CIDEr as computed",
                     "not_comparable": scores.not_comparable}  # METEOR without Java (kasa-report flags it)
        return to_paper_scale(scores)


def examples(cfg: DictConfig) -> Examples:
    """E2E NLG: train on every (MR, reference) pair, validate by beam search once per unique MR."""
    d, b = cfg.dataset, cfg.benchmark
    s = e2e_splits(d.source, **as_dict(d.get("source_args")))
    prompt, completion = b.get("prompt_template", "{context} ->"), b.get("completion_template", " {completion}")
    pairs = [(mr, ref) for mr, refs in s["train"].items() for ref in refs]
    pairs = cap(pairs, d.get("max_train"), cfg.seed)
    train = [CompletionExample(prompt.format(context=mr), completion.format(completion=ref)) for mr, ref in pairs]
    grouped = list(s["eval"].items())[: d.get("max_eval")]
    items = [EvalItem(prompt.format(context=mr), {"mr": mr, "references": list(refs)}) for mr, refs in grouped]
    return (train, items, E2EEvaluator(b.get("use_java")),
                   {"train": len(train), "validation": len(items),
                    "validation_references": sum(len(it.meta["references"]) for it in items)})


class E2ETask(CausalLMTask):
    """E2E NLG: MR -> text, beam search, the official E2E metrics."""

    name = "e2e"
    default_monitor = "BLEU"

    def examples(self, cfg: DictConfig) -> Examples:
        return examples(cfg)


TASK = E2ETask()
