"""Memory a training step needs, counted honestly: trainable parameters, gradients, AdamW state, adapter buffers and
the activations autograd saves (and the CUDA peak where there is one)."""

from __future__ import annotations

import torch
from torch import nn

from kasa.perf.core import Runner, _sync


def saved_activation_bytes(runner: Runner, batch: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward, frozen weights excluded."""
    def storage(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    frozen = {storage(q) for q in runner.model.parameters()} | {storage(b) for b in runner.model.buffers()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor):
        # Each storage once (views such as a transpose share it), at its full size: what memory holds.
        nonlocal total
        key = storage(t)
        if key not in frozen and key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = runner.model(input_ids=batch, labels=batch).loss
        if runner.reg is not None:
            loss = loss + runner.reg()
    del loss
    return total


def _buffer_bytes(model: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def memory_row(runner: Runner, batch: torch.Tensor, device: str, base_buffers: int) -> dict[str, float]:
    """Counted bytes of one training step; ``buffers``: what the method added to the model (all its buffers
    minus ``base_buffers``, the frozen model's own: KaSA's removed factors, VeRA's shared matrices, ...)."""
    trainable = sum(q.numel() * q.element_size() for q in runner.params)
    opt_state = 0
    if runner.opt is not None:
        for st in runner.opt.state.values():
            opt_state += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    buffers = max(0, _buffer_bytes(runner.model) - base_buffers)
    acts = saved_activation_bytes(runner, batch)
    row = {"trainable": trainable, "grads": trainable, "adamw": opt_state, "buffers": buffers, "saved": acts}
    row["total"] = sum(row.values())
    if device.startswith("cuda"):
        runner.opt and runner.opt.zero_grad(set_to_none=True)
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        runner.step(batch)
        _sync(device)
        row["cuda_peak_step"] = torch.cuda.max_memory_allocated() - before
    return row
