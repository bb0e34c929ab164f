"""The generation benchmark families: ``e2e``, ``commonsense`` and ``instruction`` (registered on import).

Each builder turns its data into ``prompt -> completion`` pairs and evaluation prompts, loads the causal LM
and returns a :class:`~kasa.families.TaskBundle` around a :class:`~kasa.generation.CausalLMModule` with the
family's evaluator: official E2E metrics, LLM-Adapters answer extraction, or an LLM judge (held-out prompts
and MT-Bench's two turns).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

from .eval import commonsense as cs
from .families import TaskBundle, as_dict, family
from .generation import (CausalLMModule, CompletionDataModule, CompletionExample, EvalItem, Evaluator,
                         GenerationSettings)
from .methods.base import PeftMethod
from .module import OptimConfig


def _bundle(cfg: DictConfig, method: PeftMethod, train: list[CompletionExample], items: list[EvalItem],
            evaluator: Evaluator, sizes: dict[str, int]) -> TaskBundle:
    """Tokenizer, causal LM, datamodule and module: the part every generation family shares."""
    from .models import load_model, load_tokenizer

    b, m = cfg.benchmark, cfg.model
    tok = load_tokenizer(m.name_or_path, revision=m.get("revision"))
    model = load_model(m.name_or_path, task="causal_lm", dtype=m.get("dtype"), revision=m.get("revision"),
                       gradient_checkpointing=m.get("gradient_checkpointing", False),
                       attn_implementation=m.get("attn_implementation"))
    gen = GenerationSettings(**as_dict(b.generation))
    dm = CompletionDataModule(train, items, tok, max_length=b.max_length, batch_size=b.batch_size,
                              eval_batch_size=b.eval_batch_size, seed=cfg.seed,
                              train_on_inputs=b.get("train_on_inputs", False), max_prompt_length=gen.max_prompt_length)
    module = CausalLMModule(model, method, tok, evaluator, gen, OptimConfig(**as_dict(b.optim)),
                            eval_batch_size=b.eval_batch_size)
    return TaskBundle(model, dm, module, sizes)


def _cap(rows: list, n: int | None, seed: int) -> list:
    return rows if n is None or n >= len(rows) else random.Random(seed).sample(rows, n)


# ---------------------------------------------------------------------------------------------------
# E2E NLG


class E2EEvaluator:
    """The five official E2E metrics of one output per MR against that MR's references (paper scale:
    BLEU, METEOR, ROUGE-L x100). The output is cut at its first newline: a completion is one line."""

    def __init__(self, use_java: bool | None = None):
        self.use_java = use_java
        self.info: dict[str, Any] = {"evaluator": "e2e-metrics"}

    def __call__(self, items: Sequence[EvalItem], generations: Sequence[str], module: Any,
                 out_dir: Path | None) -> dict[str, float]:
        from .eval.e2e import e2e_metrics, to_paper_scale

        hyps = [g.split("\n")[0].strip() for g in generations]
        scores = e2e_metrics(hyps, [it.meta["references"] for it in items], use_java=self.use_java)
        self.info = {"evaluator": "e2e-metrics", "backend": scores.backend, "n_instances": scores.n_instances,
                     "scale": "BLEU, METEOR, ROUGE_L x100; NIST, CIDEr as computed"}
        return to_paper_scale(scores)


@family("e2e")
def e2e(cfg: DictConfig, method: PeftMethod) -> TaskBundle:
    """E2E NLG: train on every (MR, reference) pair, validate by beam search once per unique MR."""
    from .data.generation import e2e_splits

    d, b = cfg.dataset, cfg.benchmark
    s = e2e_splits(d.source, **as_dict(d.get("source_args")))
    prompt, completion = b.get("prompt_template", "{context} ->"), b.get("completion_template", " {completion}")
    pairs = [(mr, ref) for mr, refs in s["train"].items() for ref in refs]
    pairs = _cap(pairs, d.get("max_train"), cfg.seed)
    train = [CompletionExample(prompt.format(context=mr), completion.format(completion=ref)) for mr, ref in pairs]
    grouped = list(s["eval"].items())[: d.get("max_eval")]
    items = [EvalItem(prompt.format(context=mr), {"mr": mr, "references": list(refs)}) for mr, refs in grouped]
    return _bundle(cfg, method, train, items, E2EEvaluator(b.get("use_java")),
                   {"train": len(train), "validation": len(items),
                    "validation_references": sum(len(it.meta["references"]) for it in items)})


# ---------------------------------------------------------------------------------------------------
# commonsense reasoning (LLM-Adapters protocol)


class CommonsenseEvaluator:
    """Per-task accuracy of the first label match in each response, plus the unweighted ``average``."""

    def __init__(self, prompt_style: str):
        self.info: dict[str, Any] = {"evaluator": "llm-adapters-first-match", "eval_prompt": prompt_style}

    def __call__(self, items: Sequence[EvalItem], generations: Sequence[str], module: Any,
                 out_dir: Path | None) -> dict[str, float]:
        per_task: dict[str, tuple[list[str], list[str]]] = {}
        for it, g in zip(items, generations):
            gens, labels = per_task.setdefault(it.meta["task"], ([], []))
            gens.append(cs.response_from_generation(g))
            labels.append(it.meta["answer"])
        # Each task's own label set (StrategyQA is scored as BoolQ: true/false); "average" is the plain mean.
        out = cs.evaluate_predictions(per_task)
        self.info = {**self.info, "n_per_task": {t: len(v[1]) for t, v in per_task.items()}}
        return out


@family("commonsense")
def commonsense(cfg: DictConfig, method: PeftMethod) -> TaskBundle:
    """Commonsense170K-style instruction tuning; each task scored by generation + answer extraction."""
    from .data.generation import commonsense_splits

    d, b = cfg.dataset, cfg.benchmark
    train_rows, evals = commonsense_splits(d.source, max_train=d.get("max_train"),
                                           max_eval_per_task=d.get("max_eval"), **as_dict(d.get("source_args")))
    style = b.get("eval_prompt_style", "llm_adapters_eval")
    train = [CompletionExample(cs.build_prompt(r["instruction"], r.get("input") or None), r["output"])
             for r in train_rows]
    items = [EvalItem(cs.build_prompt(r["instruction"], style=style), {"task": task, "answer": r["answer"]})
             for task, rows in evals.items() for r in rows]
    return _bundle(cfg, method, train, items, CommonsenseEvaluator(style),
                   {"train": len(train), "validation": len(items),
                    **{f"validation_{t}": len(r) for t, r in evals.items()}})


# ---------------------------------------------------------------------------------------------------
# instruction following (LLM judge; MT-Bench)


def build_judge(spec: Mapping[str, Any], device: Any = None):
    """A :class:`kasa.eval.judge.Judge` from the config's ``judge`` block (``local`` or ``openai``), cached."""
    from .assets import cache_dir
    from .eval.judge import Judge, LocalJudge, OpenAIJudge
    from .models import resolve_path

    spec = dict(spec)
    backend = spec.get("backend", "local")
    if backend == "local":
        name = spec.get("model") or "smollm2"
        be = LocalJudge(resolve_path(name), name=name, max_new_tokens=spec.get("max_new_tokens", 512),
                        device=None if device is None else str(device))
    elif backend == "openai":
        be = OpenAIJudge(model=spec.get("model") or "gpt-4", base_url=spec.get("base_url"),
                         max_tokens=spec.get("max_new_tokens", 2048), temperature=spec.get("temperature", 0.0))
    else:
        raise ValueError(f"unknown judge backend '{backend}'; use local or openai")
    cache = spec.get("cache") or cache_dir() / "judgements.sqlite"
    return Judge(be, cache, parallel=int(spec.get("parallel") or 1))


