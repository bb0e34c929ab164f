"""``method.init_from=<PEFT folder>``: an adapter made and saved by HF PEFT, loaded into kasa, gives PEFT's logits;
a folder that does not match the run (rank, alpha, type, targets) or is damaged is refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_MODELS, model_output, tiny_cls, tiny_inputs

from kasa.methods import MethodError, build_method
from kasa.methods.export import load_peft_adapter

peft = pytest.importorskip("peft")
TOL = 1e-5


def _peft_config(name: str, model_name: str):
    from peft import AdaLoraConfig, KasaConfig, LoraConfig, VeraConfig

    targets = ["query", "value"] if model_name == "bert" else ["q_proj", "v_proj", "down_proj"]
    head = {"modules_to_save": ["classifier"]} if model_name == "bert" else {}
    lora = dict(r=4, lora_alpha=8, target_modules=targets, **head)
    return {
        "lora": lambda: LoraConfig(**lora),
        "dora": lambda: LoraConfig(**lora, use_dora=True),
        "pissa": lambda: LoraConfig(**lora, init_lora_weights="pissa"),
        "kasa": lambda: LoraConfig(**{**lora, "r": 2}, kasa_config=KasaConfig(beta=1e-4, gamma=1e-3)),
        "adalora": lambda: AdaLoraConfig(init_r=4, target_r=2, lora_alpha=16, total_step=10, target_modules=targets,
                                         **head),
        "vera": lambda: VeraConfig(r=4, target_modules=targets, projection_prng_key=3, **head),
    }[name](), targets


KASA_KWARGS = {"lora": dict(r=4, alpha=8), "dora": dict(r=4, alpha=8, dropout=0.0), "pissa": dict(r=4, alpha=8),
               "kasa": dict(r=2, alpha=8), "adalora": dict(init_r=4, target_r=2, alpha=16, total_steps=10),
               "vera": dict(r=4, projection_prng_key=3)}


def _peft_adapter(name: str, model_name: str, folder, prune: bool = False):
    """A PEFT model with random non-zero adapter (and head) values, saved by PEFT: (base, its logits, targets)."""
    from peft import get_peft_model

    torch.manual_seed(0)
    base = TINY_MODELS[model_name]()
    config, targets = _peft_config(name, model_name)
    pm = get_peft_model(copy.deepcopy(base), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        if prune:  # what PEFT's allocator leaves: some triplets masked (E = 0) and a rank_pattern in the config
            pattern = {}
            for n, p in pm.base_model.model.named_parameters():  # the names PEFT's allocator uses
                if n.endswith("lora_E.default"):
                    keep = torch.ones(p.shape[0], dtype=torch.bool)
                    keep[1] = False
                    p[~keep] = 0.0
                    pattern[n] = keep.tolist()
            pm.peft_config["default"].rank_pattern = pattern
    pm.save_pretrained(folder)
    with torch.no_grad():
        want = model_output(pm.eval(), tiny_inputs())
    return base, want, targets


@pytest.mark.parametrize("model_name", ["bert", "llama"])
@pytest.mark.parametrize("name", ["lora", "dora", "pissa", "kasa", "adalora", "vera"])
def test_peft_adapter_imported_into_kasa_gives_peft_logits(name, model_name, tmp_path):
    base, want, targets = _peft_adapter(name, model_name, tmp_path / "adapter")
    model = copy.deepcopy(base)
    method = build_method(name, target_modules=targets, init_from=str(tmp_path / "adapter"), **KASA_KWARGS[name])
    method.apply(model)
    load_peft_adapter(method, model, method.config.init_from)
    with torch.no_grad():
        got = model_output(model.eval(), tiny_inputs())
        assert (want - model_output(base, tiny_inputs())).abs().max() > 1e-3  # the adapter matters
    assert (got - want).abs().max().item() <= TOL


def test_pruned_peft_adalora_comes_back_at_its_places(tmp_path):
    base, want, targets = _peft_adapter("adalora", "llama", tmp_path / "a", prune=True)
    model = copy.deepcopy(base)
    method = build_method("adalora", target_modules=targets, **KASA_KWARGS["adalora"])
    method.apply(model)
    load_peft_adapter(method, model, tmp_path / "a")
    assert set(method.ranks(model).values()) == {3}
    with torch.no_grad():
        assert (model_output(model.eval(), tiny_inputs()) - want).abs().max().item() <= TOL


def test_kasa_export_comes_back_through_init_from(tmp_path):
    from kasa.runs.export import export_model

    torch.manual_seed(0)
    base = TINY_MODELS["bert"]()
    model = copy.deepcopy(base)
    method = build_method("kasa", r=2)
    method.apply(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        want = model_output(model.eval(), tiny_inputs())
    export_model(model, method, "peft", tmp_path / "peft")
    again = copy.deepcopy(base)
    m2 = build_method("kasa", r=2, init_from=str(tmp_path / "peft"))
    m2.apply(again)
    load_peft_adapter(m2, again, tmp_path / "peft")
    with torch.no_grad():
        assert (model_output(again.eval(), tiny_inputs()) - want).abs().max().item() <= TOL


@pytest.mark.parametrize("kwargs,says", [({"r": 8}, "r=4"), ({"alpha": 4}, "lora_alpha=8"),
                                         ({"use_rslora": True}, "use_rslora"),
                                         ({"target_modules": ["query"]}, "other modules")])
def test_a_mismatching_adapter_is_named_in_one_line(kwargs, says, tmp_path):
    base, _, targets = _peft_adapter("lora", "bert", tmp_path / "a")
    kw = {"r": 4, "alpha": 8, "target_modules": targets, **kwargs}
    method = build_method("lora", **kw)
    model = copy.deepcopy(base)
    method.apply(model)
    with pytest.raises(MethodError) as err:
        load_peft_adapter(method, model, tmp_path / "a")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_init_from_of_another_method_type_is_refused(tmp_path):
    base, _, targets = _peft_adapter("dora", "bert", tmp_path / "a")
    method = build_method("lora", r=4, alpha=8, target_modules=targets)
    model = copy.deepcopy(base)
    method.apply(model)
    with pytest.raises(MethodError, match="use_dora=True"):
        load_peft_adapter(method, model, tmp_path / "a")


def test_init_from_is_checked_before_any_model_loads(tmp_path):
    with pytest.raises(MethodError, match="only the methods PEFT shares"):
        build_method("milora", init_from=str(tmp_path))
    with pytest.raises(MethodError, match="no adapter_config.json"):
        build_method("lora", init_from=str(tmp_path))


def test_truncated_adapter_is_one_line_naming_the_file(tmp_path):
    base, _, targets = _peft_adapter("lora", "bert", tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    method = build_method("lora", r=4, alpha=8, target_modules=targets)
    model = copy.deepcopy(base)
    method.apply(model)
    with pytest.raises(MethodError) as err:
        load_peft_adapter(method, model, tmp_path / "a")
    assert str(weights) in str(err.value) and "\n" not in str(err.value)


def test_init_from_in_a_training_run(tiny_bert_dir, tmp_path):
    """kasa-train method.init_from=DIR: the run starts from the PEFT adapter, not from a fresh init."""
    from hydra import compose, initialize_config_dir
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from kasa.config import CONF_DIR
    from kasa.recipe import run

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=5)
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"],
                                         modules_to_save=["classifier"]))
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    pm.save_pretrained(tmp_path / "adapter")
    overrides = [*tiny_cls(tiny_bert_dir), "method=lora", "method.r=4", "trainer.max_epochs=1",
                 "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false", "benchmark.batch_size=8",
                 "benchmark.optim.lr=1e-9", "benchmark.optim.head_lr=1e-9"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plain = compose("train", overrides=overrides)
        started = compose("train", overrides=[*overrides, f"method.init_from={tmp_path / 'adapter'}"])
    run(plain, run_dir=tmp_path / "plain")
    b = run(started, run_dir=tmp_path / "started")
    assert b["config"]["method"]["init_from"] == str(tmp_path / "adapter")
    ckpt = torch.load(tmp_path / "started" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    peft_sd = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query"
    # one AdamW step of lr 1e-9 moves a parameter by about 1e-9: the run's adapter is still PEFT's (|B| ~ 0.3)
    torch.testing.assert_close(ckpt[f"model.{key}.lora_B"], peft_sd[f"base_model.model.{key}.lora_B.weight"],
                               atol=1e-7, rtol=0)
    torch.testing.assert_close(ckpt["model.classifier.weight"], peft_sd["base_model.model.classifier.weight"],
                               atol=1e-7, rtol=0)
    plain_ckpt = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert plain_ckpt[f"model.{key}.lora_B"].abs().max() < 1e-7  # without init_from: LoRA's zero B
