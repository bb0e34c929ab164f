"""``dataset=files_generation``: your own prompt/completion or chat files for the instruction and commonsense families,
and their bad input as one line naming the file and the column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kasa.config import compose
from kasa.errors import DatasetError
from kasa.tasks.commonsense.task import commonsense_splits
from kasa.tasks.instruction.task import instruction_splits
from kasa.tasks.records import generation_records


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


QA = [{"question": f"Is {i} even?", "reply": "the correct answer is " + ("true" if i % 2 == 0 else "false")}
      for i in range(30)]


def test_prompt_completion_and_chat_columns(tmp_path):
    recs = generation_records(str(jsonl(tmp_path / "a.jsonl", QA)), prompt="question", completion="reply")
    assert recs[1] == {"instruction": "Is 1 even?", "input": "", "output": "the correct answer is false"}
    chat = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "Hello."}]}]
    assert generation_records(str(jsonl(tmp_path / "c.jsonl", chat)), messages="messages") == [
        {"instruction": "Be brief.\n\nHi?", "input": "", "output": "Hello."}]


@pytest.mark.parametrize("rows, kw, message", [
    (QA, {"prompt": "q"}, "has no column 'q' \\(dataset.prompt\\); its columns: question, reply"),
    ([{"question": 3, "reply": "x"}], {"prompt": "question", "completion": "reply"}, "column 'question' is not text"),
    ([{"messages": [{"role": "user", "content": "Q"}]}], {"messages": "messages"}, "holds no user/assistant pair"),
])
def test_bad_columns_are_one_line(tmp_path, rows, kw, message):
    with pytest.raises(DatasetError, match=message):
        generation_records(str(jsonl(tmp_path / "x.jsonl", rows)), **kw)


def test_instruction_files_hold_out_prompts(tmp_path):
    cols = {"prompt": "question", "completion": "reply"}
    train, held = instruction_splits("files", path=str(jsonl(tmp_path / "t.jsonl", QA)), columns=cols,
                                     val_fraction=0.2)
    assert len(train) + len(held) == 30 and held and not {r["instruction"] for r in train} & {
        r["instruction"] for r in held}
    train, held = instruction_splits("files", path=str(jsonl(tmp_path / "t.jsonl", QA)), columns=cols,
                                     eval_path=str(jsonl(tmp_path / "v.jsonl", QA[:3])))
    assert len(held) == 3 and len(train) == 27  # training prompts equal to a held-out prompt are dropped


def test_commonsense_files_score_by_the_named_task(tmp_path):
    dev = [{"question": r["question"], "label": r["reply"].split()[-1]} for r in QA[:6]]
    cols = {"prompt": "question", "completion": "reply", "answer": "label", "task": "boolq"}
    train, evals = commonsense_splits("files", path=str(jsonl(tmp_path / "t.jsonl", QA)),
                                      eval_path=str(jsonl(tmp_path / "v.jsonl", dev)), columns=cols)
    assert len(train) == 30 and list(evals) == ["boolq"] and evals["boolq"][0]["answer"] == "true"
    bad = jsonl(tmp_path / "b.jsonl", [{"question": "Q", "label": "yes"}])
    with pytest.raises(DatasetError, match="row 0: answer 'yes' is not a label of boolq"):
        commonsense_splits("files", path=str(tmp_path / "t.jsonl"), eval_path=str(bad), columns=cols)
    with pytest.raises(DatasetError, match="dataset.task is not set"):
        commonsense_splits("files", path=str(tmp_path / "t.jsonl"), eval_path=str(bad),
                           columns={**cols, "task": None})


def test_one_dataset_config_serves_both_families(tmp_path):
    train = jsonl(tmp_path / "t.jsonl", QA)
    common = ["dataset=files_generation", f"dataset.train={train}", "dataset.prompt=question",
              "dataset.completion=reply"]
    assert compose(["benchmark=instruction", *common]).dataset.monitor == "judge_score"
    cfg = compose(["benchmark=commonsense", *common, "dataset.task=boolq"])
    assert cfg.dataset.monitor == "average" and cfg.dataset.source_args.columns.task == "boolq"


def test_commonsense_trains_on_your_files(tmp_path, tiny_causal_dir):
    from kasa.recipe import run

    dev = [{"question": r["question"], "label": r["reply"].split()[-1]} for r in QA[:4]]
    train = jsonl(tmp_path / "t.jsonl", QA)
    cfg = compose(["benchmark=commonsense", "dataset=files_generation", f"dataset.train={train}",
                   f"dataset.validation={jsonl(tmp_path / 'v.jsonl', dev)}", "dataset.prompt=question",
                   "dataset.completion=reply", "dataset.answer=label", "dataset.task=boolq",
                   f"model.name_or_path={tiny_causal_dir}", "trainer.max_epochs=1", "method=lora",
                   "benchmark.generation.max_new_tokens=4", "trainer.enable_progress_bar=false"])
    res = run(cfg, run_dir=tmp_path / "run")
    assert res["split_sizes"]["train"] == 30 and set(res["metrics"]["final"]) == {"boolq", "average"}
