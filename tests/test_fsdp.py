"""FSDP on CPU processes (gloo): 2-process ``trainer=fsdp`` trains the same adapter as one process with the same
global batch, as tests/test_ddp.py shows for DDP; and what FSDP cannot do on CPU is refused in one line.

The frozen base is sharded by FSDP (FULL_SHARD, one unit per transformer block); the PEFT method's trainable tensors
stay whole on every rank with DDP-averaged gradients (:func:`kasa.training.strategy.build_strategy`), so KaSA's
regulariser and the SVD-initialised methods see whole matrices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    PER_RANK_BATCH,
    WORLD,
    assert_same_as_one_process,
    dp_common,
    dp_one_process_run,
    no_dropout_copy,
    tiny_bert,
    tiny_cls,
)
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kasa.config import CONF_DIR
from kasa.errors import ConfigError
from kasa.methods import build_method
from kasa.recipe import run
from kasa.training.strategy import CPUFSDPStrategy, build_strategy

REPO = Path(__file__).resolve().parents[1]
FSDP_TARGET = "lightning.pytorch.strategies.FSDPStrategy"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _fsdp_run(model: Path, run_dir: Path, method: str) -> dict:
    """``trainer=fsdp`` on WORLD CPU processes through the CLI (Lightning's launcher re-runs the command line for
    rank 1), :func:`conftest.dp_common`'s run with ``method``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "kasa.train", *dp_common(method), *tiny_cls(model), "trainer=fsdp",
           "trainer.accelerator=cpu", f"trainer.devices={WORLD}", f"benchmark.batch_size={PER_RANK_BATCH}",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


def _assert_same_training(fsdp_dir: Path, fsdp: dict, one_dir: Path, one: dict) -> dict[str, torch.Tensor]:
    """Same steps, dev metrics, val losses and trained adapter (+ head) as one process; returns the adapter."""
    assert fsdp["config"]["trainer"]["strategy"]["_target_"] == FSDP_TARGET
    return assert_same_as_one_process("FSDP", fsdp_dir, fsdp, one_dir, one)[0]


@pytest.mark.slow  # two processes, ~23 s on 2 cores: over the default suite's 8-minute budget (make test-slow runs
# it; the DDP test keeps a 2-process launch in the default suite, and the FSDP refusals below stay there too)
def test_fsdp_kasa_two_cpu_processes_equal_one_process(dp_model_dir, dp_one_process, tmp_path):
    """KaSA with its default truncation (the r smallest singular triplets of W removed before FSDP wraps the
    model) and its L2/L3 regulariser, which reads the adapters in the training step, after the forward. The
    one-process run is the DDP test's (conftest.dp_one_process)."""
    assert _compose("method=kasa").method.truncation == "paper"
    fsdp = _fsdp_run(dp_model_dir, tmp_path / "fsdp", "kasa")
    a = _assert_same_training(tmp_path / "fsdp", fsdp, *dp_one_process)
    assert any(k.endswith("lora_diag") for k in a)
    assert max(a[k].abs().max().item() for k in a if k.endswith("lora_B")) > 1e-3  # lora_B starts at zero


@pytest.mark.slow  # two more FSDP/1-process pairs (26 s and 29 s on 2 busy cores)
@pytest.mark.parametrize("method", ["lora", "pissa"])
def test_fsdp_lora_and_pissa_two_cpu_processes_equal_one_process(tiny_bert_dir, tmp_path, method):
    """LoRA; PiSSA, initialised from the SVD of the whole weights (applied before FSDP shards them): its saved
    initial factors (buffers) come through FSDP's full state dict too."""
    model = no_dropout_copy(tiny_bert_dir, tmp_path / "bert")
    fsdp = _fsdp_run(model, tmp_path / "fsdp", method)
    one = dp_one_process_run(model, tmp_path / "one", method)
    a = _assert_same_training(tmp_path / "fsdp", fsdp, tmp_path / "one", one)
    if method == "lora":
        moved = max(a[k].abs().max().item() for k in a if k.endswith("lora_B"))  # lora_B starts at zero
    else:
        assert any(k.endswith("residual_init_A") for k in a)
        moved = max((a[k] - a[k.replace("lora_", "residual_init_")]).abs().max().item()
                    for k in a if k.endswith(("lora_A", "lora_B")))
    assert moved > 1e-3, moved


# -- how the strategy is built ----------------------------------------------------------------------------
def test_fsdp_strategy_on_cpu_and_cuda():
    """CPU processes get :class:`CPUFSDPStrategy`; CUDA keeps Lightning's own class. Either way the method's
    trainable tensors are left out of FSDP's sharding (whole on every rank), the frozen base is not."""
    from lightning.pytorch.strategies import FSDPStrategy

    model = tiny_bert()
    build_method("kasa", r=4).apply(model)
    spec = OmegaConf.to_container(_compose("trainer=fsdp").trainer.strategy)
    trainable = [p for p in model.parameters() if p.requires_grad]
    cpu, cuda = build_strategy(spec, model, "cpu"), build_strategy(spec, model, "gpu")
    assert type(cpu) is CPUFSDPStrategy and type(cuda) is FSDPStrategy
    for s in (cpu, cuda):
        assert s.kwargs["ignored_states"] == trainable and s.kwargs["use_orig_params"]
        assert "BertLayer" in {c.__name__ for c in s.kwargs["auto_wrap_policy"]._module_classes}
    assert type(build_strategy(spec, model, "auto")) is (FSDPStrategy if torch.cuda.is_available()
                                                          else CPUFSDPStrategy)
    full = tiny_bert()  # FFT: every parameter trains, FSDP shards them all
    assert "ignored_states" not in build_strategy(spec, full, "cpu").kwargs


def test_fsdp_refuses_a_method_whose_checkpoint_is_not_model_tensors():
    from kasa.training.base import PeftModule

    model, method = tiny_bert(), build_method("vera", r=4)
    method.apply(model)
    module = PeftModule(model, method)
    module._trainer = SimpleNamespace(strategy=CPUFSDPStrategy())
    with pytest.raises(ConfigError, match="method=vera under FSDP: .* use trainer=ddp"):
        module.setup("fit")


@pytest.mark.parametrize("override,message", [
    ("trainer.precision=bf16-mixed", "autocasts on CUDA only"),
    ("trainer.precision=16-mixed", "gradient scaler is CUDA-only"),
    ("trainer.strategy.cpu_offload=true", "already live in CPU memory"),
    ("trainer.strategy.sharding_strategy=HYBRID_SHARD", "never syncs the ranks' gradients"),
    ("trainer.strategy.sharding_strategy=NO_SHARD", "NO_SHARD is data parallel, use trainer=ddp"),
    ("trainer.strategy.state_dict_type=sharded", "keep state_dict_type=full"),
    ("trainer.gradient_clip_val=1.0", "cannot clip gradients by norm with FSDP"),
])
def test_what_fsdp_cannot_do_on_cpu_is_one_line_before_loading(tmp_path, override, message):
    cfg = _compose("trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", override,
                   "model.name_or_path=/no/such/model")  # never reached
    with pytest.raises(ConfigError, match=message) as info:
        run(cfg, run_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


def test_lightning_fsdp_registry_name_on_cpu_points_to_the_config(tmp_path):
    cfg = _compose("trainer=ddp", "trainer.strategy=fsdp", "trainer.accelerator=cpu",
                   "model.name_or_path=/no/such/model")
    with pytest.raises(ConfigError, match="use trainer=fsdp trainer.accelerator=cpu"):
        run(cfg, run_dir=tmp_path)
