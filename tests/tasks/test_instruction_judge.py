"""LLM judge: MT-Bench files and prompts, score parsing, OpenAI-compatible backend against a local server
(with transient 429/500 retried), on-disk cache, local transformers backend."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from omegaconf import OmegaConf

from kasa.errors import ConfigError
from kasa.tasks import get_task
from kasa.tasks.instruction import judge as J


@pytest.fixture(autouse=True)
def _no_proxy_no_key(monkeypatch):
    # The local test server must be reached directly, and no real key may leak into a request.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


# ------------------------------------------------------------------ MT-Bench data and prompts


def test_mtbench_files_from_the_package():
    data = J.mtbench_data_dir()
    assert (data / "judge_prompts.jsonl").exists()
    qs = J.load_mtbench_questions()
    assert len(qs) == 80 and all(len(q["turns"]) == 2 for q in qs)
    cats = {}
    for q in qs:
        cats[q["category"]] = cats.get(q["category"], 0) + 1
    assert cats == {c: 10 for c in ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                                     "humanities")}
    refs = J.load_reference_answers()
    need = {q["question_id"] for q in qs if q["category"] in J.NEED_REF_CATS}
    assert need <= set(refs) and all(len(refs[i]) == 2 for i in need)
    prompts = J.load_judge_prompts()
    for name in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"):
        assert prompts[name].output_format == "[[rating]]"
        assert len(prompts[name].version) == 12


def _q(category: str):
    return next(q for q in J.load_mtbench_questions() if q["category"] == category)


def test_mtbench_requests_pick_fastchat_prompts():
    prompts = J.load_judge_prompts()
    writing = _q("writing")
    r1 = J.mtbench_request(writing, ["ANSWER-ONE", "ANSWER-TWO"], turn=1)
    assert r1.prompt_name == "single-v1"
    msgs = r1.as_messages()
    assert msgs[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert msgs[1]["content"] == prompts["single-v1"].prompt_template.format(question=writing["turns"][0],
                                                                             answer="ANSWER-ONE")
    r2 = J.mtbench_request(writing, ["ANSWER-ONE", "ANSWER-TWO"], turn=2)
    assert r2.prompt_name == "single-v1-multi-turn"
    assert r2.messages[0][1] == prompts["single-v1-multi-turn"].system_prompt
    user = r2.messages[1][1]
    assert writing["turns"][1] in user and "ANSWER-ONE" in user and "ANSWER-TWO" in user

    math = _q("math")
    ref = J.load_reference_answers()[math["question_id"]]
    m1 = J.mtbench_request(math, ["A1", "A2"], turn=1)
    assert m1.prompt_name == "single-math-v1" and ref[0] in m1.messages[1][1]
    m2 = J.mtbench_request(math, ["A1", "A2"], turn=2)
    assert m2.prompt_name == "single-math-v1-multi-turn"
    assert ref[0] in m2.messages[1][1] and ref[1] in m2.messages[1][1]
    with pytest.raises(ValueError, match="needs 2 answers"):
        J.mtbench_request(writing, ["only one"], turn=2)
    with pytest.raises(KeyError, match="needs a reference"):
        J.mtbench_request(math, ["A1", "A2"], turn=1, references={})


def test_conversation_for_answer_generation():
    q = _q("writing")
    assert J.mtbench_conversation(q) == [{"role": "user", "content": q["turns"][0]}]
    conv = J.mtbench_conversation(q, ["first answer"])
    assert [m["role"] for m in conv] == ["user", "assistant", "user"] and conv[2]["content"] == q["turns"][1]
    with pytest.raises(ValueError):
        J.mtbench_conversation(q, ["a", "b"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is good. Rating: [[8]]", 8),
        ("[[8.5]]", 8.5),
        ("Rating: [[7]]", 7),
        ("I'd say [6] overall", 6),
        ("Rating: [[10]]", 10),
        ("see reference [12]; final: [[4]]", 4),   # [[x]] wins over an earlier [x]
        ("See [12]. Rating: [8]", 12),             # FastChat: the first [x], no range filter
        ("see reference [12], overall [3]", 12),
        ("Rating: [[0]]", 0),
        ("Rating: [[8.]]", 8.0),
        ("Rating: 9", -1),                         # no "Rating: x" fallback in FastChat
        ("no score given", -1),
        ("", -1),
        ("[[ 7 ]]", -1),
        ("Rating: [[08]]", -1),                    # not a Python literal (FastChat raises); unparsed here
    ],
)
def test_parse_score_is_fastchats(text, expected):
    got = J.parse_score(text)
    assert got == expected and type(got) is type(expected)


def test_parse_score_against_fastchat_rule_on_random_texts():
    """FastChat's rule written out (common.py run_judge_single) against ours on generated judgements."""
    import ast
    import random
    import re

    one, backup = re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]")
    rng = random.Random(0)
    parts = ["[[7]]", "[12]", "[3.5]", "Rating: 9", "[[10]]", "[x]", "[[", "]]", " text ", "[1]", "[[2.25]]", "\n"]
    for _ in range(2000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 6)))
        m = re.search(one, text) or re.search(backup, text)
        assert J.parse_score(text) == (ast.literal_eval(m.groups()[0]) if m else -1), text


