"""Finished sweeps keep their config hashes: run folders, resume, sweep skipping and report pooling all go by
:func:`kasa.runs.hashing.config_hash`, so a refactor or a new setting at its neutral default must not change it.

The expected values were computed at commit 81ea2b3 (2026-12-07, before the layout change of issue 20 and the
structured ``benchmark.optim`` / ``lm_eval`` / ``judge`` sections): each is that commit's hash of
``kasa-train <overrides>``'s composed config.
"""

from __future__ import annotations

import pytest

from kasa.config import compose
from kasa.runs.hashing import config_hash

PINNED = [
    (['benchmark=classification', 'method=kasa'], 'd62d34f261b8'),
    (['benchmark=classification', 'method=lora'], '50445d13f660'),
    (['benchmark=classification', 'method=corda'], 'a890d45b6847'),
    (['benchmark=glue', 'method=kasa'], 'f6ef5fa026f9'),
    (['benchmark=glue', 'method=lora'], '12c15bb4ad4e'),
    (['benchmark=glue', 'method=corda'], 'c61b576b6612'),
    (['benchmark=e2e', 'method=kasa'], 'a323da80c59d'),
    (['benchmark=e2e', 'method=lora'], 'a00775f8c7c0'),
    (['benchmark=e2e', 'method=corda'], 'ec0c5b7b2afe'),
    (['benchmark=commonsense', 'method=kasa'], 'f9e96703b4b6'),
    (['benchmark=commonsense', 'method=lora'], '92c4f8a00db5'),
    (['benchmark=commonsense', 'method=corda'], '02473cb6e792'),
    (['benchmark=instruction', 'method=kasa'], '2cf6d177a23e'),
    (['benchmark=instruction', 'method=lora'], '71f2ad58ddac'),
    (['benchmark=instruction', 'method=corda'], 'b1c0a5647782'),
    (['dataset=vader_movie5'], 'd62d34f261b8'),
    (['dataset=vader_tweets3'], '85b5d6c1199a'),
    (['dataset=sarcasm'], '08dd80893278'),
    (['dataset=glue_mrpc'], 'a17e3164ddbb'),
    (['dataset=glue_sst2'], 'd3f98f16f084'),
    (['dataset=vader_sst2'], 'a8d0899ce494'),
    (['experiment=beta_gamma_sensitivity'], '5cba9488fda4'),
    (['experiment=commonsense'], '407df0311777'),
    (['experiment=component_ablation'], '47e9a7790b8f'),
    (['experiment=e2e_gpt2'], '39cc28441aa9'),
    (['experiment=glue_deberta_v3_base'], '99d3c4f13fb6'),
    (['experiment=glue_roberta_base'], '07fa1ee5815d'),
    (['experiment=glue_roberta_large'], 'ded391b41984'),
    (['experiment=instruction_following'], '5466f54b6a71'),
    (['experiment=mini'], '3495b89bafd8'),
    (['experiment=mini_ablation'], 'e5ed3ceb3b46'),
    (['experiment=mini_powered'], '651853db63af'),
    (['experiment=rank_sweep'], '91b270fd8616'),
    (['experiment=reference_forms'], '962cf3897c29'),
    (['experiment=sv_heatmap'], '8cf0563f0e93'),
    (['experiment=truncation_rank'], 'e6efabf54b4e'),
    (['benchmark=instruction', 'benchmark.judge.backend=openai', 'benchmark.judge.base_url=http://x'], 'd3274905f51f'),
    (['benchmark=commonsense', 'benchmark.lm_eval.tasks=[arc_easy]'], '53ba8eadc27e'),
    (['benchmark=e2e', 'benchmark.generation.num_beams=4'], '02b1e048767f'),
    (['benchmark.optim.lr=1e-3', 'benchmark.optim.scheduler=constant'], '28ce92f9476f'),
    # a finished Table 1 run's folder (docs/reproduction.md, made at f0b39c2, before AdaLoRA's *_frac options)
    (['experiment=table1_minilm', 'method=adalora_minilm', 'dataset=vader_movie5', 'seed=0'], 'be6538b15413'),
]


@pytest.mark.parametrize("overrides, expected", PINNED, ids=[" ".join(o) for o, _ in PINNED])
def test_config_hash_is_what_it_was(overrides, expected):
    assert config_hash(compose(overrides)) == expected
