"""kasa.training.optim against the code it follows: transformers' warmup schedules (as the KaSA reference
main.py and microsoft/LoRA's gpt2_ft.py call them), the reference's AdamW parameter groups, Lightning's step
count, the causal-LM label smoothing of microsoft/LoRA, and named errors for bad values."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from conftest import TINY_MODELS, tiny_bert, tiny_gpt2, tiny_inputs
from hydra import compose, initialize_config_dir
from torch import nn
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from kasa.config import CONF_DIR
from kasa.config.validate import validate
from kasa.errors import ConfigError
from kasa.methods import build_method
from kasa.tasks.classification.module import ClassificationModule
from kasa.training import OptimConfig, build_optimizer
from kasa.training.causal_lm import CausalLMModule
from kasa.training.optim import param_groups


def _toy() -> tuple[nn.Module, list[nn.Parameter]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    return model, list(model[2].parameters())


def _lrs(sched: torch.optim.lr_scheduler.LRScheduler, opt: torch.optim.Optimizer, total: int) -> list[list[float]]:
    """The lr of every group before each of ``total`` optimiser steps (what that step uses)."""
    out = []
    for _ in range(total):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total, warmup_ratio", [(100, 0.06), (1234, 0.06), (10, 0.06)])
def test_linear_schedule_is_transformers_with_the_reference_unrounded_warmup(total, warmup_ratio):
    # main.py: get_linear_schedule_with_warmup(num_warmup_steps=warmup_ratio * (len(loader) * epochs), ...)
    model, head = _toy()
    o = OptimConfig(lr=3e-4, head_lr=1e-3, warmup_ratio=warmup_ratio)
    ours = build_optimizer(model, head, o, total)
    opt, sched = ours["optimizer"], ours["lr_scheduler"]["scheduler"]
    assert ours["lr_scheduler"]["interval"] == "step"
    ref_opt = torch.optim.AdamW([{"params": g["params"], "lr": g["initial_lr"]} for g in opt.param_groups])
    ref = get_linear_schedule_with_warmup(ref_opt, num_warmup_steps=warmup_ratio * total, num_training_steps=total)
    got, want = _lrs(sched, opt, total), _lrs(ref, ref_opt, total)
    warm = int(warmup_ratio * total)
    for step in sorted({0, 1, warm, warm + 1, total - 1}):
        assert got[step] == pytest.approx(want[step], rel=1e-12, abs=1e-15), step
    assert set(got[0]) == {0.0}  # the factor is step / warmup from 0 (the old schedule began at 1 / (warmup + 1))
    assert max(sched.get_last_lr()) == pytest.approx(0.0, abs=1e-15)  # zero once all steps are taken


def test_absolute_warmup_and_constant_schedule_are_transformers():
    model, head = _toy()
    total = 2000
    got = build_optimizer(model, head, OptimConfig(lr=2e-4, warmup_steps=500), total)
    ref_opt = torch.optim.AdamW([{"params": g["params"], "lr": 2e-4} for g in got["optimizer"].param_groups])
    ref = get_linear_schedule_with_warmup(ref_opt, 500, total)  # microsoft/LoRA E2E: --warmup_step 500
    a, b = _lrs(got["lr_scheduler"]["scheduler"], got["optimizer"], total), _lrs(ref, ref_opt, total)
    for step in (0, 1, 499, 500, 501, total - 1):
        assert a[step] == pytest.approx(b[step], rel=1e-12, abs=1e-15), step

    model, head = _toy()
    got = build_optimizer(model, head, OptimConfig(lr=1e-3, scheduler="constant", warmup_ratio=0.1), 50)
    ref_opt = torch.optim.AdamW([{"params": g["params"], "lr": 1e-3} for g in got["optimizer"].param_groups])
    ref = get_constant_schedule_with_warmup(ref_opt, 5.0)
    a, b = _lrs(got["lr_scheduler"]["scheduler"], got["optimizer"], 50), _lrs(ref, ref_opt, 50)
    for step in range(50):
        assert a[step] == pytest.approx(b[step], rel=1e-12, abs=1e-15), step
    assert a[0][0] == 0.0 and a[-1][0] == pytest.approx(1e-3)


@pytest.mark.parametrize("total, warmup", [(100, {"warmup_ratio": 0.06}), (37, {"warmup_steps": 5}),
                                          (10, {"warmup_ratio": 0.0})])
def test_cosine_schedule_is_transformers(total, warmup):
    model, head = _toy()
    o = OptimConfig(lr=3e-4, head_lr=1e-3, scheduler="cosine", **warmup)
    got = build_optimizer(model, head, o, total)
    opt, sched = got["optimizer"], got["lr_scheduler"]["scheduler"]
    ref_opt = torch.optim.AdamW([{"params": g["params"], "lr": g["initial_lr"]} for g in opt.param_groups])
    ref = get_cosine_schedule_with_warmup(ref_opt, num_warmup_steps=o.num_warmup_steps(total), num_training_steps=total)
    a, b = _lrs(sched, opt, total), _lrs(ref, ref_opt, total)
    for step in range(total):
        assert a[step] == pytest.approx(b[step], rel=1e-12, abs=1e-15), step
    warm = o.num_warmup_steps(total)
    mid = int(warm + (total - warm) / 2)  # half way down the half cosine: about half the peak lr
    assert a[mid][-1] == pytest.approx(3e-4 / 2, rel=0.1)
    assert max(sched.get_last_lr()) == pytest.approx(0.0, abs=1e-15)


def test_no_decay_switch():
    model, head = _toy()
    head_ids = {id(p) for p in head}

    def groups(no_decay):
        return [({id(p) for p in g["params"]}, g["lr"], g["weight_decay"])
                for g in param_groups(model, head, OptimConfig(lr=1e-3, head_lr=2e-3, weight_decay=0.1,
                                                               no_decay=no_decay))]

    rest = {id(p) for p in model.parameters()} - head_ids
    # none: the reference's AdamW([{classifier, head_lr}, {the rest, module_lr}], weight_decay=wd)
    assert groups("none") == [(head_ids, 2e-3, 0.1), (rest, 1e-3, 0.1)]
    vectors = {id(p) for p in model.parameters() if p.ndim < 2}
    assert groups("ndim_lt_2") == [(head_ids - vectors, 2e-3, 0.1), (head_ids & vectors, 2e-3, 0.0),
                                   (rest - vectors, 1e-3, 0.1), (rest & vectors, 1e-3, 0.0)]


def test_adamw_defaults_are_the_reference_ones():
    # main.py: torch.optim.AdamW(groups, weight_decay=wd), every other argument at its default
    model, head = _toy()
    opt = build_optimizer(model, head, OptimConfig(), 10)["optimizer"]
    ref = torch.optim.AdamW(model.parameters())
    for k in ("betas", "eps", "amsgrad", "maximize"):
        assert opt.defaults[k] == ref.defaults[k], k
    assert isinstance(opt, torch.optim.AdamW)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        x = tiny_inputs(seed=i, batch=1)
        return {"input_ids": x["input_ids"][0], "attention_mask": x["attention_mask"][0], "labels": i % 3}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_total_steps_are_the_optimiser_steps_lightning_takes(accumulate):
    # 37 examples, batch 8: 5 batches an epoch (the last one short, as a DataLoader without drop_last), 2 epochs.
    # The reference (no accumulation) schedules len(train_dataloader) * num_epochs = 10 steps.
    model = tiny_bert()
    method = build_method("lora", r=2, target_modules=["query", "value"])
    method.apply(model)
    module = ClassificationModule(model, method, num_labels=3, metrics=["accuracy"], optim=OptimConfig(lr=1e-3))
    loader = torch.utils.data.DataLoader(_Pairs(37), batch_size=8, shuffle=False)
    trainer = L.Trainer(max_epochs=2, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    want = math.ceil(len(loader) / accumulate) * 2
    assert trainer.estimated_stepping_batches == want == trainer.global_step
    assert want == (len(loader) * 2 if accumulate == 1 else 6)
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == want and sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-15)


def test_label_smoothing_is_microsoft_loras_token_loss():
    model = tiny_gpt2()
    method = build_method("lora", r=2)
    method.apply(model)
    x = tiny_inputs(seed=3, batch=2, seq=9)
    labels = x["input_ids"].clone()
    labels[:, :4] = -100  # the prompt
    labels[1, 7:] = -100  # padding
    batch = {**x, "labels": labels}
    out = model(**batch)

    plain = CausalLMModule(model, method, None, None, optim=OptimConfig(label_smoothing=0.0))
    assert plain.task_loss(out, batch) is out.loss

    eps = 0.1
    smooth = CausalLMModule(model, method, None, None, optim=OptimConfig(label_smoothing=eps))
    got = smooth.task_loss(out, batch)
    # examples/NLG/src/model.py: (1 - eps) * nll + eps * mean(-log p), masked, summed / number of target tokens
    logp = torch.log_softmax(out.logits[:, :-1].double(), dim=-1)
    tgt = labels[:, 1:]
    mask = (tgt != -100).double()
    nll = -logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    loss = ((1 - eps) * nll + eps * (-logp.mean(-1))) * mask
    assert float(got) == pytest.approx(float(loss.sum() / mask.sum()), rel=1e-5)
    assert float(got) != pytest.approx(float(out.loss), rel=1e-3)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("override, message", [
    # every benchmark.optim value is checked in one place, kasa.training.optim.OptimConfig
    ("benchmark.optim.no_decay=biases", "benchmark.optim.no_decay='biases' is not allowed; use one of ndim_lt_2, none"),
    ("benchmark.optim.scheduler=polynomial", "benchmark.optim.scheduler='polynomial' is not allowed; use one of"),
    ("benchmark.optim.scheduler=cosine", None),
    ("benchmark.optim.loraplus_lr_ratio=0", "benchmark.optim.loraplus_lr_ratio=0 is not allowed; use null"),
    ("benchmark.optim.loraplus_lr_ratio=16", None),  # the default method, KaSA, declares its dU B-like
    ("benchmark.early_stopping.patience=0", "benchmark.early_stopping.patience=0 is not allowed; use null"),
    ("benchmark.early_stopping.min_delta=-1", "benchmark.early_stopping.min_delta=-1 is not allowed"),
    ("+benchmark.early_stopping.mode=min", "benchmark.early_stopping: .*mode"),
    ("benchmark.optim.warmup_ratio=6", r"benchmark.optim.warmup_ratio=6\S* is not allowed"),
    ("benchmark.optim.warmup_ratio=1", None),  # the whole run warms up: allowed
    ("benchmark.optim.warmup_steps=-1", "benchmark.optim.warmup_steps=-1 is not allowed; use null or an integer"),
    ("benchmark.optim.lr=abc", "benchmark.optim.lr='abc' is not allowed; use a number > 0"),
    ("benchmark.optim.betas=[0.9,1.5]", r"benchmark.optim.betas=\[0.9, 1.5\] is not allowed"),
    ("+benchmark.optim.momentum=0.9", "benchmark.optim: .*momentum"),  # `+` adds past the schema: validate names it
    ("benchmark.optim.label_smoothing=0.1", "label_smoothing=0.1: only the causal-LM benchmarks"),
])
def test_bad_optim_values_fail_in_validate_with_a_named_error(override, message):
    if message is None:
        validate(_compose(override))
        return
    with pytest.raises(ConfigError, match=message):
        validate(_compose(override))


# -- LoRA+ -------------------------------------------------------------------------------------------------
def _peft_name(name: str) -> str:
    """HF PEFT's name of a parameter -> kasa's name of the same parameter."""
    name = name.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".")
    for factor in ("lora_A", "lora_B"):
        name = name.replace(f".{factor}.default.weight", f".{factor}")
    return name


def _named_groups(model: nn.Module, groups: list[dict]) -> list[tuple[set[str], float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [({names[id(p)] for p in g["params"]}, g.get("initial_lr", g["lr"]), g["weight_decay"])  # before warmup
            for g in groups if g["params"]]


@pytest.mark.parametrize("arch, targets, heads, task_type, shape", [
    # the classifier's bias and the LayerNorm: B without decay
    ("bert", ["query", "value"], ["classifier", "embeddings.LayerNorm"], "SEQ_CLS",
     [(1e-3, 0.1), (1.6e-2, 0.1), (1.6e-2, 0.0)]),
    # LlamaRMSNorm is no LayerNorm to transformers' get_parameter_names: B with decay, as in PEFT
    ("llama", ["q_proj", "v_proj", "up_proj"], ["model.norm"], "CAUSAL_LM", [(1e-3, 0.1), (1.6e-2, 0.1)]),
])
def test_loraplus_groups_are_hf_peft_create_loraplus_optimizer(arch, targets, heads, task_type, shape):
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer

    torch.manual_seed(0)
    theirs = get_peft_model(TINY_MODELS[arch](), LoraConfig(task_type=task_type, r=4, target_modules=targets,
                                                            modules_to_save=heads))
    ref = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16,
                                    loraplus_weight_decay=0.1)
    want = [({_peft_name(n) for n in names}, lr, wd) for names, lr, wd in _named_groups(theirs, ref.param_groups)]

    ours = TINY_MODELS[arch]()
    method = build_method("lora", r=4, target_modules=targets, modules_to_save=heads)
    method.apply(ours)
    o = OptimConfig(lr=1e-3, weight_decay=0.1, loraplus_lr_ratio=16)
    got = build_optimizer(ours, method.head_parameters(ours), o, 10, method.loraplus_b_params)["optimizer"]
    assert _named_groups(ours, got.param_groups) == want
    assert [lr for _, lr, _ in want] == pytest.approx([lr for lr, _ in shape])
    assert [wd for *_, wd in want] == [wd for _, wd in shape]
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert set().union(*(names for names, *_ in want)) == trainable and len(trainable) > 8


@pytest.mark.parametrize("name", ["kasa", "pissa", "milora", "dora", "corda"])
def test_loraplus_puts_every_methods_b_like_factor_in_the_fast_group(name):
    model = tiny_bert()
    method = build_method(name, r=4, target_modules=["query", "value"])
    if method.needs_calibration:
        method.apply(model, calibration=[tiny_inputs(seed=7)])
    else:
        method.apply(model)
    assert method.loraplus_b_params == ("lora_B",)
    o = OptimConfig(lr=1e-3, weight_decay=0.1, loraplus_lr_ratio=8)
    groups = _named_groups(model, param_groups(model, method.head_parameters(model), o, method.loraplus_b_params))
    leaf = {n: n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    a = [g for g in groups if g[1] == 1e-3]
    b = set().union(*(names for names, lr, _ in groups if lr == 8e-3))
    assert len(a) == 1 and {leaf[n] for n in a[0][0]} == {"lora_A", "weight"}  # dV^T / A, and the head weight
    fast = {"kasa": {"lora_B", "lora_diag", "bias"}, "dora": {"lora_B", "lora_magnitude", "bias"}}
    assert {leaf[n] for n in b} == fast.get(name, {"lora_B", "bias"})  # 1-D parameters go with B (PEFT's rule)
    assert sum(len(names) for names, *_ in groups) == len(leaf)


def test_loraplus_with_head_lr_keeps_the_head_in_its_own_groups():
    model = tiny_bert()
    method = build_method("lora", r=4, target_modules=["query"])
    method.apply(model)
    head = method.head_parameters(model)
    o = OptimConfig(lr=1e-3, head_lr=5e-3, weight_decay=0.1, loraplus_lr_ratio=4)
    groups = param_groups(model, head, o, method.loraplus_b_params)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(5e-3, 0.1), (5e-3, 0.0), (1e-3, 0.1), (4e-3, 0.1)]
    assert {id(p) for g in groups[:2] for p in g["params"]} == {id(p) for p in head}
    with pytest.raises(ValueError, match="declares no B-like parameters"):
        param_groups(model, head, o, ())


@pytest.mark.parametrize("name", ["vera", "fft", "bitfit"])
def test_loraplus_on_a_method_without_b_factors_is_one_config_error(name):
    with pytest.raises(ConfigError, match=f"loraplus_lr_ratio=16.0: method {name} has no B-like up-projection"):
        validate(_compose(f"method={name}", "benchmark.optim.loraplus_lr_ratio=16.0"))


def test_new_optimiser_keys_at_their_defaults_keep_every_config_hash():
    """loraplus_lr_ratio and the early_stopping section came later: at their defaults (off) a config hashes, and
    pools in kasa-report, as one written before they existed; set, they change the hash."""
    from omegaconf import OmegaConf

    from kasa.analysis.report import pooling_hash
    from kasa.runs.hashing import config_hash

    for bench in ("classification", "glue", "e2e"):
        cfg = _compose(f"benchmark={bench}")
        old = OmegaConf.create(OmegaConf.to_container(cfg))
        del old.benchmark.optim["loraplus_lr_ratio"], old.benchmark["early_stopping"]
        assert config_hash(cfg) == config_hash(old), bench
        assert pooling_hash(OmegaConf.to_container(cfg)) == pooling_hash(OmegaConf.to_container(old))
        assert config_hash(_compose(f"benchmark={bench}", "benchmark.early_stopping.min_delta=0.5")) == config_hash(old)
        for on in ("benchmark.optim.loraplus_lr_ratio=16", "benchmark.early_stopping.patience=3",
                   "benchmark.optim.scheduler=cosine"):
            assert config_hash(_compose(f"benchmark={bench}", on)) != config_hash(cfg), on
    # the default config's hash as it was before the keys existed (kasa 436c400)
    assert config_hash(_compose()) == "d62d34f261b8"
