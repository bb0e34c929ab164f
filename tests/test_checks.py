"""Bad input fails in one line (``kasa-train: error: ...``, exit 2), before any model loads where the value alone
decides: the table of every case, through kasa-train's real entry point (in-process, model loading patched
to fail the test), plus two cases as real subprocesses."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kasa_train_cli
from omegaconf import OmegaConf

import kasa.cli.train
import kasa.models
from kasa.config.checks import check_config, conforms, folder_problem
from kasa.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


class ModelLoaded(AssertionError):
    """A check that should have failed before loading let the backbone load."""


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelLoaded(f"load_model{args} ran: the bad value was not caught before loading")

    monkeypatch.setattr(kasa.models, "load_model", refuse)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write into, root included (chattr +i as root, chmod 555 otherwise)."""
    d = tmp_path / "read-only"
    d.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: no way to make a folder read-only")
        undo = ["chattr", "-i", str(d)]
    else:
        d.chmod(0o555)
        undo = ["chmod", "755", str(d)]
    assert folder_problem(d) is not None
    yield d
    subprocess.run(undo, check=True)


def _glue_copy(root: Path, train_rows: str) -> Path:
    """A local GLUE MRPC copy in the hub's column names (CSV)."""
    d = root / "glue" / "mrpc"
    d.mkdir(parents=True)
    header = "sentence1,sentence2,label,idx\n"
    (d / "train.csv").write_text(header + train_rows)
    (d / "validation.csv").write_text(header + "a cat,a dog,1,0\nsun,moon,0,1\n")
    return root / "glue"


LABEL_OUT_OF_RANGE = "a,b,1,0\nc,d,2,1\n"  # MRPC is binary
MALFORMED_CSV = 'a,b,1,0\nc,"d,0,1\n'  # an unclosed quote


def _glue_case(tmp: Path, rows: str) -> list[str]:
    return ["dataset=glue_mrpc", f"dataset.source_args.path={_glue_copy(tmp, rows)}"]


def kasa_train(monkeypatch, capsys, *overrides: str) -> tuple[int, list[str]]:
    """``kasa-train <overrides>`` in this process (conftest's kasa_train_cli: Hydra's logging undone after):
    (exit code, non-empty stderr lines)."""
    code = kasa_train_cli(monkeypatch, *overrides)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return code, err


# (overrides or a function of tmp_path and the read-only folder giving them, text the line must hold).
# Every case is decided by the value alone except the two data cases, which fail at data load, and data
# load comes before the model: no case may load a model.
CASES = [
    ("seed=abc", "seed='abc' is not allowed; use an integer >= 0"),
    ("method.alpha=abc", "method.alpha: Value 'abc' of type 'str' could not be converted to Float"),
    ("method.bta=1", "method.bta: Key 'bta' not in 'KasaConfig'"),
    ("model=nope", "Could not find 'model/nope'"),
    ("method=lora method.target_modules=3", "method.target_modules=3 is not allowed; lora takes a list of strings"),
    ("method.dropout=1.5", "method.dropout=1.5 is not allowed; use a probability in [0, 1)"),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1 is not allowed; use an integer >= 0"),
    ("benchmark.optim.scheduler=polynomial", "benchmark.optim.scheduler='polynomial' is not allowed; use one of "
     "linear, constant, cosine"),
    ("benchmark.batch_size=0", "benchmark.batch_size=0 is not allowed; use an integer >= 1"),
    ("benchmark.optim.lr=-1", "benchmark.optim.lr=-1 is not allowed; use a number > 0"),
    ("dataset.max_length=0", "dataset.max_length=0 is not allowed; use an integer >= 1"),
    ("benchmark=e2e model=minilm", "needs a causal LM, but model=minilm is BertModel"),
    ("model.name_or_path=/nonexistent/model", "'/nonexistent/model': the path does not exist"),
    ("benchmark=instruction benchmark.judge.backend=openai", "benchmark.judge.backend=openai needs an API key"),
    ("experiment=mini method=adalora", "Interpolation key 'study.lr.adalora' not found"),
    pytest.param(lambda tmp, ro: [f"hydra.run.dir={ro}/run"], "hydra.run.dir=", id="read-only output folder"),
    pytest.param(lambda tmp, ro: [f"sweep_dir={ro}/sweep"], "sweep_dir=", id="read-only sweep_dir"),
    pytest.param(lambda tmp, ro: [f"sweep_dir={tmp}/a-file/sweep"], "is a file, not a folder",
                 id="sweep_dir under a file"),
    pytest.param(lambda tmp, ro: ["+env:KASA_CACHE=" + str(ro / "cache")], "KASA_CACHE=", id="read-only KASA_CACHE"),
    pytest.param(lambda tmp, ro: _glue_case(tmp, LABEL_OUT_OF_RANGE), "train example 1 has label 2; labels must "
                 "be a class index in [0, 1]", id="GLUE label out of range"),
    pytest.param(lambda tmp, ro: _glue_case(tmp, MALFORMED_CSV), "ParserError: Error tokenizing data",
                 id="malformed CSV keeps the parser's reason"),
]


