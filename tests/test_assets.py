"""Offline-asset plumbing: the manifest pins every archive, fetch goes through pip, checks the sha256, extracts once
and atomically, and every failure is one line naming the package, the version and the fix."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from kasa import assets


def test_manifest_pins_every_asset_by_version_and_sha256():
    assert set(assets.MANIFEST) >= {"minilm", "smollm2", "mtbench", "olmo", "vader", "evals", "seed_tasks"}
    for name, a in assets.MANIFEST.items():
        assert a.name == name and re.fullmatch(r"[0-9a-f]{64}", a.sha256), name
        stem = a.package.replace("-", "_") if not a.sdist else a.package
        assert a.filename.startswith(f"{stem}-{a.version}"), a.filename
        assert a.members and a.licence and a.what


def _wheel(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pkg/data/a.txt", "alpha")
        zf.writestr("pkg/data/b.txt", "beta")
        zf.writestr("pkg/__init__.py", "")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _sdist(path: Path) -> bytes:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        for name, text in (("set/one_GroundTruth.txt", "1\t2.0\tgood\n"), ("set/readme.txt", "r")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text.encode()))
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w:gz") as tf:
        for name, data in (("pkg-1.0/extra/set.tar.gz", inner.getvalue()), ("pkg-1.0/setup.py", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(outer.getvalue())
    return outer.getvalue()


@pytest.fixture
def fake_pip(monkeypatch, tmp_path):
    """A manifest of two small archives and a `pip download` that serves them (or fails, as asked)."""
    src = tmp_path / "index"
    src.mkdir()
    wheel, sdist = _wheel(src / "pkg-1.0-py3-none-any.whl"), _sdist(src / "pkg-1.0.tar.gz")
    manifest = {
        "w": assets.Asset("w", "pkg", "1.0", "pkg-1.0-py3-none-any.whl", hashlib.sha256(wheel).hexdigest(),
                          ("pkg/data/*",), "a wheel", "MIT"),
        "s": assets.Asset("s", "pkg", "1.0", "pkg-1.0.tar.gz", hashlib.sha256(sdist).hexdigest(),
                          ("extra/set.tar.gz",), "a source archive", "MIT", unpack=("extra/set.tar.gz",)),
    }
    monkeypatch.setattr(assets, "MANIFEST", manifest)
    monkeypatch.setenv("KASA_CACHE", str(tmp_path / "cache"))
    calls: list[list[str]] = []
    state = {"gone": False}

    def run(cmd, capture_output=True, text=True):
        calls.append(cmd)
        if state["gone"]:
            return subprocess.CompletedProcess(cmd, 1, "", "WARNING: noise\nERROR: No matching distribution found "
                                                            "for pkg==1.0\n")
        dest = Path(cmd[cmd.index("--dest") + 1])
        name = "pkg-1.0.tar.gz" if "--no-binary" in cmd else "pkg-1.0-py3-none-any.whl"
        (dest / name).write_bytes((src / name).read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", run)
    return manifest, calls, state


def test_fetch_extracts_members_once_through_pip(fake_pip):
    manifest, calls, _ = fake_pip
    out = assets.fetch("w")
    assert sorted(p.name for p in (out / "pkg" / "data").iterdir()) == ["a.txt", "b.txt"]
    assert not (out / "pkg" / "__init__.py").exists()  # only the manifest's members
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd and "pkg==1.0" in cmd
    assert not any("http" in part for part in cmd)  # the user's configured index, no URL of ours
    assert assets.fetch("w") == out and len(calls) == 1  # once
    assert not list((assets.cache_dir() / "downloads").glob("*.whl"))  # the archive is not kept

    nested = assets.fetch("s")
    assert (nested / "extra" / "set" / "one_GroundTruth.txt").read_text() == "1\t2.0\tgood\n"
    assert "--no-binary" in calls[-1]


def test_a_package_that_left_the_index_is_one_line(fake_pip, capsys):
    _, _, state = fake_pip
    state["gone"] = True
    with pytest.raises(assets.MissingAssetError) as info:
        assets.fetch("w")
    msg = str(info.value)
    assert "\n" not in msg and "pkg==1.0" in msg and "No matching distribution" in msg
    assert "python -m kasa.assets fetch w" in msg
    assert assets.main(["fetch", "w"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("MISSING") and "pkg==1.0" in err[-1]
    assert not assets.is_prepared("w")


def test_a_file_with_another_sha256_is_refused_and_not_kept(fake_pip, monkeypatch):
    manifest, _, _ = fake_pip
    monkeypatch.setitem(assets.MANIFEST, "w", assets.Asset(**{**manifest["w"].__dict__, "sha256": "0" * 64}))
    with pytest.raises(assets.MissingAssetError, match="sha256"):
        assets.fetch("w")
    assert not list((assets.cache_dir() / "downloads").iterdir())
    assert not (assets.cache_dir() / "assets" / "pkg-1.0").exists()


def test_a_placed_archive_is_used_without_pip(fake_pip):
    manifest, calls, state = fake_pip
    state["gone"] = True
    downloads = assets.cache_dir() / "downloads"
    downloads.mkdir(parents=True)
    _wheel(downloads / manifest["w"].filename)
    assert (assets.fetch("w") / "pkg" / "data" / "a.txt").exists() and not calls


def test_unknown_asset_is_one_line(capsys):
    assert assets.main(["fetch", "nope"]) == 2
    assert "unknown asset nope" in capsys.readouterr().err


def test_check_asks_the_index_without_downloading(fake_pip, monkeypatch, capsys):
    manifest, _, _ = fake_pip
    listing = [[manifest["w"].filename, "sha256", manifest["w"].sha256], [manifest["s"].filename, "sha256", "f" * 64]]
    calls = []

    def run(cmd, capture_output=True, text=True):
        calls.append(cmd)
        assert "download" not in cmd and "install" not in cmd
        return subprocess.CompletedProcess(cmd, 0, json.dumps(listing) + "\n", "")

    monkeypatch.setattr(assets.subprocess, "run", run)
    assert assets.check("w") == (True, f"pip can get {manifest['w'].filename} (sha256 matches)")
    ok, says = assets.check("s")
    assert not ok and "sha256" in says
    listing[:] = [["pkg-0.9.tar.gz", "sha256", "0" * 64]]
    ok, says = assets.check("w")
    assert not ok and "does not offer pkg-1.0-py3-none-any.whl" in says
    listing[:] = [[manifest["w"].filename, "sha256", manifest["w"].sha256]]
    assert assets.main(["check"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["ok", "MISSING"]


def test_check_falls_back_to_pip_index_versions(fake_pip, monkeypatch):
    def run(cmd, capture_output=True, text=True):
        if "-c" in cmd:  # pip's internals moved
            return subprocess.CompletedProcess(cmd, 1, "", "ImportError: no such thing")
        assert cmd[3:5] == ["index", "versions"] and "--only-binary" in cmd
        return subprocess.CompletedProcess(cmd, 0,
                                           f"pkg ({versions[0]})\nAvailable versions: {', '.join(versions)}\n", "")

    monkeypatch.setattr(assets.subprocess, "run", run)
    versions = ["1.1", "0.9"]
    ok, says = assets.check("w")
    assert not ok and says == "the index does not list pkg==1.0"
    versions = ["1.1", "1.0"]
    assert assets.check("w") == (True, "the index lists pkg==1.0 (its sha256 is checked when fetched)")


def test_build_once_builds_once_for_processes_asking_at_once(tmp_path):
    """Two processes ask for the same derived folder at once (two pytest-xdist workers on an empty cache): one
    builds, the other waits and reads what it built."""
    import textwrap

    out, log = tmp_path / "derived", tmp_path / "builds.log"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from kasa.assets import build_once
        def build(d):
            d.mkdir()
            with open({str(log)!r}, "a") as f:
                f.write("built\\n")
            time.sleep(1.0)  # long enough for the other process to arrive while this one builds
            (d / "done").write_text("ok")
        got = build_once(Path({str(out)!r}), lambda d: (d / "done").exists(), build)
        print((got / "done").read_text())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.communicate(timeout=120)[0].strip() for p in procs] == ["ok", "ok"]
    assert log.read_text() == "built\n"


def test_build_once_failure_leaves_nothing_that_passes_for_built(tmp_path):
    from kasa.assets import build_once

    def broken(d):
        d.mkdir()
        (d / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(tmp_path / "derived", lambda d: (d / "done").exists(), broken)
    assert not (tmp_path / "derived").exists()
    got = build_once(tmp_path / "derived", lambda d: (d / "done").exists(), lambda d: (d.mkdir(), (d / "done").touch()))
    assert (got / "done").exists() and not (tmp_path / "derived.partial").exists()