def select_mtbench(questions: Sequence[Mapping[str, Any]], n: int | None) -> list[Mapping[str, Any]]:
    """``n`` questions taken round-robin over the categories (all 80 when ``n`` is None)."""
    if n is None or n >= len(questions):
        return list(questions)
    by_cat: dict[str, list] = {}
    for q in sorted(questions, key=lambda q: q["question_id"]):
        by_cat.setdefault(q["category"], []).append(q)
    out, i = [], 0
    while len(out) < n:
        for cat in by_cat.values():
            if i < len(cat) and len(out) < n:
                out.append(cat[i])
        i += 1
    return out


def mtbench_prompt(turns: Sequence[str], answers: Sequence[str]) -> str:
    """The Alpaca-format conversation the fine-tuned model continues for the next MT-Bench turn."""
    text = cs.build_prompt(turns[0])
    for turn, answer in zip(turns[1:], answers):
        text += f"{answer}\n\n### Instruction:\n{turn}\n\n### Response:\n"
    return text


class PromptFormat:
    """How instruction conversations are written for the fine-tuned model.

    ``alpaca``: the Alpaca / LLM-Adapters template (``### Instruction:`` / ``### Response:``; later MT-Bench
    turns appended in the same style). ``chat``: the tokenizer's chat template (or ``chat_template``, a Jinja
    string such as LlamaDuo's ChatML template), user and assistant roles; the training target is what the
    template writes after the generation prompt (the answer and its end-of-turn marker), the final EOS token
    coming from the encoder. A BOS the template writes is dropped from the text when the tokenizer adds one.
    """

    KINDS = ("alpaca", "chat")

    def __init__(self, kind: str = "alpaca", tokenizer: Any = None, chat_template: str | None = None):
        if kind not in self.KINDS:
            raise ValueError(f"benchmark.prompt_format='{kind}' is unknown; use one of {list(self.KINDS)}")
        if kind == "chat" and not (chat_template or getattr(tokenizer, "chat_template", None)):
            raise ValueError("benchmark.prompt_format=chat: the tokenizer has no chat template; set "
                             "benchmark.chat_template to a Jinja template or use prompt_format=alpaca")
        self.kind, self.tokenizer, self.chat_template = kind, tokenizer, chat_template
        # a BOS the template writes is dropped from the text when the encoder adds one itself
        self._bos = (tokenizer.bos_token if kind == "chat" and tokenizer.bos_token and
                     tokenizer("", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id] else None)

    @staticmethod
    def turn(instruction: str, input: str | None = None) -> str:
        """One user turn from an Alpaca record: the instruction, then its input after a blank line."""
        return instruction + (f"\n\n{input}" if input else "")

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  chat_template=self.chat_template)
        return text[len(self._bos):] if self._bos and text.startswith(self._bos) else text

    @staticmethod
    def _messages(turns: Sequence[str], answers: Sequence[str]) -> list[dict[str, str]]:
        msgs = []
        for i, turn in enumerate(turns):
            msgs.append({"role": "user", "content": turn})
            if i < len(answers):
                msgs.append({"role": "assistant", "content": answers[i]})
        return msgs

    def prompt(self, turns: Sequence[str], answers: Sequence[str] = ()) -> str:
        """The conversation up to the model's next answer: ``turns[k]`` user turns, ``answers`` the model's
        earlier answers (one fewer than the turns)."""
        if self.kind == "alpaca":
            return mtbench_prompt(turns, answers)
        return self._render(self._messages(turns, answers), generation_prompt=True)

    def example(self, instruction: str, input: str | None, answer: str) -> CompletionExample:
        """A training pair; Alpaca keeps its ``### Input:`` block, chat puts the input after the instruction and
        supervises what the template writes after the generation prompt (the answer and its end of turn)."""
        if self.kind == "alpaca":
            return CompletionExample(cs.build_prompt(instruction, input or None), answer)
        turn = self.turn(instruction, input)
        prompt = self.prompt([turn])
        full = self._render(self._messages([turn], [answer]), generation_prompt=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template does not write the generation prompt as a prefix of the full "
                             "conversation; set benchmark.chat_template or use prompt_format=alpaca")
        target = full[len(prompt):]
        eos = self.tokenizer.eos_token
        cut = target.rfind(eos) if eos else -1
        if cut >= 0 and not target[cut + len(eos):].strip():  # the encoder appends EOS itself
            target = target[:cut]
        return CompletionExample(prompt, target)

    def eval_prompt(self, instruction: str, input: str | None) -> str:
        if self.kind == "alpaca":
            return cs.build_prompt(instruction, input or None)
        return self.prompt([self.turn(instruction, input)])