# ------------------------------------------------------------------ OpenAI-compatible backend


class _Server:
    """A local OpenAI-compatible endpoint: answers each POST with the next scripted (status, body)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, content = outer.script.pop(0) if outer.script else (200, "Rating: [[5]]")
                if status == 200:
                    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
                else:
                    payload = {"error": {"message": content}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0.01")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_judge_retries_transient_errors_with_backoff(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    delays = []
    with _Server([(429, "slow down"), (500, "oops"), (200, "Solid answer. Rating: [[7]]")]) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
        backend = J.OpenAIJudge(model="judge-model", backoff=0.01, sleep=delays.append)
        out = backend.complete([{"role": "user", "content": "hi"}])
    assert out == "Solid answer. Rating: [[7]]"
    assert len(srv.requests) == 3 and len(delays) == 2
    assert delays[1] > 0 and delays[0] >= 0.01  # Retry-After (0.01 s) respected on the 429
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-model" and req["body"]["temperature"] == 0.0
    assert req["body"]["max_tokens"] == 2048 and req["body"]["messages"] == [{"role": "user", "content": "hi"}]


def test_openai_judge_fails_fast_on_client_error_and_after_retries():
    with _Server([(400, "bad request")]) as srv:
        backend = J.OpenAIJudge(base_url=srv.url, api_key="k", sleep=lambda s: None)
        with pytest.raises(J.JudgeAPIError, match="HTTP 400"):
            backend.complete([{"role": "user", "content": "x"}])
        assert len(srv.requests) == 1
    with _Server([(503, "down")] * 3) as srv:
        backend = J.OpenAIJudge(base_url=srv.url, api_key="k", max_retries=2, sleep=lambda s: None)
        with pytest.raises(J.JudgeAPIError, match="after 3 attempts"):
            backend.complete([{"role": "user", "content": "x"}])
        assert len(srv.requests) == 3


def test_judge_caches_on_disk_and_reports_identity(tmp_path):
    q = _q("writing")
    with _Server([(200, "Fine. Rating: [[6]]"), (200, "Better. Rating: [[9]]"), (200, "garbled")]) as srv:
        cache = tmp_path / "judge.sqlite"
        judge = J.Judge(J.OpenAIJudge(model="m1", base_url=srv.url, api_key="k"), cache=cache)
        first = judge.grade_mtbench([q], {q["question_id"]: ["a1", "a2"]})
        assert [j.score for j in first] == [6.0, 9.0] and not any(j.cached for j in first)
        assert first[0].judge == {"backend": "openai", "model": "m1", "temperature": 0.0, "max_tokens": 2048,
                                  "prompt": "single-v1", "prompt_version": J.load_judge_prompts()["single-v1"].version}
        assert first[1].judge["prompt"] == "single-v1-multi-turn" and first[1].meta["turn"] == 2
        # A fresh Judge on the same cache file: no request reaches the server.
        again = J.Judge(J.OpenAIJudge(model="m1", base_url=srv.url, api_key="k"), cache=cache)
        second = again.grade_mtbench([q], {q["question_id"]: ["a1", "a2"]})
        assert [j.score for j in second] == [6.0, 9.0] and all(j.cached for j in second)
        assert len(srv.requests) == 2
        # Another judge model is another identity: a miss, and an unparsable judgement gives None.
        other = J.Judge(J.OpenAIJudge(model="m2", base_url=srv.url, api_key="k"), cache=cache)
        third = other.grade_answer("Q?", "A.")
        assert third.score == -1 and not third.parsed and third.judgement == "garbled" and len(srv.requests) == 3
    summary = J.mtbench_summary(first + [third])
    assert summary["score"] == 7.5 and summary["turn1"] == 6.0 and summary["turn2"] == 9.0
    assert summary["n_unparsed"] == 1 and len(summary["judges"]) == 3
    assert len(J.JudgementCache(cache)) == 3


def test_parallel_judging_keeps_order_uses_the_cache_and_surfaces_errors(tmp_path):
    """parallel=4: up to 4 backend calls at once, results in request order, each request paid once."""
    import time

    class Slow:
        def __init__(self):
            self.lock, self.active, self.peak, self.calls = threading.Lock(), 0, 0, 0

        def identity(self):
            return {"backend": "slow", "model": "echo"}

        def complete(self, messages):
            with self.lock:
                self.active += 1
                self.calls += 1
                self.peak = max(self.peak, self.active)
            answer = messages[-1]["content"]
            time.sleep(0.05 if "[1" in answer else 0.01)  # out-of-order completion
            with self.lock:
                self.active -= 1
            if "boom" in answer:
                raise RuntimeError("endpoint down")
            return f"Rating: [[{answer.split('score ')[1].split()[0]}]]"

    backend = Slow()
    judge = J.Judge(backend, tmp_path / "c.sqlite", parallel=4)
    jobs = [(J.single_answer_request("Q?", f"score {i} [{i}]"), {"i": i}) for i in range(1, 11)]
    out = judge.grade_many(jobs)
    assert [j.score for j in out] == [float(i) for i in range(1, 11)]
    assert [j.meta["i"] for j in out] == list(range(1, 11))
    assert 1 < backend.peak <= 4 and backend.calls == 10
    again = judge.grade_many(jobs)
    assert all(j.cached for j in again) and backend.calls == 10
    with pytest.raises(RuntimeError, match="endpoint down"):
        judge.grade_many([(J.single_answer_request("Q?", "score 3 boom"), {})] * 2)
    with pytest.raises(ValueError, match="parallel"):
        J.Judge(backend, parallel=0)


# ------------------------------------------------------------------ local transformers backend


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "[EOS]", "Rating", ":", "[[", "]]", "[", "]"] + [str(i) for i in range(11)]
    words += ["the", "answer", "is", "good", "bad", "SYSTEM", "USER", "ASSISTANT", "question", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


def test_local_judge_plumbing_with_a_tiny_random_model(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                      bos_token_id=2, eos_token_id=2, pad_token_id=1)
    backend = J.LocalJudge(LlamaForCausalLM(cfg), _tiny_tokenizer(), name="tiny-llama", max_new_tokens=6)
    judge = J.Judge(backend, cache=tmp_path / "c.sqlite")
    j1 = judge.grade_answer("the question", "the answer is good")
    assert isinstance(j1.judgement, str) and j1.judge["backend"] == "local" and j1.judge["model"] == "tiny-llama"
    assert j1.score == J.parse_score(j1.judgement)
    j2 = judge.grade_answer("the question", "the answer is good")
    assert j2.cached and j2.judgement == j1.judgement


@pytest.mark.slow
def test_local_judge_smollm2_grades_an_answer(tmp_path):
    from kasa.assets import smollm2_path

    judge = J.Judge(J.LocalJudge(smollm2_path(), name="SmolLM2-135M-Instruct", max_new_tokens=96),
                    cache=tmp_path / "c.sqlite")
    j = judge.grade_answer("What is the capital of France?", "The capital of France is Paris.")
    assert len(j.judgement) > 0 and j.judge["model"] == "SmolLM2-135M-Instruct"
    assert j.score == J.parse_score(j.judgement)


# ------------------------------------------------------------------ MT-Bench answer decoding


class _SamplingModule:
    """Records the generate keywords per prompt and 'samples' with torch's RNG, like model.generate does."""

    device, current_epoch = "cpu", 0

    def __init__(self):
        self.calls = []

    def generate_texts(self, prompts, desc=None, **kw):
        import torch

        self.calls.append((list(prompts), kw))
        if kw.get("do_sample"):
            return [f"{p[:12]}|{torch.rand(1).item():.6f}" for p in prompts]
        return [f"{p[:12]}|greedy" for p in prompts]