@pytest.mark.parametrize("overrides, message", CASES)
def test_bad_input_is_one_line_and_exit_2_before_any_model_loads(monkeypatch, capsys, tmp_path, read_only_dir,
                                                                    no_model_load, overrides, message):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    (tmp_path / "a-file").write_text("")
    args = overrides.split() if isinstance(overrides, str) else overrides(tmp_path, read_only_dir)
    env = [a for a in args if a.startswith("+env:")]
    for a in env:  # environment variables of the case
        key, value = a[len("+env:"):].split("=", 1)
        monkeypatch.setenv(key, value)
    args = [a for a in args if a not in env]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    code, err = kasa_train(monkeypatch, capsys, *args, "trainer.enable_progress_bar=false")
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("kasa-train: error: "), err
    assert message in err[0]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # no empty run folder left


def test_failed_run_leaves_no_empty_folder(monkeypatch, capsys, tmp_path, tiny_bert_dir):
    """A run that fails after Hydra made its folder (here: at data load) removes it, and its empty parents."""
    glue = _glue_copy(tmp_path, "a,b,1,0\nc,d,7,1\n")
    monkeypatch.chdir(tmp_path)
    code, err = kasa_train(monkeypatch, capsys, f"model.name_or_path={tiny_bert_dir}", "dataset=glue_mrpc",
                           f"dataset.source_args.path={glue}", "hydra.run.dir=outputs/one/run")
    assert code == 2 and "label 7" in err[-1]
    assert not (tmp_path / "outputs").exists()


def test_judge_endpoint_that_refuses_fails_in_one_line(monkeypatch):
    """The instruction family's own check (kasa.tasks.instruction: validate() runs it before anything loads)."""
    from kasa.tasks import get_task

    with socket_refusing_port() as port:
        cfg = OmegaConf.create({"benchmark": {"family": "instruction", "judge": {
            "backend": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}}})
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.* does not answer"):
            get_task("instruction").check(cfg)
        # an endpoint that needs no key (local vLLM, TGI) is not asked for one
        monkeypatch.delenv("OPENAI_API_KEY")
        with pytest.raises(ConfigError, match="does not answer"):
            get_task("instruction").check(cfg)


class socket_refusing_port:
    """A local TCP port that refuses connections (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


def test_good_values_pass():
    cfg = OmegaConf.create({"seed": 3, "trainer": {"max_epochs": -1, "max_steps": 100},
                            "benchmark": {"batch_size": 8, "optim": {"lr": 1e-3, "head_lr": None,
                                                                     "scheduler": "constant"}},
                            "dataset": {"max_length": 128}, "method": {"name": "lora", "alpha": 16, "dropout": 0}})
    check_config(cfg)  # max_epochs=-1 is Lightning's "no limit": fine with max_steps


def test_schema_sections_hold_their_keys_once():
    """benchmark.optim / lm_eval / judge come from their dataclasses: an unknown key fails when the config composes
    (one line from kasa-train), and every benchmark yaml gets every key of the section."""
    from kasa.cli.train import compose_error
    from kasa.config import compose
    from kasa.config.schemas import sections

    for name, cls in sections().items():
        keys = {f.name for f in dataclasses.fields(cls)}
        for bench in ("classification", "glue", "e2e", "commonsense", "instruction"):
            node = compose([f"benchmark={bench}"]).benchmark.get(name)
            assert node is None or set(node) == keys, (bench, name)
    assert "momentum" in compose_error(["benchmark.optim.momentum=0.9"])
    assert "temp" in compose_error(["benchmark=instruction", "benchmark.judge.temp=1"])


@pytest.mark.parametrize("value, hint, ok", [
    (16, float, True), (16.5, float, True), ("abc", float, False), (True, float, False), (True, bool, True),
    (3, int, True), (3.0, int, False), (None, int | None, True), (["q", "v"], list[str] | str | None, True),
    ("q", list[str] | str | None, True), ([1], list[str] | None, False),
])
def test_conforms(value, hint, ok):
    assert conforms(value, hint) is ok


@pytest.mark.parametrize("overrides, message", [
    ("seed=abc", "seed='abc' is not allowed"),
    # the same property through another check; in-process cases cover the message (8 min CI budget)
    pytest.param("benchmark=e2e model=minilm", "needs a causal LM", marks=pytest.mark.slow),
])
def test_cli_subprocess_one_line(tmp_path, overrides, message):
    """The console script itself: exactly one line on stderr, exit 2 (Hydra's logging and warnings included)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "kasa.train", *overrides.split(), f"hydra.run.dir={tmp_path / 'r'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith("kasa-train: error: ") and message in err[0]
    assert not (tmp_path / "r").exists()


def test_causal_lm_families_are_the_generation_benchmarks():
    from kasa.tasks import tasks

    assert {name for name, t in tasks().items() if t.causal_lm} == {"e2e", "commonsense", "instruction"}
    assert {name for name, t in tasks().items() if not t.causal_lm} == {"classification"}
