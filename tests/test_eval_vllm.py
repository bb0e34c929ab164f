"""kasa-eval --generation-backend vllm: refused in one line before anything loads where it cannot run; its plumbing
(export, prompt ids, decoding, scoring, files) checked end to end against a FAKE ``vllm`` module whose LLM generates
greedily with HF from the folder it was given. No real vLLM has run here (it needs CUDA)."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import commonsense_overrides, write_olmo_commonsense
from omegaconf import OmegaConf
from test_eval_run import _cfg

import kasa.models
import kasa.runs.load
from kasa.cli.eval import main
from kasa.errors import KasaError
from kasa.recipe import run
from kasa.runs.export import verify_export
from kasa.runs.load import run_config
from kasa.training.causal_lm import CausalLMModule
from kasa.training.vllm_backend import check_vllm


@pytest.fixture(scope="module")
def causal_run(tiny_causal_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vllm-run")
    d = tmp / "run"
    data = commonsense_overrides(write_olmo_commonsense(tmp / "olmo_data", n_train=4, n_eval=3))
    run(_cfg(tiny_causal_dir, "benchmark=commonsense", *data, "trainer.max_epochs=1", "trainer.limit_train_batches=1",
             "dataset.max_eval=3", "benchmark.generation.max_new_tokens=5", "benchmark.batch_size=4",
             "benchmark.eval_batch_size=4", "benchmark.generation.repetition_penalty=2.0"), run_dir=d)
    return d


def _no_loading(monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("a refusal must come before any model or data loads")

    monkeypatch.setattr(kasa.runs.load, "load_run", boom)
    monkeypatch.setattr(kasa.models, "load_model", boom)
    monkeypatch.setattr(kasa.models, "load_tokenizer", boom)


def _env(monkeypatch, vllm: bool, cuda: bool) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: (importlib.machinery.ModuleSpec("vllm", None) if vllm else None)
                        if n == "vllm" else real(n, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)


@pytest.mark.parametrize("vllm,cuda,extra,says", [
    (False, True, [], "vLLM is not installed (pip install vllm on a CUDA machine"),
    (True, False, [], "needs a CUDA GPU and torch sees none"),
    (True, True, ["benchmark.generation.num_beams=4"], "benchmark.generation.num_beams=4: the vllm backend decodes"),
    (True, True, ["benchmark.generation.no_repeat_ngram_size=3"], "benchmark.generation.no_repeat_ngram_size=3"),
    (True, True, ["trainer.limit_val_batches=1"], "trainer.limit_val_batches=1"),
    (True, True, ["--lm-eval", "x"], "--lm-eval scores with"),
])
def test_refusals_are_one_line_and_load_nothing(causal_run, monkeypatch, capsys, vllm, cuda, extra, says):
    _env(monkeypatch, vllm, cuda)
    _no_loading(monkeypatch)
    assert main([str(causal_run), "--generation-backend", "vllm", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kasa-eval: error: ") and says in err and err.count("\n") == 1


@pytest.mark.parametrize("change,says", [({"benchmark": {"family": "classification"}}, "trained a classifier"),
                                         ({"method": {"name": "adapter_h"}}, "adapter_h has no export format"),
                                         ({"benchmark": {"family": "instruction", "mtbench": {"enabled": True}}},
                                          "benchmark.mtbench.enabled=false")])
def test_config_refusals(causal_run, monkeypatch, change, says):
    _env(monkeypatch, True, True)
    cfg = OmegaConf.merge(run_config(causal_run)[0], change)
    with pytest.raises(KasaError) as err:
        check_vllm(cfg)
    assert says in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- the fake vLLM
def _fake_vllm() -> types.ModuleType:
    """``vllm`` with an ``LLM`` that records its arguments and prompts and decodes each prompt greedily with HF
    ``generate`` from the folder it was given, answering in vLLM's ``RequestOutput`` shape."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.__version__ = "0.0.0+fake"

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        made: list = []

        def __init__(self, **kw):
            self.kw, self.prompts = kw, None
            LLM.made.append(self)

        def generate(self, prompts, params):
            self.prompts, self.params = [p["prompt_token_ids"] for p in prompts], params.kw
            assert params.kw["temperature"] == 0
            model = AutoModelForCausalLM.from_pretrained(self.kw["model"]).eval()
            eos = AutoTokenizer.from_pretrained(self.kw["tokenizer"]).eos_token_id
            outs = []
            for ids in self.prompts:
                with torch.no_grad():
                    full = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                          max_new_tokens=params.kw["max_tokens"], do_sample=False, eos_token_id=eos,
                                          pad_token_id=eos, repetition_penalty=params.kw["repetition_penalty"])
                new = full[0, len(ids):].tolist()
                new = new[:new.index(eos) + 1] if eos in new else new  # vLLM keeps the EOS in token_ids
                outs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[
                    types.SimpleNamespace(text="(not used)", token_ids=new, finish_reason="stop")]))
            return outs

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    return mod


