"""The throughput table of ``python -m kasa.perf --throughput`` on a tiny Llama: every batching mode is timed on the
same examples, the loss per token is the same for all of them, packing and grouping cut the padding."""

from __future__ import annotations

import transformers as T

from kasa.methods import build_method
from kasa.perf.throughput import MODES, format_section, measure, padding_share
from kasa.training.causal_lm import CompletionExample

WORDS = "a mat on the cat sat near two dogs by an old barn".split()


def _examples(n: int) -> list[CompletionExample]:
    return [CompletionExample("Q: " + " ".join(WORDS[: 2 + (7 * i) % 11]) * (1 + i % 3) + "\nA:",
                              " " + " ".join(WORDS[: 1 + (5 * i) % 9])) for i in range(n)]


def test_padding_share():
    assert padding_share([[4, 2], [3]]) == (1 - 9 / 11, 9, 11)


def test_measure_on_a_tiny_llama(tiny_causal_dir):
    tok = T.AutoTokenizer.from_pretrained(tiny_causal_dir)
    model = T.AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    build_method("lora", r=2).apply(model)
    res = measure(model, tok, _examples(24), _examples(60), max_length=64, batch_size=4, reps=2, warmup=0)
    rows = {row["mode"]: row for row in res["rows"]}
    assert list(rows) == list(MODES)
    assert len({row["real"] for row in rows.values()}) == 1  # the same tokens through every mode
    assert max(r["loss"] for r in rows.values()) - min(r["loss"] for r in rows.values()) < 1e-5
    assert rows["packed"]["share"] <= rows["grouped"]["share"] < rows["padded"]["share"]
    assert rows["padded"]["ratio"] == 1.0 and all(r["tokens_per_s"] > 0 for r in rows.values())
    assert rows["packed"]["whole"][3] < rows["padded"]["whole"][3]  # fewer steps per epoch
    text = "\n".join(format_section(res, 2, 4, 64, 2, 1.0))
    assert "| packed | off |" in text and "What the length distribution allows" in text


def test_generation_table_on_a_tiny_llama(tiny_causal_dir):
    """``python -m kasa.perf --generation``'s rows: every variant over the same prompts, the same new tokens."""
    from kasa.perf.generation import format_section as format_generation
    from kasa.perf.generation import measure as measure_generation

    tok = T.AutoTokenizer.from_pretrained(tiny_causal_dir, padding_side="left")
    model = T.AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    prompts = [f"Below is a question.\n\n### Instruction:\n{' '.join(WORDS[: 2 + i % 9])}?\n\n### Response:\n"
               for i in range(10)]
    res = measure_generation(model, tok, prompts, batch_sizes=(4, 8), reps=1, max_new_tokens=3)
    rows = {(row["variant"], row["batch"]): row for row in res["rows"]}
    assert set(rows) == {("plain", 4), ("prefix", 4), ("plain", 8), ("prefix", 8)}
    assert rows[("plain", 4)]["ratio"] == 1.0 and all(r["per_s"] > 0 for r in rows.values())
    assert rows[("prefix", 4)]["same"] >= 9  # the same tokens (a near-tie may flip one on some CPU)
    text = "\n".join(format_generation(res, 2, 1, 1.0))
    assert "| prefix | 8 |" in text and "same tokens as plain" in text
