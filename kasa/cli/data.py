"""``kasa-data preview [overrides]``: what a run would be fed, from the same composed config as ``kasa-train``.

It composes ``conf/train.yaml`` with the overrides, runs the same validation, and builds the family's datamodule
(:meth:`kasa.tasks.base.Task.data`: data and tokenizer, never the model). It prints:

- the first ``--n`` training examples as the model sees them: the decoded tokens, cut where ``max_length`` cuts
  them, and for causal LMs which tokens carry the loss (the part inside ``[[ ]]`` is masked out, the rest is
  learned);
- the label distribution of classifiers (train and validation) and the split sizes;
- token-length percentiles against ``max_length``;
- how many examples are truncated, and how many are dropped (a causal-LM prompt that fills ``max_length`` leaves
  nothing to learn).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any, Sequence

from kasa.cli.console import report_error
from kasa.errors import KasaError

IGNORE_INDEX = -100


def percentiles(lengths: Sequence[int], qs: Sequence[int] = (50, 90, 99)) -> dict[str, int]:
    """Nearest-rank percentiles and the maximum of ``lengths``."""
    s = sorted(lengths)
    out = {f"p{q}": s[min(len(s) - 1, max(0, -(-q * len(s) // 100) - 1))] for q in qs}
    out["max"] = s[-1]
    return out


def _masked(tokenizer: Any, ids: Sequence[int], labels: Sequence[int]) -> str:
    """Decoded tokens with the runs of loss-free tokens inside ``[[ ]]``."""
    parts, run, masked = [], [], None
    for t, y in zip(ids, labels):
        m = y == IGNORE_INDEX
        if masked is not None and m != masked:
            text = tokenizer.decode(run)
            parts.append(f"[[{text}]]" if masked else text)
            run = []
        run.append(t)
        masked = m
    if run:
        text = tokenizer.decode(run)
        parts.append(f"[[{text}]]" if masked else text)
    return "".join(parts)


def preview(cfg: Any, n: int = 3) -> dict[str, Any]:
    """The preview of a composed config as a dict (``lines`` is what the CLI prints)."""
    from kasa.config.validate import validate
    from kasa.tasks import get_task

    validate(cfg)
    task = get_task(cfg.benchmark.get("family"))
    data = task.data(cfg)
    dm, tok, max_len = data.datamodule, data.tokenizer, data.max_length
    dm.setup("fit")
    lines = [f"kasa-data: {cfg.benchmark.family} / {cfg.dataset.name} / {cfg.model.name} tokenizer, "
             f"max_length {max_len}; splits {dict(data.split_sizes)}"]
    out: dict[str, Any] = {"split_sizes": dict(data.split_sizes), "max_length": max_len}
    if task.causal_lm:
        from kasa.training.causal_lm import encode_pair

        full = [encode_pair(tok, ex.prompt, ex.completion, 10**9, dm.train_on_inputs) for ex in dm.train_examples]
        lengths = [len(e["input_ids"]) for e in full]
        out.update(truncated=sum(x > max_len for x in lengths), dropped=dm.n_dropped)
        shown = dm._train.rows[:n]
        for i, row in enumerate(shown):
            lines.append(f"--- train example {i} ({len(row['input_ids'])} tokens; [[ ]] = no loss)")
            lines.append(_masked(tok, row["input_ids"], row["labels"]))
        prompts = [len(r["input_ids"]) for r in dm._eval.rows]
        out["eval_prompt_lengths"] = percentiles(prompts)
        lines.append(f"eval prompts: {len(prompts)}, token length {out['eval_prompt_lengths']}")
    else:
        splits = dm.splits
        pairs = [e.text_pair for e in splits.train]
        enc = tok([e.text for e in splits.train], pairs if any(p is not None for p in pairs) else None,
                  truncation=False)
        lengths = [len(x) for x in enc["input_ids"]]
        out.update(truncated=sum(x > max_len for x in lengths), dropped=0)
        names = data.label_names or []
        for part, examples in (("train", splits.train), ("validation", splits.validation)):
            if names:
                counts = Counter(names[e.label] for e in examples)
                dist = {k: counts[k] for k in names}
                lines.append(f"labels ({part}): " + ", ".join(f"{k} {v} ({v / len(examples):.1%})"
                                                                for k, v in dist.items()))
                out[f"labels_{part}"] = dist
            else:
                values = sorted(float(e.label) for e in examples)
                lines.append(f"labels ({part}): regression, min {values[0]:g}, median {values[len(values) // 2]:g}, "
                             f"max {values[-1]:g}")
        for i, feats in enumerate(dm._train.features[:n]):
            label = splits.train[i].label
            shown = names[label] if names else label
            lines.append(f"--- train example {i} ({len(feats['input_ids'])} tokens, label {shown!r})")
            lines.append(tok.decode(feats["input_ids"]))
    out["train_lengths"] = percentiles(lengths)
    lines.append(f"train token length {out['train_lengths']} against max_length {max_len}: {out['truncated']} of "
                 f"{len(lengths)} truncated ({out['truncated'] / len(lengths):.1%}), {out['dropped']} dropped")
    out["lines"] = lines
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``kasa-data``."""
    ap = argparse.ArgumentParser(prog="kasa-data", description="What a kasa-train run would be fed, without "
                                 "loading the model.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preview", help="examples as the model sees them, labels, lengths, truncation")
    p.add_argument("overrides", nargs="*", help="kasa-train's Hydra overrides (dataset=files dataset.train=...)")
    p.add_argument("-n", type=int, default=3, help="training examples to print (default 3)")
    args = ap.parse_args(argv)
    from kasa.cli.train import compose_error
    from kasa.config import compose

    problem = compose_error(list(args.overrides))
    if problem:
        print(f"kasa-data: error: {problem}", file=sys.stderr)
        return 2
    try:
        res = preview(compose(list(args.overrides)), n=args.n)
    except KasaError as exc:
        return report_error("kasa-data", exc)
    print("\n".join(res["lines"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
