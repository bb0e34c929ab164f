"""The config hash: which runs are the same run (run folders, resume, sweep skipping, report pooling)."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

# The one list of keys that do not change what a run computes. The first part is left out of the config hash, and
# those are the only keys a resume command may change (kasa.runs.folder.resume_config). The second part is just as
# neutral but has always been hashed: leaving it out now would rename every finished run folder, so it stays in the
# hash and only kasa-report's pooling (with the seed) ignores it.
# ``checkpoint`` (how often last.ckpt is written) is one: a resume continues at the next batch exactly.
HASH_EXCLUDE = ("resume", "sweep_dir", "trainer.enable_progress_bar", "logger", "hparams_search", "checkpoint")
NEUTRAL_KEYS = (*HASH_EXCLUDE, "run_name", "analysis", "trainer.log_every_n_steps", "study.seeds")


def drop_neutral(c: dict) -> dict:
    """Remove settings that were added later with a value that changes nothing, so runs made before they existed
    keep their hash (and pool with new ones): ``model.quantization: null`` and then its backend;
    ``benchmark.optim.loraplus_lr_ratio: null`` (LoRA+ off); ``benchmark.early_stopping`` with ``patience: null``
    (off: the whole section, ``min_delta`` included); ``model.attn_implementation: null`` (transformers' default);
    ``trainer.compile: false``; ``trainer.val_check_interval: null``; ``benchmark.generation.shared_prefix: true`` (the
    batch's common prompt prefix computed once: the same math as before, so runs made before it keep their hash);
    AdaLoRA's ``method.tinit_frac`` / ``tfinal_frac: null`` (the schedule in steps, as before)."""
    method = c.get("method")
    if isinstance(method, dict):
        for key in ("tinit_frac", "tfinal_frac"):
            if key in method and method[key] is None:
                method.pop(key)
    model = c.get("model")
    if isinstance(model, dict) and model.get("quantization", None) is None:
        model.pop("quantization", None)
        model.pop("quantization_backend", None)
    if isinstance(model, dict) and model.get("attn_implementation", False) is None:
        model.pop("attn_implementation")
    trainer = c.get("trainer")
    if isinstance(trainer, dict) and trainer.get("compile", None) in (False, None):
        trainer.pop("compile", None)
    if isinstance(c.get("trainer"), dict) and c["trainer"].get("val_check_interval", False) is None:
        c["trainer"].pop("val_check_interval")  # null: Lightning's default, once per epoch
    bench = c.get("benchmark")
    if isinstance(bench, dict):
        optim = bench.get("optim")
        if isinstance(optim, dict) and optim.get("loraplus_lr_ratio", None) is None:
            optim.pop("loraplus_lr_ratio", None)
        gen = bench.get("generation")
        if isinstance(gen, dict) and gen.get("shared_prefix", None) is True:
            gen.pop("shared_prefix")  # the same generation as before it existed, up to float round-off
        for key in ("packing", "group_by_length"):  # off: padded batches in random order, as before they existed
            if bench.get(key, None) is False:
                bench.pop(key)
        es = bench.get("early_stopping", False)
        if es is None or (isinstance(es, dict) and es.get("patience", None) is None):
            bench.pop("early_stopping")
    return c


def config_hash(cfg: DictConfig) -> str:
    """12 hex digits of SHA-256 over the resolved config (without ``hydra`` and :data:`HASH_EXCLUDE`).

    ``hydra`` is left out before resolving: ``hydra.run.dir`` interpolates this hash (``${kasa_hash:}``).
    """
    keys = [k for k in cfg if k != "hydra"]
    c = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
    for dotted in HASH_EXCLUDE:
        *parents, leaf = dotted.split(".")
        node = c
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    drop_neutral(c)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:12]
