"""kasa-export from a run folder alone: finished (results.json) or interrupted (config.yaml), best or last checkpoint,
KaSA's plain LoRA re-derived when the run did not keep its removed triplets; refusals in one line before any model
loads; damaged checkpoints and exports named in one line, never executed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import Crash, crash_at_epoch, tiny_cls
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kasa.cli.export import main
from kasa.config import CONF_DIR
from kasa.errors import RunError, UnreadableFileError
from kasa.methods import MethodError
from kasa.recipe import run
from kasa.runs.export import export_run, verify_export
from kasa.runs.load import load_run

TOL = 1e-5
peft = pytest.importorskip("peft")


def _cfg(model_dir: Path, *overrides: str, benchmark: str | None = None):
    base = [f"model.name_or_path={model_dir}", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
            "method.r=4"]
    if benchmark:
        base += [f"benchmark={benchmark}", "trainer.limit_train_batches=2", "dataset.max_eval=2",
                 "benchmark.generation.max_new_tokens=4", "benchmark.batch_size=4", "benchmark.eval_batch_size=4"]
    else:
        base += [*tiny_cls(model_dir), "trainer.limit_train_batches=4", "benchmark.batch_size=8"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*base, *overrides])


def _inputs(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"input_ids": torch.randint(5, vocab, (2, 9), generator=g),
            "attention_mask": torch.ones(2, 9, dtype=torch.long)}


@pytest.fixture(scope="module")
def kasa_run(tiny_bert_dir, tmp_path_factory) -> Path:
    """A finished 2-epoch KaSA run (keep_removed=false: the removed triplets are not in its checkpoints)."""
    d = tmp_path_factory.mktemp("kasa-run")
    run(_cfg(tiny_bert_dir, "method.dropout=0.1"), run_dir=d)
    return d


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(**x).logits


@pytest.mark.parametrize("which", ["best", "last"])
def test_run_exports_in_every_format_and_loads_with_peft_or_transformers(kasa_run, tiny_bert_dir, tmp_path, which):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ref = load_run(kasa_run, which)
    x = _inputs(ref.model.config.vocab_size)
    want = _logits(ref.model, x)
    assert "kasa_removed_us" not in json.dumps(list(torch.load(ref.checkpoint_path, weights_only=True)["state_dict"]))
    for fmt in ("peft", "lora", "merged"):
        out = export_run(kasa_run, fmt, tmp_path / fmt, checkpoint=which)
        manifest = verify_export(out)
        assert manifest["checkpoint"] == which and manifest["method"] == "kasa" and manifest["epoch"] == ref.epoch
        if fmt == "merged":
            model = AutoModelForSequenceClassification.from_pretrained(out)
            assert AutoTokenizer.from_pretrained(out).vocab_size == model.config.vocab_size
        else:
            base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=5)
            model = PeftModel.from_pretrained(base, out)
        assert (_logits(model, x) - want).abs().max().item() <= TOL, fmt
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 + 4 and cfg["lora_alpha"] == 8 and cfg["task_type"] == "SEQ_CLS"  # t + r, scale folded


def test_default_checkpoint_is_the_reported_one(kasa_run, tmp_path):
    out = export_run(kasa_run, "lora", tmp_path / "out")
    res = json.loads((kasa_run / "results.json").read_text())
    assert verify_export(out)["epoch"] == res["metrics"]["best_epoch"]


def test_causal_lm_run_exports(tiny_causal_dir, tmp_path, commonsense_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run(_cfg(tiny_causal_dir, "method=kasa", "trainer.max_epochs=1", *commonsense_data, benchmark="commonsense"),
        run_dir=tmp_path / "r")
    ref = load_run(tmp_path / "r")
    x = _inputs(1000)
    want = _logits(ref.model, x)
    for fmt in ("peft", "lora", "merged"):
        out = export_run(tmp_path / "r", fmt, tmp_path / fmt)
        if fmt == "merged":
            model = AutoModelForCausalLM.from_pretrained(out)
        else:
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_dir), out)
            assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
        assert (_logits(model, x) - want).abs().max().item() <= TOL, fmt


def test_interrupted_run_exports_from_its_config_yaml(tiny_bert_dir, tmp_path):
    d = tmp_path / "part"
    with pytest.raises(Crash):
        run(_cfg(tiny_bert_dir, "method=lora"), run_dir=d, callbacks=[crash_at_epoch(1)])
    # kasa-train writes the resolved config at the start of a run (issue 11): an interrupted run exports from it
    assert not (d / "results.json").exists() and (d / "checkpoints" / "last.ckpt").exists()
    assert (d / "config.yaml").exists()
    out = export_run(d, "lora", tmp_path / "out", checkpoint="last")
    assert verify_export(out)["config_file"] == "config.yaml"
    (d / "config.yaml").unlink()  # neither file: one line naming what is missing
    with pytest.raises(RunError, match="no results.json or config.yaml"):
        export_run(d, "lora", tmp_path / "x")


def test_cli_refuses_a_format_before_loading_anything(tmp_path, monkeypatch, capsys):
    import kasa.models

    (tmp_path / "run").mkdir()
    cfg = {"method": {"name": "dora", "r": 4}, "model": {"name_or_path": "nowhere"},
           "benchmark": {"family": "classification"}}
    (tmp_path / "run" / "results.json").write_text(json.dumps({"config": cfg}))
    monkeypatch.setattr(kasa.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main([str(tmp_path / "run"), "--format", "lora", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kasa-export: error:") and "magnitude" in err and "peft or merged" in err
    assert "\n" not in err and not (tmp_path / "o").exists()
    assert main([str(tmp_path / "nowhere"), "--format", "lora", "--out", str(tmp_path / "o")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_a_tampered_checkpoint_is_named_and_never_executed(kasa_run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(kasa_run, d)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    torch.save({"state_dict": {"model.x": Payload()}}, d / "checkpoints" / "last.ckpt")
    with pytest.raises(RunError) as err:
        export_run(d, "lora", tmp_path / "out", checkpoint="last")
    assert str(d / "checkpoints" / "last.ckpt") in str(err.value) and "weights_only" in str(err.value)
    assert not marker.exists()
    (d / "checkpoints" / "last.ckpt").write_bytes(b"")  # an empty file (a full disk)
    with pytest.raises(RunError, match="last.ckpt: not a loadable checkpoint"):
        load_run(d, "last")


def test_a_changed_or_truncated_export_is_named(kasa_run, tmp_path):
    out = export_run(kasa_run, "peft", tmp_path / "out")
    weights = out / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit of one tensor: still a valid file, but not what was exported
    weights.write_bytes(bytes(data))
    with pytest.raises(UnreadableFileError, match="SHA-256 differs"):
        verify_export(out)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    (out / "kasa_export.json").unlink()
    with pytest.raises(UnreadableFileError) as err:
        verify_export(out)
    assert "kasa_export.json: no such file" in str(err.value)
    from kasa.runs.files import read_safetensors

    with pytest.raises(UnreadableFileError) as err:
        read_safetensors(weights)
    assert str(weights) in str(err.value) and "not a valid safetensors file" in str(err.value)


def test_peft_format_of_a_kasa_variant_peft_lacks_is_refused(tiny_bert_dir, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    cfg = OmegaConf.to_container(_cfg(tiny_bert_dir, "method.truncation=reference"), resolve=True)
    (d / "results.json").write_text(json.dumps({"config": cfg}))
    with pytest.raises(MethodError, match="truncation=reference"):
        export_run(d, "peft", tmp_path / "out")
