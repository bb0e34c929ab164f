"""Prompt templates the generation families share: Alpaca's (the instruction family's default, and the commonsense
family's) and LLM-Adapters' whitespace-exact variants of it (``finetune.py`` / ``commonsense_evaluate.py``)."""

from __future__ import annotations

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_INDENT = " " * 16
_TASK = "Below is an instruction that describes a task"
_TASK_INPUT = "Below is an instruction that describes a task, paired with an input that provides further context"
_WRITE = "Write a response that appropriately completes the request."
# commonsense_evaluate.py, generate_prompt: the text the reference model is scored on
LLM_ADAPTERS_EVAL_PROMPT = (
    f"{_TASK}. {_WRITE} \n\n"
    f"{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n\n{_INDENT}### Response:\n{_INDENT}"
)
LLM_ADAPTERS_EVAL_PROMPT_WITH_INPUT = (
    f"{_TASK_INPUT}. {_WRITE}\n\n"
    f"{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n\n{_INDENT}### Input:\n{_INDENT}{{input}}\n\n"
    f"{_INDENT}### Response:\n{_INDENT}"
)
# finetune.py, generate_prompt with an empty output (its user prompt): what the reference model is trained to
# continue with "the correct answer is <label>"
LLM_ADAPTERS_TRAIN_PROMPT = (
    f"{_TASK}. {_WRITE}  \n\n"
    f"{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n{_INDENT}\n{_INDENT}### Response:\n{_INDENT}"
)
LLM_ADAPTERS_TRAIN_PROMPT_WITH_INPUT = (
    f"{_TASK_INPUT}. {_WRITE} \n\n"
    f"{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n{_INDENT}\n{_INDENT}### Input:\n{_INDENT}{{input}}\n"
    f"{_INDENT}\n{_INDENT}### Response:\n{_INDENT}"
)
_TEMPLATES = {  # style -> (without input, with input)
    "alpaca": (ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT),
    "llm_adapters_train": (LLM_ADAPTERS_TRAIN_PROMPT, LLM_ADAPTERS_TRAIN_PROMPT_WITH_INPUT),
    "llm_adapters_eval": (LLM_ADAPTERS_EVAL_PROMPT, LLM_ADAPTERS_EVAL_PROMPT_WITH_INPUT),
}
PROMPT_STYLES = tuple(_TEMPLATES)


def build_prompt(instruction: str, input: str | None = None, style: str = "alpaca") -> str:
    """The prompt the model continues, in template ``style`` (one of :data:`PROMPT_STYLES`)."""
    if style not in _TEMPLATES:
        raise ValueError(f"unknown prompt style {style!r}; use one of {list(PROMPT_STYLES)}")
    plain, with_input = _TEMPLATES[style]
    if input:
        return with_input.format(instruction=instruction, input=input)
    return plain.format(instruction=instruction)
