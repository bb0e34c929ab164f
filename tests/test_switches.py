"""issue 21, item 3: trainer.compile (torch.compile of the training forward after the method is applied) and
model.attn_implementation (checked against what is installed, passed to the loader)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_cls
from hydra import compose, initialize_config_dir

from kasa.config import CONF_DIR
from kasa.config.validate import validate
from kasa.errors import ConfigError
from kasa.recipe import run
from kasa.runs.hashing import config_hash


def _cfg(tiny_bert_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[
            *tiny_cls(tiny_bert_dir), "trainer.max_epochs=1", "trainer.limit_train_batches=3",
            "trainer.enable_progress_bar=false", "benchmark.batch_size=8", "method.r=4", *overrides])


# aot_eager: torch.compile's graph capture and autograd tracing without inductor's C++ code generation, which takes
# minutes per graph on the 2-core CI machines; trainer.compile=true (inductor) runs the same path on a GPU.
# KaSA in the default suite; LoRA and DoRA (about 8-10 s each of dynamo tracing on 2 cores) in `make test-slow`
@pytest.mark.parametrize("method", ["kasa", pytest.param("lora", marks=pytest.mark.slow),
                                    pytest.param("dora", marks=pytest.mark.slow)])
def test_methods_train_under_compile(tiny_bert_dir, tmp_path, method):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    plain = run(_cfg(tiny_bert_dir, f"method={method}"), run_dir=tmp_path / "plain")
    assert not counters["stats"]["unique_graphs"]
    compiled = run(_cfg(tiny_bert_dir, f"method={method}", "trainer.compile=aot_eager"), run_dir=tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] >= 1  # the training forward did go through torch.compile
    assert compiled["config"]["trainer"]["compile"] == "aot_eager"
    a = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(a) == set(b) and not any("_orig_mod" in k for k in b)  # the plain adapter keys
    for k in a:  # the same training, compiled or not
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert plain["metrics"]["final"].keys() == compiled["metrics"]["final"].keys()


def test_neutral_switches_keep_the_config_hash(tiny_bert_dir):
    base = _cfg(tiny_bert_dir)
    assert base.trainer.compile is False and base.model.attn_implementation is None
    assert config_hash(base) == config_hash(_cfg(tiny_bert_dir, "trainer.compile=false"))
    assert config_hash(base) != config_hash(_cfg(tiny_bert_dir, "trainer.compile=true"))
    assert config_hash(base) != config_hash(_cfg(tiny_bert_dir, "model.attn_implementation=eager"))


@pytest.mark.parametrize("override, message", [
    ("trainer.compile=fast", "trainer.compile='fast': use false, true (inductor)"),
    ("model.attn_implementation=paged", "model.attn_implementation=paged: is unknown"),
])
def test_bad_switch_values_are_one_line(tiny_bert_dir, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        validate(_cfg(tiny_bert_dir, override))
    assert "\n" not in str(exc.value)


def test_flash_attention_is_refused_without_flash_attn_or_cuda(tiny_bert_dir):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        pytest.skip("flash_attn and CUDA are both here")
    with pytest.raises(ConfigError, match="model.attn_implementation=flash_attention_2: needs"):
        validate(_cfg(tiny_bert_dir, "model.attn_implementation=flash_attention_2"))


def test_attn_implementation_reaches_the_model(tiny_bert_dir, tmp_path):
    from kasa.methods import method_from_config
    from kasa.tasks import get_task

    cfg = _cfg(tiny_bert_dir, "model.attn_implementation=eager")
    validate(cfg)
    bundle = get_task(cfg.benchmark.family).build(cfg, method_from_config(cfg.method))
    assert bundle.model.config._attn_implementation == "eager"


