"""LLM-Adapters commonsense protocol: formatters on hub-format rows, prompts, extraction, accuracy, BIG-bench rows
(no BIG-bench data: the rows are written here)."""

from __future__ import annotations

import pytest

from kasa.tasks.commonsense import prompts as cs

# Hub-format rows; the expected instructions are the strings LLM-Adapters' test.json files hold for
# the same items (as printed in public evaluation logs of that code).
HUB_ROWS = {
    "piqa": ({"goal": "Retain study notes in brain.", "sol1": "Go over notes one last time one week before test.",
              "sol2": "Go over notes one last time one day before test.", "label": 1},
             "Please choose the correct solution to the question: Retain study notes in brain.\n\n"
             "Solution1: Go over notes one last time one week before test.\n\n"
             "Solution2: Go over notes one last time one day before test.\n\nAnswer format: solution1/solution2",
             "solution2"),
    "social_i_qa": ({"context": "Robin wanted to share the food with a friend, so they cut the sandwich in half.",
                     "question": "What does Robin need to do before this?", "answerA": "get a knife",
                     "answerB": "eat half of her own sandwich", "answerC": "give half the sandwich to her friend",
                     "label": "1"},
                    "Please choose the correct answer to the question: Robin wanted to share the food with a friend, "
                    "so they cut the sandwich in half. What does Robin need to do before this?\n\n"
                    "Answer1: get a knife Answer2: eat half of her own sandwich Answer3: give half the sandwich to "
                    "her friend\n\nAnswer format: answer1/answer2/answer3",
                    "answer1"),
    "winogrande": ({"sentence": "The jeans fit worse than the shirt because I had tried the _ on at the store.",
                    "option1": "jeans", "option2": "shirt", "answer": "2"},
                   "Please choose the correct answer to fill in the blank to complete the given sentence: The jeans "
                   "fit worse than the shirt because I had tried the _ on at the store.\n\nOption1: jeans Option2: "
                   "shirt Answer format: option1/option2",
                   "option2"),
    "ARC-Easy": ({"id": "x", "question": "Which two things interact most in the water cycle?",
                  "choices": {"text": ["oceans and the Moon", "oceans and the Sun", "lakes and the Moon",
                                       "lakes and the Sun"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
                 "Please choose the correct answer to the question: Which two things interact most in the water "
                 "cycle?\n\nAnswer1: oceans and the Moon Answer2: oceans and the Sun Answer3: lakes and the Moon "
                 "Answer4: lakes and the Sun\n\nAnswer format: answer1/answer2/answer3/answer4",
                 "answer2"),
    "ARC-Challenge": ({"id": "y", "question": "Which is a gas at room temperature?",
                       "choices": {"text": ["iron", "oxygen", "wax"], "label": ["1", "2", "3"]}, "answerKey": "2"},
                      "Please choose the correct answer to the question: Which is a gas at room temperature?\n\n"
                      "Answer1: iron Answer2: oxygen Answer3: wax\n\nAnswer format: answer1/answer2/answer3",
                      "answer2"),
    "openbookqa": ({"id": "z", "question_stem": "A hemisphere experiences summer when",
                    "choices": {"text": ["it's tilted towards Jupiter", "it's angled towards the moon",
                                         "it's angled towards the largest star in the solar system",
                                         "it spins counter clockwise on Earth's axis"],
                                "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
                   "Please choose the correct answer to the question: A hemisphere experiences summer when\n\n"
                   "Answer1: it's tilted towards Jupiter Answer2: it's angled towards the moon Answer3: it's angled "
                   "towards the largest star in the solar system Answer4: it spins counter clockwise on Earth's axis"
                   "\n\nAnswer format: answer1/answer2/answer3/answer4",
                   "answer3"),
    "boolq": ({"question": "is i cant believe its not butter margarine", "answer": False,
               "passage": "I Can't Believe It's Not Butter! is a brand of spread..."},
              "Please answer the following question with true or false, question: is i cant believe its not butter "
              "margarine?\n\nAnswer format: true/false",
              "false"),
    "hellaswag": ({"ind": 1, "activity_label": "Playing drums", "ctx": "People are standing behind large drums. A man",
                   "endings": ["is playing a bag pipe.", "starts to play around the drums.",
                               "begins playing a drum set.", "begins playing the drums."], "label": "3"},
                  "Please choose the correct ending to complete the given sentence: Playing drums: People are standing "
                  "behind large drums. A man\n\nEnding1: is playing a bag pipe. Ending2: starts to play around the "
                  "drums. Ending3: begins playing a drum set. Ending4: begins playing the drums.\n\n"
                  "Answer format: ending1/ending2/ending3/ending4",
                  "ending4"),
}


@pytest.mark.parametrize("task", sorted(HUB_ROWS))
def test_formatters_reproduce_llm_adapters_instructions(task):
    row, instruction, answer = HUB_ROWS[task]
    ex = cs.format_example(task, row)
    assert ex == {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}",
                  "answer": answer}
    # The gold output is read back correctly by the task's extraction rule.
    assert cs.extract_answer(task, ex["output"]) == answer


def test_formatters_on_a_json_file_in_hub_format(tmp_path):
    import json

    import datasets

    path = tmp_path / "piqa.jsonl"
    path.write_text("\n".join(json.dumps(HUB_ROWS["piqa"][0]) for _ in range(2)))
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "c"))
    formatted = [cs.format_example("piqa", r) for r in ds]
    assert formatted[0]["instruction"] == HUB_ROWS["piqa"][1]


def test_prompts():
    p = cs.build_prompt("Say hi.")
    assert p == ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")
    literal = cs.build_prompt("Say hi.", style="llm_adapters_eval")
    assert literal.startswith("Below is an instruction that describes a task. Write a response that appropriately "
                              "completes the request. \n\n                ### Instruction:\n                Say hi.")
    assert literal.endswith("### Response:\n                ")
    assert "### Input:\nctx" in cs.build_prompt("Do it.", input="ctx")
    with pytest.raises(ValueError, match="unknown prompt style"):
        cs.build_prompt("x", style="chatml")


I16 = " " * 16


def test_llm_adapters_templates_byte_for_byte():
    """finetune.py's and commonsense_evaluate.py's generate_prompt, as their indented f-strings render
    (checked by executing both upstream functions: docs/protocols.md (Evaluation))."""
    head = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    head_in = ("Below is an instruction that describes a task, paired with an input that provides further context. "
               "Write a response that appropriately completes the request.")
    assert cs.build_prompt("Q?", style="llm_adapters_train") == (
        f"{head}  \n\n{I16}### Instruction:\n{I16}Q?\n{I16}\n{I16}### Response:\n{I16}")
    assert cs.build_prompt("Q?", "ctx", style="llm_adapters_train") == (
        f"{head_in} \n\n{I16}### Instruction:\n{I16}Q?\n{I16}\n{I16}### Input:\n{I16}ctx\n{I16}\n"
        f"{I16}### Response:\n{I16}")
    assert cs.build_prompt("Q?", style="llm_adapters_eval") == (
        f"{head} \n\n{I16}### Instruction:\n{I16}Q?\n\n{I16}### Response:\n{I16}")
    assert cs.build_prompt("Q?", "ctx", style="llm_adapters_eval") == (
        f"{head_in}\n\n{I16}### Instruction:\n{I16}Q?\n\n{I16}### Input:\n{I16}ctx\n\n{I16}### Response:\n{I16}")


def test_prompt_pairs_are_consistent_by_default():
    assert cs.prompt_pair() == ("alpaca", "alpaca")
    assert cs.prompt_pair("llm_adapters") == ("llm_adapters_train", "llm_adapters_eval")
    assert cs.prompt_pair("alpaca", "llm_adapters_eval") == ("alpaca", "llm_adapters_eval")  # explicit ablation
    with pytest.raises(ValueError, match="prompt_style='chatml' is unknown"):
        cs.prompt_pair("chatml")
    with pytest.raises(ValueError, match="eval_prompt_style='x' is unknown"):
        cs.prompt_pair("alpaca", "x")


def test_response_segmentation_as_upstream():
    """The reference decodes prompt + generation and scores split('### Response:')[1]: the text between the
    prompt's marker and the model's own next marker."""
    for style in cs.PROMPT_STYLES:
        prompt = cs.build_prompt("Is it? Answer format: true/false", style=style)
        decoded = prompt + "the correct answer is true ### Response: the correct answer is false"
        assert cs.response_from_generation(decoded) == "the correct answer is true"
        assert cs.extract_answer("boolq", cs.response_from_generation(decoded)) == "true"
        assert cs.response_from_generation(prompt + " the correct answer is answer3") == "the correct answer is answer3"
    with pytest.raises(ValueError, match="needs the prompt decoded with the generation"):
        cs.response_from_generation("the correct answer is true")


@pytest.mark.parametrize(
    "task, text, expected",
    [
        ("boolq", "the correct answer is true", "true"),
        ("boolq", "True, it is false", "false"),            # case-sensitive: "True" does not count
        ("boolq", "false... or true", "false"),             # first match wins
        ("boolq", "yes", ""),
        ("piqa", "solution2 is better than solution1", "solution2"),
        ("social_i_qa", "the correct answer is answer3", "answer3"),
        ("siqa", "answer5 then answer1", "answer5"),         # the shared pattern allows answer1-5
        ("ARC-Challenge", "answer4", "answer4"),
        ("arc_e", "the correct answer is answer1.", "answer1"),
        ("openbookqa", "Answer2", ""),
        ("hellaswag", "ending5 or ending3", "ending3"),       # ending5 is not a label
        ("winogrande", "option2", "option2"),
        ("strategyqa", "the correct answer is true", "true"),
    ],
)
def test_extract_answer(task, text, expected):
    assert cs.extract_answer(task, text) == expected


def test_accuracy_and_average():
    results = {
        "boolq": (["the correct answer is true", "the correct answer is true"], ["true", "false"]),
        "piqa": (["solution1", "nothing", "solution2", "solution2"], ["solution1", "solution1", "solution2",
                                                                       "solution2"]),
    }
    out = cs.evaluate_predictions(results)
    assert out == {"boolq": 0.5, "piqa": 0.75, "average": 0.625}
    with pytest.raises(ValueError):
        cs.accuracy(["a"], ["a", "b"])
    with pytest.raises(KeyError, match="unknown commonsense task"):
        cs.extract_answer("mmlu", "answer1")


def _bigbench_rows():
    siqa = [{"input": "Tracy resisted Riley's attacks. What does Tracy need to do before this?",
             "target_scores": {"Make a new plan": 0, "Go home and see Riley": 0, "Find somewhere to go": 1}},
            {"input": "Kai sat down. Why did Kai do this?", "target_scores": {"rest": 1, "run": 0}}]
    sqa = [{"input": "Is it common to see frost during some college commencements?",
            "target_scores": {"Yes": 1, "No": 0}},
           {"input": "Could a llama birth twice during War in Vietnam (1945-46)?",
            "target_scores": {"Yes.": 0, "No.": 1}}]
    return siqa, sqa


def test_bigbench_siqa_and_strategyqa_rows():
    """BIG-bench's task.json rows (input, target_scores) in LLM-Adapters' SIQA / BoolQ formats."""
    siqa_rows, sqa_rows = _bigbench_rows()
    siqa = cs.bigbench_siqa(siqa_rows)
    assert siqa[0]["instruction"] == (
        "Please choose the correct answer to the question: Tracy resisted Riley's attacks. What does Tracy need to do "
        "before this?\n\nAnswer1: Make a new plan Answer2: Go home and see Riley Answer3: Find somewhere to go\n\n"
        "Answer format: answer1/answer2/answer3")
    assert [ex["answer"] for ex in siqa] == ["answer3", "answer1"]
    assert siqa[1]["instruction"].endswith("Answer format: answer1/answer2")  # BIG-bench's 2-choice items
    sqa = cs.bigbench_strategyqa(sqa_rows)
    assert sqa[0]["instruction"] == ("Please answer the following question with true or false, question: Is it "
                                     "common to see frost during some college commencements?\n\nAnswer format: "
                                     "true/false")
    assert [ex["answer"] for ex in sqa] == ["true", "false"]
    splits = cs.split_examples(sqa * 10 + siqa)
    assert splits == cs.split_examples(sqa * 10 + siqa)
    seen = [{ex["instruction"] for ex in v} for v in splits.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_bigbench_source_reads_the_users_copy(tmp_path, monkeypatch):
    """source=bigbench reads dataset.source_args.path (a benchmark_tasks folder of the user's); without one it
    says in one line what to set. Project-made task files in BIG-bench's layout, no BIG-bench data."""
    import json

    from kasa.errors import MissingAssetError
    from kasa.tasks.commonsense.task import commonsense_splits

    siqa_rows, sqa_rows = _bigbench_rows()
    for task, rows in (("social_iqa", siqa_rows), ("strategyqa", sqa_rows)):
        rows = [{**r, "input": f"{r['input']} ({i})"} for i in range(20) for r in rows]  # 40 distinct items
        (tmp_path / task).mkdir()
        (tmp_path / task / "task.json").write_text(json.dumps({"name": task, "examples": rows}))
    train, evals = commonsense_splits("bigbench", path=str(tmp_path))
    assert set(evals) == {"social_iqa", "strategyqa"} and {r["task"] for r in train} == set(evals)
    assert len(train) + sum(map(len, evals.values())) < 80 and all(len(v) >= 1 for v in evals.values())
    assert {r["answer"] for r in evals["strategyqa"]} <= {"true", "false"}
    monkeypatch.delenv("KASA_BIGBENCH", raising=False)
    with pytest.raises(MissingAssetError, match="source_args.path"):
        commonsense_splits("bigbench", tasks=["strategyqa"])


def test_bigbench_conversion_rejects_malformed_rows():
    with pytest.raises(ValueError, match="2-3 choices"):
        cs.bigbench_siqa([{"input": "q", "target_scores": {"a": 1}}])
    with pytest.raises(ValueError, match="Yes/No"):
        cs.bigbench_strategyqa([{"input": "q", "target_scores": {"Maybe": 1, "No": 0}}])
    with pytest.raises(ValueError, match="single correct"):
        cs.bigbench_siqa([{"input": "q", "target_scores": {"a": 1, "b": 1, "c": 0}}])


def test_module_decodes_prompt_and_generation_for_upstream_segmentation(tiny_causal_dir):
    """End to end from token ids: the model writes "the correct answer is true ### Response: ..." and the
    task scores "true" (LLM-Adapters' split of prompt + generation), whatever it writes after its own marker."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoTokenizer

    from kasa.tasks.commonsense.task import CommonsenseEvaluator
    from kasa.training.causal_lm import CausalLMModule, EvalItem, encode_prompt, pad_left

    tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
    prompts = [cs.build_prompt("Is it? Answer format: true/false", style=s) for s in ("alpaca", "llm_adapters_eval")]
    written = tok("the correct answer is true ### Response: the correct answer is false",
                  add_special_tokens=False)["input_ids"]

    class Scripted(torch.nn.Module):
        def generate(self, input_ids, attention_mask=None, **kw):
            new = torch.tensor([written] * input_ids.shape[0])
            return torch.cat([input_ids, new], dim=1)

    evaluator = CommonsenseEvaluator("alpaca")
    module = SimpleNamespace(model=Scripted(), tokenizer=tok, evaluator=evaluator, _pad_id=tok.eos_token_id,
                             generation=SimpleNamespace(generate_kwargs=lambda: {}, shared_prefix=False))
    ids, mask = pad_left([encode_prompt(tok, p) for p in prompts], tok.eos_token_id)
    texts = CausalLMModule.generate_ids(module, ids, mask)
    items = [EvalItem(p, {"task": "boolq", "answer": "true"}) for p in prompts]
    assert evaluator(items, texts, None, None) == {"boolq": 1.0, "average": 1.0}
