"""Past one machine: trainer strategy configs, the SLURM launcher config, clear refusals, ZeRO-3 gathering."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from contextlib import contextmanager

import pytest
import torch
from conftest import kasa_train_cli, tiny_bert, tiny_cls, tiny_llama
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kasa.config import CONF_DIR
from kasa.errors import ConfigError
from kasa.methods import build_method, gathered
from kasa.recipe import run
from kasa.training.strategy import block_classes, build_strategy


def _compose(*overrides: str, hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_cfg)


@pytest.mark.parametrize("name,strategy", [("ddp", "ddp"), ("deepspeed", "deepspeed_stage_2"),
                                           ("fsdp", "lightning.pytorch.strategies.FSDPStrategy")])
def test_trainer_configs_compose_with_overridable_devices(name, strategy):
    t = _compose(f"trainer={name}", "trainer.devices=4", "trainer.num_nodes=2").trainer
    got = t.strategy if isinstance(t.strategy, str) else t.strategy._target_
    assert got == strategy and t.devices == 4 and t.num_nodes == 2
    assert t.max_epochs == _compose().trainer.max_epochs  # the default trainer's keys underneath


def test_fsdp_config_shards_transformer_blocks():
    s = _compose("trainer=fsdp").trainer.strategy
    assert s.sharding_strategy == "FULL_SHARD" and s.auto_wrap_policy == "transformer_blocks" and s.use_orig_params


def test_slurm_launcher_config():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "hydra.launcher.partition=gpu",
                   "hydra.launcher.timeout_min=30", hydra_cfg=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] == 30
    # one SLURM task per GPU, so SLURM (not Lightning) starts the DDP processes
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == 4 and launcher["nodes"] == 1
    assert {"cpus_per_task", "mem_gb", "account", "qos", "setup", "max_num_timeout"} <= set(launcher)


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is not None, reason="deepspeed installed")
def test_deepspeed_missing_is_one_clear_error_before_loading(tmp_path):
    cfg = _compose("trainer=deepspeed", "model.name_or_path=/no/such/model")  # never reached
    with pytest.raises(ConfigError, match="needs DeepSpeed, which kasa does not install: `pip install deepspeed`"):
        run(cfg, run_dir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("accelerator", ["auto", "cpu"])
def test_deepspeed_without_cuda_is_one_clear_error_before_loading(tmp_path, monkeypatch, accelerator):
    """DeepSpeed importable, no CUDA: kasa does not take DeepSpeed's CPU path; one line, before anything loads."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: importlib.machinery.ModuleSpec(
        "deepspeed", None) if name == "deepspeed" else real(name, *a, **k))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _compose("trainer=deepspeed", f"trainer.accelerator={accelerator}", "model.name_or_path=/no/such/model")
    with pytest.raises(ConfigError, match="needs CUDA GPUs .*kasa does not support DeepSpeed's CPU path") as info:
        run(cfg, run_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


def test_lightning_refusal_becomes_one_line_config_error(tiny_bert_dir, tmp_path):
    # (trainer=fsdp on CPU, the refusal this used to show, now runs: tests/test_fsdp.py)
    cfg = _compose("trainer=ddp", "trainer.strategy=no_such_strategy", "trainer.accelerator=cpu",
                   *tiny_cls(tiny_bert_dir), "method.r=4")
    with pytest.raises(ConfigError, match="invalid strategy name") as info:
        run(cfg, run_dir=tmp_path)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "checkpoints").exists()


def test_local_multirun_with_ddp_is_refused(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    def launch(*args, **kwargs):  # in this process a second rank would re-run pytest's command line
        raise AssertionError("the DDP launcher was about to start the other ranks")

    monkeypatch.setattr(_SubprocessScriptLauncher, "launch", launch)
    code = kasa_train_cli(monkeypatch, "-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                          *tiny_cls(tiny_bert_dir), "method.r=4", f"hydra.sweep.dir={tmp_path}")
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "kasa-train: error:" in err and "re-run the whole sweep" in err
    assert "Traceback" not in err


def test_wrap_policy_classes():
    bert, llama = tiny_bert(), tiny_llama()
    assert "BertLayer" in {c.__name__ for c in block_classes(bert, "transformer_blocks")}
    bert._no_split_modules = None  # a model that declares no blocks: the encoder's repeated layer class
    assert {c.__name__ for c in block_classes(bert, "transformer_blocks")} == {"BertLayer"}
    assert {c.__name__ for c in block_classes(llama, "transformer_blocks")} == {"LlamaDecoderLayer"}
    assert {c.__name__ for c in block_classes(llama, ["LlamaMLP"])} == {"LlamaMLP"}
    with pytest.raises(ConfigError, match="'NoSuchLayer' is not a module class"):
        block_classes(bert, ["NoSuchLayer"])
    from lightning.pytorch.strategies import FSDPStrategy

    spec = OmegaConf.to_container(_compose("trainer=fsdp").trainer.strategy)
    assert isinstance(build_strategy(spec, llama), FSDPStrategy)
    assert build_strategy("ddp", llama) == "ddp"


# -- gathering ZeRO-3 partitioned weights for the SVD inits ---------------------------------------------
def test_gathered_is_a_no_op_for_plain_tensors(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # importing it would fail: it must not be tried
    w = torch.randn(4, 3)
    before = w.clone()
    with gathered(w):
        w += 1
    with gathered([w, torch.zeros(2)]):
        pass
    assert torch.equal(w, before + 1)


def test_gathered_without_deepspeed_is_a_no_op_even_for_partitioned_params(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    p = torch.nn.Parameter(torch.randn(3))
    p.ds_id = 7
    with gathered(p):
        pass


@pytest.mark.parametrize("name", ["kasa", "pissa", "sara"])
def test_apply_gathers_partitioned_target_weights_once(monkeypatch, name):
    """With DeepSpeed present, ``apply`` reads and rewrites targets inside one GatheredParameters block."""
    calls: list[tuple[list[int], int | None]] = []
    inside = {"now": False, "svd_inside": 0, "svd_outside": 0}

    @contextmanager
    def fake_gathered(params, modifier_rank=None):
        calls.append(([id(p) for p in params], modifier_rank))
        inside["now"] = True
        try:
            yield
        finally:
            inside["now"] = False

    model = tiny_bert()  # before the fake module: transformers probes for deepspeed on first import
    fake = types.ModuleType("deepspeed")
    fake.__spec__ = importlib.machinery.ModuleSpec("deepspeed", None)  # find_spec() must not fail on it
    fake.zero = types.SimpleNamespace(GatheredParameters=fake_gathered)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    real_svd = torch.linalg.svd

    def spy_svd(*a, **k):
        inside["svd_inside" if inside["now"] else "svd_outside"] += 1
        return real_svd(*a, **k)

    monkeypatch.setattr(torch.linalg, "svd", spy_svd)
    targets = [m.weight for n, m in model.named_modules() if n.endswith(("query", "value"))]
    for w in targets:
        w.ds_id = 1  # what ZeRO-3 puts on a partitioned parameter
    kw = {"target_modules": ["query", "value"]} if name == "sara" else {"r": 4, "svd_method": "svd"} \
        if name == "kasa" else {"r": 4}
    build_method(name, **kw).apply(model)
    assert calls == [([id(w) for w in targets], 0)]
    assert inside["svd_outside"] == 0 and inside["svd_inside"] >= 1
