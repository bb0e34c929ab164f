"""On-disk cache of KaSA's removed factors ``(U_t S_t, V_t^T)``, so a sweep pays each SVD once.

One file per (model identity, target name, shape, weight dtype, weight content fingerprint, truncation
mode, truncation rank, svd method, svd dtype, and for ``truncation=activation_aware`` the fingerprint of the
calibration statistics, the per-channel input RMS the decomposition scales by). The content fingerprint is part of
every key, so a weight that changed (another checkpoint under the same name, a fine-tuned copy, a modified tensor)
misses instead of silently reusing stale factors. Writes are atomic (temp file + rename), so parallel
runs of a sweep can share one directory.

Enable with ``KasaConfig.truncation_cache="<dir>"`` or the environment variable
``KASA_TRUNCATION_CACHE=<dir>`` (the config field wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

ENV_VAR = "KASA_TRUNCATION_CACHE"
# Tensors up to this many bytes are hashed in full (blake2b runs at ~1 GB/s: a 4096 x 11008 fp32 weight
# costs ~0.2 s next to tens of seconds of decomposition); larger tensors on an accelerator are
# fingerprinted on the device instead of being copied to the host.
FULL_HASH_MAX_BYTES = 1 << 30
_SAMPLE = 1 << 20


def resolve_cache_dir(configured: str | None) -> Path | None:
    """The cache directory from the config field, else from ``KASA_TRUNCATION_CACHE``, else ``None``."""
    d = configured or os.environ.get(ENV_VAR) or None
    return Path(d).expanduser() if d else None


@torch.no_grad()
def weight_fingerprint(weight: torch.Tensor) -> str:
    """A content hash of ``weight``: its full bytes when on CPU or small, else a device-side summary.

    The summary (large accelerator tensors) hashes shape, dtype, a strided sample of ~1M elements and
    float64 sums (plain, squared, index-weighted) of the whole tensor, so any changed element moves it.
    """
    w = weight.detach()
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{tuple(w.shape)}|{w.dtype}".encode())
    nbytes = w.numel() * w.element_size()
    if w.device.type == "cpu" or nbytes <= FULL_HASH_MAX_BYTES:
        flat = w.contiguous().reshape(-1).cpu()
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())  # the buffer itself, no bytes copy
        return "b-" + h.hexdigest()
    flat = w.reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    h.update(flat[::step].contiguous().cpu().view(torch.uint8).numpy())
    f = flat.double()
    idx = torch.arange(1, f.numel() + 1, device=f.device, dtype=torch.float64)
    sums = torch.stack([f.sum(), f.square().sum(), (f * idx).sum()]).cpu().tolist()
    h.update(repr(sums).encode())
    return "s-" + h.hexdigest()


def model_identity(model: torch.nn.Module) -> str:
    """``name_or_path@revision`` of a transformers model (empty parts for models built from a config)."""
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "_name_or_path", "") or ""
    rev = getattr(cfg, "_commit_hash", None) or ""
    return f"{name}@{rev}"


def cache_key(*, model_id: str, target: str, shape: tuple[int, int], weight_dtype: torch.dtype,
              fingerprint: str, truncation: str, t: int, svd_method: str, svd_dtype: str,
              calibration: str | None = None) -> str:
    """The file stem for one entry: a hash of everything that determines the removed factors.

    ``calibration``: a fingerprint of the calibration statistics (activation-aware truncation); left out of the
    hash when None, so the keys of the other truncations are unchanged.
    """
    meta = dict(model_id=model_id, target=target, shape=list(shape), weight_dtype=str(weight_dtype),
                fingerprint=fingerprint, truncation=truncation, t=t, svd_method=svd_method, svd_dtype=svd_dtype)
    if calibration is not None:
        meta["calibration"] = calibration
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:40]


class TruncationCache:
    """A directory of ``<key>.pt`` files holding ``{"us": (out, t), "vh": (t, in)}`` tensors."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.pt"

    def get(self, key: str, out_features: int, in_features: int, t: int
            ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached factors, or ``None`` (missing, unreadable or of the wrong shape count as a miss)."""
        p = self._path(key)
        try:
            entry = torch.load(p, map_location="cpu", weights_only=True)
            us, vh = entry["us"], entry["vh"]
            if tuple(us.shape) != (out_features, t) or tuple(vh.shape) != (t, in_features):
                raise ValueError("shape mismatch")
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception:  # a truncated or foreign file: recompute (and overwrite it) rather than fail the run
            self.misses += 1
            return None
        self.hits += 1
        return us, vh

    def put(self, key: str, us: torch.Tensor, vh: torch.Tensor) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".pt")
        os.close(fd)
        try:
            torch.save({"us": us.detach().cpu().contiguous(), "vh": vh.detach().cpu().contiguous()}, tmp)
            os.replace(tmp, self._path(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