def test_mtbench_answers_use_fastchat_temperatures_seeded():
    import torch

    from kasa.tasks.instruction.task import JudgeEvaluator

    assert J.answer_temperature("writing") == 0.7 and J.answer_temperature("humanities") == 0.1
    assert J.answer_temperature("math") == 0.0 and J.answer_temperature("unlisted") == 0.7  # FastChat's default
    assert J.answer_generate_kwargs(0.0) == {"do_sample": False}
    assert J.answer_generate_kwargs(0.7) == {"do_sample": True, "temperature": 0.7}
    questions = J.load_mtbench_questions()
    prompts = [q["turns"][0] for q in questions]
    ev = JudgeEvaluator({"backend": "local"}, {"max_questions": None}, seed=3)
    m = _SamplingModule()
    before = torch.random.get_rng_state()
    first = ev.answer_mtbench(m, questions, prompts, turn=1, max_new_tokens=1024)
    assert torch.equal(torch.random.get_rng_state(), before)  # training's random stream untouched
    by_prompt = {p: kw for ps, kw in m.calls for p in ps}
    for q, p in zip(questions, prompts):
        t = J.TEMPERATURE_CONFIG[q["category"]]
        want = {"max_new_tokens": 1024, **({"do_sample": True, "temperature": t} if t > 1e-4 else {"do_sample": False})}
        assert by_prompt[p] == want, q["category"]
    assert [kw.get("temperature") for _, kw in m.calls] == [None, 0.1, 0.7]  # one call per temperature
    sampled = [a for a, q in zip(first, questions) if q["category"] in ("writing", "roleplay", "stem", "humanities")]
    assert len(sampled) == 40 and all(not a.endswith("greedy") for a in sampled)
    assert ev.answer_mtbench(_SamplingModule(), questions, prompts, turn=1, max_new_tokens=1024) == first  # rerun
    other_turn = ev.answer_mtbench(_SamplingModule(), questions, prompts, turn=2, max_new_tokens=1024)
    assert other_turn != first  # each turn has its own seed
    greedy = JudgeEvaluator({"backend": "local"}, {"temperatures": "greedy"})
    assert all(a.endswith("greedy") for a in greedy.answer_mtbench(_SamplingModule(), questions, prompts, turn=1))
    with pytest.raises(ConfigError, match="temperatures='hot' is unknown"):
        get_task("instruction").check(
            OmegaConf.create({"benchmark": {"judge": {}, "mtbench": {"temperatures": "hot"}}}))


def test_openai_judge_without_key_fails_before_training():
    def cfg(**judge):
        return OmegaConf.create({"benchmark": {"judge": judge}})

    with pytest.raises(ConfigError, match="needs an API key"):
        get_task("instruction").check(cfg(backend="openai", model="gpt-4"))
    with pytest.raises(ConfigError, match="benchmark.judge.parallel=0 is not allowed"):
        get_task("instruction").check(cfg(parallel=0))
    with pytest.raises(ConfigError, match="benchmark.judge: .*unexpected keyword argument 'temp'"):
        get_task("instruction").check(cfg(temp=1.0))
