"""kasa-train's console: Lightning's info lines once, no raw colour codes from transformers, no advertisement, no
deprecation warning for activation checkpointing; a model path that does not exist is named as such."""

from __future__ import annotations

import logging
import warnings

import pytest


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def hydra_like_root():
    """A root handler as Hydra's job logging installs one."""
    root = logging.getLogger()
    h = Collect()
    root.addHandler(h)
    yield h
    root.removeHandler(h)


def test_lightning_lines_once_and_no_advertisement(hydra_like_root):
    import lightning  # noqa: F401
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from kasa.cli.console import quiet_console

    quiet_console()
    light = logging.getLogger("lightning")
    assert not [h for h in light.handlers if type(h) is logging.StreamHandler]  # Hydra's root prints them
    logging.getLogger("lightning.pytorch").propagate = True  # as when lightning is imported under Hydra
    rank_zero_info("GPU available: False, used: False")
    rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
    assert [ln for ln in hydra_like_root.lines if "GPU available" in ln] == ["GPU available: False, used: False"]
    assert not [ln for ln in hydra_like_root.lines if "Tip:" in ln]


def test_transformers_load_report_has_no_colour_codes():
    from transformers.utils import logging as hf_logging

    from kasa.cli.console import quiet_console

    quiet_console()
    handlers = hf_logging.get_logger().handlers  # what transformers prints through (its own stderr handler)
    assert handlers
    for h in handlers:
        msg = "\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: somewhere"
        record = logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, msg, None, None)
        assert h.filter(record)
        text = h.format(record)
        assert "BertForSequenceClassification LOAD REPORT from: somewhere" in text and "\x1b[" not in text


def test_activation_checkpointing_without_deprecation_warning(tiny_bert_dir):
    from kasa.models import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = load_model(str(tiny_bert_dir), num_labels=5, gradient_checkpointing=True)
        assert model.is_activation_checkpointing


def test_missing_local_model_path_is_named(tmp_path):
    from kasa.errors import ModelLoadError
    from kasa.models import load_model

    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_model(str(tmp_path / "no-such-model"))
    assert "downloaded" not in str(info.value)


def test_wandb_with_a_key_and_no_network_logs_offline_within_seconds(tmp_path, monkeypatch, capsys):
    """W&B's host refuses connections (a local port nobody listens on): the run logs offline, fast."""
    import socket
    import time

    from omegaconf import OmegaConf

    from kasa.training.loggers import build_loggers

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = OmegaConf.create({"run_name": "r", "logger": {"csv": False, "wandb": {"project": "kasa", "mode": "auto"}}})
    t0 = time.time()
    try:
        loggers = build_loggers(cfg, tmp_path)
        took = time.time() - t0
        assert len(loggers) == 1 and took < 30, took
        assert loggers[0]._offline and loggers[0].experiment.settings.mode in ("offline", "dryrun")
        assert "logging offline" in capsys.readouterr().err
    finally:
        sock.close()
        import wandb

        wandb.finish()