class JudgeEvaluator:
    """Single-answer 1-10 grading of the held-out responses and, optionally, MT-Bench (both turns).

    Scores: ``judge_score`` (mean over parsed ratings, NaN if none parsed), ``judge_parsed`` (share parsed),
    ``mtbench``, ``mtbench_turn1``, ``mtbench_turn2``. Judgements go to ``judgements/epoch<N>.jsonl``.
    """

    def __init__(self, judge_spec: Mapping[str, Any], mtbench: Mapping[str, Any] | None = None, judge: Any = None,
                 prompt_format: PromptFormat | None = None):
        self.judge_spec, self.mtbench = dict(judge_spec), dict(mtbench or {})
        self._judge = judge
        self.prompt_format = prompt_format or PromptFormat()
        self.info: dict[str, Any] = {"evaluator": "llm-judge"}

    def judge(self, device: Any = None):
        if self._judge is None:
            self._judge = build_judge(self.judge_spec, device)
        return self._judge

    def __call__(self, items: Sequence[EvalItem], generations: Sequence[str], module: CausalLMModule,
                 out_dir: Path | None) -> dict[str, float]:
        from .eval.judge import load_mtbench_questions, mtbench_summary, single_answer_request

        # Under data parallelism only rank 0 judges (an API judge is paid once); the module broadcasts its scores.
        trainer = getattr(module, "_trainer", None)
        scoring = trainer is None or trainer.global_rank == 0
        judge = self.judge(module.device) if scoring else None
        # reference=true grades against the set's own answer (FastChat's single-math-v1 prompt), as LlamaDuo's
        # similarity judging does; the default is the paper's reference-free single-answer grading
        with_ref = bool(self.judge_spec.get("reference", False))
        jobs = [(single_answer_request(it.meta["question"], g, it.meta.get("reference") if with_ref else None),
                 {"kind": "heldout", "source": it.meta.get("source"), "prompt": it.meta["question"], "response": g})
                for it, g in zip(items, generations)]
        graded = judge.grade_many(jobs, desc="judging held-out answers") if scoring else []
        scores = [j.score for j in graded if j.score is not None]
        out = {"judge_score": sum(scores) / len(scores) if scores else math.nan,
               "judge_parsed": len(scores) / len(graded) if graded else math.nan}
        mt_info: dict[str, Any] = {}
        if self.mtbench.get("enabled", True):
            questions = select_mtbench(load_mtbench_questions(), self.mtbench.get("max_questions"))
            gen_kw = {"max_new_tokens": self.mtbench["max_new_tokens"]} if self.mtbench.get("max_new_tokens") else {}
            print(f"[kasa] MT-Bench: answering {len(questions)} questions (2 turns) and judging", flush=True)
            # every rank generates (FSDP's forwards need all ranks); only the scoring rank judges
            fmt = self.prompt_format
            first = module.generate_texts([fmt.prompt(q["turns"][:1]) for q in questions],
                                          desc="MT-Bench turn 1", **gen_kw)
            second = module.generate_texts([fmt.prompt(q["turns"][:2], [a]) for q, a in zip(questions, first)],
                                           desc="MT-Bench turn 2", **gen_kw)
            if scoring:
                answers = {q["question_id"]: [a1, a2] for q, a1, a2 in zip(questions, first, second)}
                mt = judge.grade_mtbench(questions, answers)
                summ = mtbench_summary(mt)
                for key, name in (("score", "mtbench"), ("turn1", "mtbench_turn1"), ("turn2", "mtbench_turn2")):
                    out[name] = summ.get(key) if summ.get(key) is not None else math.nan
                mt_info = {"n_questions": len(questions), "n_unparsed": summ["n_unparsed"],
                           "categories": summ["categories"]}
                for j in mt:  # the judged answer next to its judgement, for reading the jsonl
                    j.meta["response"] = answers[j.meta["question_id"]][j.meta["turn"] - 1]
                graded += mt
        if not scoring:
            return out
        if out_dir is not None:
            path = out_dir / "judgements" / f"epoch{module.current_epoch}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                for j in graded:
                    f.write(json.dumps(j.to_json(), ensure_ascii=False, default=str) + "\n")
        self.info = {"evaluator": "llm-judge", "judge": judge.backend.identity(),
                     "prompts": sorted({j.judge["prompt"] for j in graded}),
                     "cache": str(getattr(judge.cache, "path", None)), "n_heldout": len(items),
                     "mtbench": mt_info or None}
        return out


