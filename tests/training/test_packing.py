"""Packing (``benchmark.packing``) and length grouping (``benchmark.group_by_length``) of causal-LM training batches:
packed loss and gradients equal the padded ones on the same examples; the architectures packing admits do restart
attention at each example; the grouped sampler is seeded, resumable and the same global order on every rank; the
config keys at their defaults keep every config hash; validation refuses what cannot pack in one line."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import transformers as T
from hydra import compose, initialize_config_dir

from kasa.config import CONF_DIR
from kasa.config.validate import validate
from kasa.errors import ConfigError
from kasa.methods import build_method
from kasa.training import OptimConfig
from kasa.training.causal_lm import (
    IGNORE_INDEX,
    BaseEvaluator,
    CausalLMModule,
    CompletionDataModule,
    CompletionExample,
    EvalItem,
)
from kasa.training.packing import PACKING_MODEL_TYPES, collate_packed, pack_rows, packed_row, packing_refusal
from kasa.training.samplers import EpochSampler, LengthGroupedSampler

WORDS = "the cat sat on a mat while seven quiet dogs watched from the old red barn near the river".split()


def _examples(n: int = 12, seed: int = 0) -> list[CompletionExample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p, c = torch.randint(2, 30, (2,), generator=g).tolist()
        words = [WORDS[i] for i in torch.randint(0, len(WORDS), (p + c,), generator=g).tolist()]
        out.append(CompletionExample("### Instruction: " + " ".join(words[:p]) + "\n### Response:",
                                     " " + " ".join(words[p:])))
    return out


def _datamodule(tok, packing: bool, train_on_inputs: bool = False, **kw) -> CompletionDataModule:
    dm = CompletionDataModule(_examples(), [EvalItem("x")], tok, max_length=kw.pop("max_length", 96),
                              batch_size=kw.pop("batch_size", 64), train_on_inputs=train_on_inputs, packing=packing,
                              **kw)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def tiny(tiny_causal_dir):
    tok = T.AutoTokenizer.from_pretrained(tiny_causal_dir)
    return tok, tiny_causal_dir


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("train_on_inputs,eps", [(False, 0.0), (True, 0.0), (False, 0.1)])
def test_packed_loss_and_gradients_equal_padded(tiny, attn, train_on_inputs, eps):
    tok, path = tiny
    padded, packed = (_datamodule(tok, p, train_on_inputs) for p in (False, True))
    assert padded.n_train_examples == packed.n_train_examples == 12
    assert len(packed._train) < len(padded._train)  # several examples per row
    grads = []
    for dm in (padded, packed):
        model = T.AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn)
        method = build_method("lora", r=2)
        method.apply(model)
        module = CausalLMModule(model, method, tok, None, optim=OptimConfig(label_smoothing=eps))
        batch = next(iter(dm.train_dataloader()))  # the whole data set in one batch
        model.train()
        torch.manual_seed(0)
        for n, p in model.named_parameters():  # LoRA's B starts at 0: give every adapter weight a value
            if p.requires_grad:
                p.data.normal_(0, 0.1)
        loss = module.task_loss(model(**batch), batch)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = grads
    assert torch.allclose(l0, l1, atol=1e-6, rtol=1e-5), (l0, l1)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-4), n


def test_packed_rows_layout(tiny):
    tok, _ = tiny
    dm = _datamodule(tok, True, train_on_inputs=True, max_length=96)
    rows = dm._train.rows
    assert sum(r["n_examples"] for r in rows) == 12
    for r in rows:
        assert len(r["input_ids"]) == len(r["labels"]) == len(r["position_ids"]) <= 96
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert len(starts) == r["n_examples"] and starts[0] == 0
        assert all(r["labels"][i] == IGNORE_INDEX for i in starts)  # never predicted from the example before
    batch = dm.collate_train(rows[:3])
    assert "attention_mask" not in batch and batch["use_cache"] is False
    k = len(rows[2]["input_ids"])
    if k < batch["input_ids"].shape[1]:  # the padding is its own segment, unlabelled
        assert batch["position_ids"][2, k] == 0 and (batch["labels"][2, k:] == IGNORE_INDEX).all()


def test_pack_rows_best_fit():
    lengths = [9, 1, 5, 5, 3, 7, 2, 10, 4]
    rows = pack_rows(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 5 == -(-sum(lengths) // 10) + 0  # 46 tokens: 5 rows of 10 is the optimum
    assert pack_rows(lengths, 10) == rows  # deterministic
    with pytest.raises(ValueError):
        pack_rows([11], 10)


def test_collate_packed_pads_as_a_segment():
    rows = [packed_row([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]),
            packed_row([{"input_ids": [4], "labels": [4]}])]
    b = collate_packed(rows, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, -100, -100, -100, -100]]


# a tiny random model of each admitted model_type: packed logits equal separate ones (the list is what was checked)
_COMMON = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)
_SPECS = {"gpt2": dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64),
          "gptj": dict(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4),
          "gpt_neox": {k: v for k, v in _COMMON.items() if k != "num_key_value_heads"},
          "phi": {k: v for k, v in _COMMON.items() if k != "num_key_value_heads"},
          "gemma": dict(_COMMON, head_dim=8), "gemma3_text": dict(_COMMON, head_dim=8),
          "qwen3": dict(_COMMON, head_dim=8),
          "phi3": dict(_COMMON, pad_token_id=0)}


def _packs(model_type: str, attn: str) -> float:
    cfg = T.AutoConfig.for_model(model_type, **_SPECS.get(model_type, _COMMON))
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    seqs = [torch.randint(1, 100, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 3)]
    with torch.no_grad():
        sep = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
        pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
        packed = model(input_ids=torch.cat(seqs)[None], position_ids=pos, use_cache=False).logits[0]
    return float((packed - sep).abs().max())


@pytest.mark.parametrize("model_type", sorted(PACKING_MODEL_TYPES))
def test_admitted_architectures_restart_attention_at_each_example(model_type):
    for attn in ("sdpa", "eager"):
        assert _packs(model_type, attn) < 1e-5, (model_type, attn)


def test_opt_would_attend_across_examples_and_is_refused():
    assert _packs("opt", "sdpa") > 1e-3
    assert "opt" not in PACKING_MODEL_TYPES and packing_refusal("opt", "facebook/opt-125m")
    assert packing_refusal("llama", "smollm2") is None and packing_refusal(None, "x") is None


# ------------------------------------------------------------------------------------------------ length grouping

def _lengths(n: int = 203, seed: int = 1) -> list[int]:
    return torch.randint(5, 250, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _padding_share(order: list[int], lengths: list[int], b: int) -> float:
    pad = tot = 0
    for s in range(0, len(order), b):
        chunk = [lengths[i] for i in order[s:s + b]]
        pad += max(chunk) * len(chunk) - sum(chunk)
        tot += max(chunk) * len(chunk)
    return pad / tot


def test_length_grouped_sampler_seeded_resumable_and_grouped():
    lengths, b = _lengths(), 8
    s = LengthGroupedSampler(lengths, b, seed=3, mega=4)
    e0 = list(s)
    assert sorted(e0) == list(range(len(lengths)))  # every example once
    for k in range(0, len(e0), b):  # each batch is a run of one mega-batch sorted longest first
        assert [lengths[i] for i in e0[k:k + b]] == sorted((lengths[i] for i in e0[k:k + b]), reverse=True)
    assert e0 == list(LengthGroupedSampler(lengths, b, seed=3, mega=4))  # seeded
    assert e0 != list(LengthGroupedSampler(lengths, b, seed=4, mega=4))
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0
    fresh = LengthGroupedSampler(lengths, b, seed=3, mega=4)  # a resumed run: only the seed and the epoch matter
    fresh.set_epoch(1)
    assert list(fresh) == e1
    random_order = list(EpochSampler(len(lengths), seed=3))
    assert _padding_share(e0, lengths, b) < 0.5 * _padding_share(random_order, lengths, b)


@pytest.mark.parametrize("world", [2, 3])
def test_length_grouped_sampler_is_one_global_order_across_ranks(world):
    lengths, b = _lengths(), 4
    one = LengthGroupedSampler(lengths, b * world, seed=5, mega=3, num_replicas=1, rank=0)
    ranks = [LengthGroupedSampler(lengths, b, seed=5, mega=3, num_replicas=world, rank=r) for r in range(world)]
    for epoch in (0, 2):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        glob = list(one)
        shards = [list(s) for s in ranks]
        assert len({len(x) for x in shards}) == 1  # equal shards (padded by repeating the start)
        for s in ranks:
            assert s.global_order() == glob  # every rank computes the same global order
        n = len(lengths)
        merged = [shards[r][k] for k in range(len(shards[0])) for r in range(world)]
        assert merged[:n] == glob  # k-th batches of all ranks together = k-th batch of one process with batch W*b
        for k in range(0, len(shards[0]), b):  # and each rank's batch is cut from that global batch
            g = set(merged[k * world:(k + b) * world])
            assert all(set(sh[k:k + b]) <= g for sh in shards)


def test_datamodule_group_by_length_uses_the_grouped_sampler(tiny):
    tok, _ = tiny
    dm = _datamodule(tok, False, group_by_length=True, batch_size=4)
    assert isinstance(dm.train_dataloader().sampler, LengthGroupedSampler)
    with pytest.raises(ValueError):
        CompletionDataModule(_examples(), [EvalItem("x")], tok, packing=True, group_by_length=True)


# ------------------------------------------------------------------------------------------------ training loop

class _NoEval(BaseEvaluator):
    def __call__(self, items, generations, module, out_dir):
        return {"score": 0.0}


def test_packed_training_runs_through_lightning(tiny):
    tok, path = tiny
    dm = CompletionDataModule(_examples(), [EvalItem("x")], tok, max_length=96, batch_size=2, packing=True)
    model = T.AutoModelForCausalLM.from_pretrained(path)
    method = build_method("lora", r=2)
    method.apply(model)
    module = CausalLMModule(model, method, tok, _NoEval())
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, enable_progress_bar=False, enable_checkpointing=False,
                        logger=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == -(-len(dm._train) // 2) and torch.isfinite(trainer.callback_metrics["train/loss"])


# ------------------------------------------------------------------------------------------------ config

def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_validation(tiny, tmp_path):
    _, path = tiny
    validate(_compose("benchmark=commonsense", f"model.name_or_path={path}", "benchmark.packing=true"))
    validate(_compose("benchmark=e2e", "benchmark.group_by_length=true"))
    opt = tmp_path / "opt"
    opt.mkdir()
    (opt / "config.json").write_text(json.dumps({"model_type": "opt", "architectures": ["OPTForCausalLM"]}))
    for overrides, msg in [((f"model.name_or_path={opt}", "benchmark.packing=true"), "'opt' model"),
                           (("benchmark.packing=true", "benchmark.group_by_length=true"), "pick one"),
                           (("benchmark.packing=1",), "use true or false")]:
        with pytest.raises(ConfigError, match=msg) as exc:
            validate(_compose("benchmark=commonsense", *overrides))
        assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="only the causal-LM benchmarks"):
        validate(_compose("benchmark=classification", "model=minilm", "+benchmark.group_by_length=true"))


def test_neutral_defaults_keep_the_config_hash():
    from kasa.runs.hashing import config_hash

    base = _compose("benchmark=commonsense")
    assert base.benchmark.packing is False and base.benchmark.group_by_length is False
    assert config_hash(base) == config_hash(_compose("benchmark=commonsense", "~benchmark.packing",
                                                     "~benchmark.group_by_length"))
    assert config_hash(base) != config_hash(_compose("benchmark=commonsense", "benchmark.packing=true"))
    assert config_hash(base) != config_hash(_compose("benchmark=commonsense", "benchmark.group_by_length=true"))
