"""Metric implementations of the benchmark families (the families themselves are in :mod:`kasa.benchmarks`).

- :mod:`kasa.eval.e2e`: E2E NLG metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr) as the official script.
- :mod:`kasa.eval.commonsense`: LLM-Adapters' commonsense prompts, answer extraction and accuracy.
- :mod:`kasa.eval.judge`: MT-Bench / instruction-following LLM judge with cached judgements.

Submodules are imported on demand (their dependencies are optional extras).
"""