@family("instruction")
def instruction(cfg: DictConfig, method: PeftMethod) -> TaskBundle:
    """Instruction tuning (Alpaca template or the model's chat template), judged by an LLM on held-out prompts
    and on MT-Bench."""
    from .data.generation import instruction_splits

    d, b = cfg.dataset, cfg.benchmark
    train_rows, eval_rows = instruction_splits(d.source, max_train=d.get("max_train"), max_eval=d.get("max_eval"),
                                               **as_dict(d.get("source_args")))
    kind = b.get("prompt_format", "alpaca")
    tok = None
    if kind == "chat":
        from .models import load_tokenizer

        tok = load_tokenizer(cfg.model.name_or_path, revision=cfg.model.get("revision"))
    fmt = PromptFormat(kind, tok, b.get("chat_template"))
    train = [fmt.example(r["instruction"], r.get("input"), r["output"]) for r in train_rows]
    items = []
    for r in eval_rows:
        question = PromptFormat.turn(r["instruction"], r.get("input"))
        items.append(EvalItem(fmt.eval_prompt(r["instruction"], r.get("input")),
                              {"question": question, "reference": r["output"], "source": r.get("source")}))
    evaluator = JudgeEvaluator(as_dict(b.judge), as_dict(b.get("mtbench")), prompt_format=fmt)
    return _bundle(cfg, method, train, items, evaluator, {"train": len(train), "validation": len(items)})
