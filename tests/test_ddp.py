"""Data parallel: 2-process DDP on CPU (gloo) trains the same model as one process with the same global batch.

Also the samplers that make that true: one (seed, epoch) permutation sharded by rank for training, an
unrepeated split of the dev set for validation (every example scored once, none padded in twice).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DP_COMMON, PER_RANK_BATCH, WORLD, assert_same_as_one_process, tiny_cls

from kasa.training.samplers import EpochSampler, ShardSampler

REPO = Path(__file__).resolve().parents[1]


# -- samplers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,world,batch", [(24, 2, 4), (25, 2, 4), (30, 3, 2)])
def test_rank_batches_together_are_the_one_process_batch(n, world, batch):
    one = list(EpochSampler(n, seed=3, num_replicas=1, rank=0))
    ranks = [list(EpochSampler(n, seed=3, num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # same number of steps on every rank (padded)
    for k in range(len(ranks[0]) // batch):
        together = sorted(i for r in ranks for i in r[k * batch:(k + 1) * batch])
        assert together == sorted(one[k * world * batch:(k + 1) * world * batch])
    assert sorted(set(i for r in ranks for i in r)) == list(range(n))  # padding only repeats


def test_epoch_sampler_follows_set_epoch_and_stays_single_process_without_a_group():
    s = EpochSampler(10, seed=0)
    assert (s.num_replicas, s.rank, len(s)) == (1, 0, 10)
    first = list(s)
    s.set_epoch(1)
    assert sorted(list(s)) == list(range(10)) and list(s) != first
    # Lightning leaves a DistributedSampler alone instead of wrapping it in its own
    assert isinstance(s, torch.utils.data.DistributedSampler)


@pytest.mark.parametrize("n,world", [(79, 2), (10, 3), (4, 4)])
def test_shard_sampler_scores_every_dev_example_once(n, world):
    shards = [list(ShardSampler(n, num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(ShardSampler(n, num_replicas=world, rank=r)) for r in range(world)] == [len(s) for s in shards]
    assert list(ShardSampler(n)) == list(range(n))


# -- 2-process DDP vs 1 process --------------------------------------------------------------------------
def test_ddp_two_processes_equal_one_process_same_global_batch(dp_model_dir, dp_one_process, tmp_path):
    model, (one_dir, one) = dp_model_dir, dp_one_process  # one process at batch WORLD x PER_RANK_BATCH (conftest)
    ddp_dir = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    # Through the CLI: Lightning's DDP launcher re-runs this command line for rank 1 (hydra.run.dir shared).
    cmd = [sys.executable, "-m", "kasa.train", *DP_COMMON, *tiny_cls(model), "trainer=ddp",
           f"trainer.devices={WORLD}", f"benchmark.batch_size={PER_RANK_BATCH}", f"hydra.run.dir={ddp_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ddp = json.loads((ddp_dir / "results.json").read_text())
    assert ddp["config"]["trainer"]["strategy"] == "ddp"
    a, _ = assert_same_as_one_process("DDP", ddp_dir, ddp, one_dir, one)
    assert any(k.endswith("lora_diag") for k in a)
    moved = max(a[k].abs().max().item() for k in a if k.endswith("lora_B"))  # lora_B starts at zero
    assert moved > 1e-3  # training did change the adapter, so agreement is not trivial


@pytest.mark.slow  # two full kasa-train processes on the 49k-token tiny Llama and the E2E scorers (~30 s on 2 cores);
# the CLI's DDP launch stays in the default suite (above); the 2-rank gather of per-example dev outputs is slow too
# (classification predictions: tests/test_report_predictions.py::test_ddp_ranks_gather_every_dev_example_once)
def test_ddp_generation_validation_scores_every_prompt_once(tiny_causal_dir, tmp_path, e2e_data):
    """Two ranks generate for their own shares of the E2E prompts; the scores cover all of them, once."""
    from kasa.tasks.e2e.task import E2EEvaluator

    run_dir = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "kasa.train", "benchmark=e2e", e2e_data, f"model.name_or_path={tiny_causal_dir}",
           "method=lora", "method.r=4", "trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={WORLD}",
           "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
           "dataset.max_train=16", "dataset.max_eval=5", "benchmark.batch_size=4", "benchmark.eval_batch_size=2",
           "benchmark.generation.num_beams=1", "benchmark.generation.max_new_tokens=6", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "generations" / "epoch0.jsonl").read_text().splitlines()]
    assert res["split_sizes"]["validation"] == 5 and len({r["mr"] for r in rows}) == 5  # 3 + 2 across the ranks
    from kasa.training.causal_lm import EvalItem

    items = [EvalItem(r["prompt"], {"mr": r["mr"], "references": r["references"]}) for r in rows]
    expected = E2EEvaluator()(items, [r["generation"] for r in rows], None, None)
    final = res["metrics"]["final"]
    assert set(final) == set(expected)
    for k, v in expected.items():  # the logged scores are those of all five prompts, not of one rank's share
        assert final[k] == pytest.approx(v, abs=1e-9, nan_ok=True), k