def test_vllm_path_scores_as_the_hf_path(causal_run, monkeypatch, capsys):
    hf_prompts: dict[int, list[int]] = {}
    step = CausalLMModule.validation_step

    def spy(self, batch, batch_idx):
        for ids, mask, i in zip(batch["input_ids"], batch["attention_mask"], batch["idx"]):
            hf_prompts[int(i)] = ids[mask.bool()].tolist()
        return step(self, batch, batch_idx)

    monkeypatch.setattr(CausalLMModule, "validation_step", spy)
    assert main([str(causal_run), "--name", "hf"]) == 0
    monkeypatch.undo()
    fake = _fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main([str(causal_run), "--generation-backend", "vllm", "--name", "vllm"]) == 0
    hf = json.loads((causal_run / "eval-hf.json").read_text())
    res = json.loads((causal_run / "eval-vllm.json").read_text())
    assert res["metrics"] == hf["metrics"] and hf["generation_backend"] == "hf"
    assert res["generation_backend"] == "vllm" and res["vllm"]["version"] == "0.0.0+fake"
    assert res["evaluation"] == hf["evaluation"] and res["generation"] == hf["generation"]
    gens = {b: [json.loads(x) for x in (causal_run / f"eval-{b}" / "generations" / "epoch0.jsonl").open()]
            for b in ("hf", "vllm")}
    assert gens["vllm"] == gens["hf"] and len(gens["hf"]) == 6  # the same texts, prompts and meta
    (llm,) = fake.LLM.made
    folder = causal_run / "eval-vllm" / "export-merged"
    assert llm.kw["model"] == str(folder) == res["export"]["folder"] and res["export"]["format"] == "merged"
    assert verify_export(folder)["format"] == "merged" and llm.kw["seed"] == res["config"]["seed"]
    assert llm.prompts == [hf_prompts[i] for i in range(len(hf_prompts))]
    assert llm.params == {"temperature": 0.0, "max_tokens": 5, "repetition_penalty": 2.0}


def test_new_text_only_decodes_as_the_hf_path(tiny_causal_dir):
    """Evaluators without ``decode_prompt`` (E2E, instruction) get the continuation alone, stripped, as
    ``generate_ids`` cuts it from a left-padded batch whose finished rows are padded after their EOS."""
    from transformers import AutoTokenizer

    from kasa.training.vllm_backend import texts_from_outputs

    tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
    eos = tok.eos_token_id
    prompts = [tok(" name[Aromi] ->")["input_ids"], tok("A longer prompt, name[Zizzi] ->")["input_ids"]]
    new = [tok(" Aromi is a pub.")["input_ids"] + [eos], tok(" Zizzi serves  food")["input_ids"]]
    width, n_new = max(map(len, prompts)), max(map(len, new))
    hf_rows = torch.tensor([[eos] * (width - len(p)) + p + n + [eos] * (n_new - len(n)) for p, n in zip(prompts, new)])
    hf = [t.strip() for t in tok.batch_decode(hf_rows[:, width:], skip_special_tokens=True)]
    outs = [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=n)]) for n in new]
    assert texts_from_outputs(tok, prompts, outs, decode_prompt=False) == hf
    assert hf == ["Aromi is a pub.", "Zizzi serves  food"]
    both = texts_from_outputs(tok, prompts, outs, decode_prompt=True)
    assert both == tok.batch_decode(hf_rows, skip_special_tokens=True)
