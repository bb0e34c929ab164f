"""Seeded, resumable samplers shared by every family's datamodule: the training order depends on the seed and the
epoch only (not on the number of data-parallel processes), evaluation shards score each example once."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(world size, global rank)``: given values, else the initialised process group's, else ``(1, 0)``."""
    import torch.distributed as dist

    dist_on = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if dist_on else 1
    if rank is None:
        rank = dist.get_rank() if dist_on else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank={rank} is outside [0, {num_replicas})")
    return num_replicas, rank


class EpochSampler(DistributedSampler):
    """``torch.utils.data.DistributedSampler`` over ``range(n)`` whose permutation mixes the seed and the epoch
    (``seed * 100003 + epoch``): torch's ``seed + epoch`` gives seed 0 at epoch 1 the order of seed 1 at epoch 0.

    A run resumed at an epoch boundary sees the same batches as an uninterrupted one (Lightning calls
    ``set_epoch``, and keeps a ``DistributedSampler`` instead of wrapping it in its own). Data-parallel runs
    (a process group initialised when the loader is built, or ``num_replicas``/``rank`` given): rank ``r`` of
    ``W`` takes positions ``r, r + W, ...`` of the SAME permutation, padded by repeating its start as
    ``DistributedSampler`` does, so the k-th batches of all ranks together hold exactly the k-th batch of a
    one-process run with batch ``W * b``: the global data order does not depend on the number of processes.

    A run resumed in the middle of an epoch (:class:`TrainLoader`, :meth:`resume_at`) continues at the first
    position no step has trained on: the rest of the same order.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, num_replicas: int | None = None,
                 rank: int | None = None):
        num_replicas, rank = _world(num_replicas, rank)
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.n = n
        self._resume: tuple[int, int] | None = None  # (epoch, first position of this rank's share) to resume at

    def resume_at(self, epoch: int, start: int) -> None:
        """The next iteration is of ``epoch`` and starts at position ``start`` of this rank's share (the positions
        before it were trained on before the checkpoint); later epochs start at 0 again."""
        self._resume = (int(epoch), int(start))
        self.set_epoch(int(epoch))  # Lightning sets it again; a loader with workers draws indices before that

    def generator(self) -> torch.Generator:
        """The epoch's random generator: seeded by the seed and the epoch only."""
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def global_order(self) -> list[int]:
        """The epoch's order of all ``n`` examples, the same on every rank (each takes its shard of it)."""
        if not self.shuffle:
            return list(range(self.n))
        return torch.randperm(self.n, generator=self.generator()).tolist()

    def __iter__(self):
        positions = self.positions()
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            positions = positions[resume[1]:]
        return iter(positions)

    def positions(self) -> list[int]:
        """This rank's share of the epoch's order, in order (``__iter__`` without a mid-epoch resume)."""
        order = self.global_order()
        if self.num_replicas == 1:
            return order
        pad = self.total_size - self.n
        order += (order * math.ceil(pad / max(1, self.n)))[:pad]
        return order[self.rank::self.num_replicas]


class LengthGroupedSampler(EpochSampler):
    """:class:`EpochSampler` whose epoch order puts examples of similar length in the same batch
    (``benchmark.group_by_length=true``: little padding, no packing).

    The epoch's permutation (seed and epoch only, as :class:`EpochSampler`) is cut into mega-batches of ``mega``
    global batches (``batch_size * num_replicas`` examples each); each mega-batch is sorted by length, longest
    first, cut into global batches, and those batches are shuffled within it (the same generator). Every rank
    computes the same global order and takes its shard (positions ``r, r + W, ...``), so the k-th batches of all
    ranks together are the k-th batch of a one-process run with batch ``W * batch_size``; a resumed run (epoch
    boundary) sees the batches of an uninterrupted one.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega: int = 50,
                 num_replicas: int | None = None, rank: int | None = None):
        super().__init__(len(lengths), seed, shuffle=True, num_replicas=num_replicas, rank=rank)
        self.lengths, self.batch_size, self.mega = list(lengths), batch_size, mega

    def global_order(self) -> list[int]:
        g = self.generator()
        perm = torch.randperm(self.n, generator=g).tolist()
        step = self.batch_size * self.num_replicas
        out: list[int] = []
        for s in range(0, self.n, step * self.mega):
            chunk = sorted(perm[s:s + step * self.mega], key=lambda i: -self.lengths[i])
            batches = [chunk[b:b + step] for b in range(0, len(chunk), step)]
            # only the last mega-batch can end in a short batch: it stays last, so every batch keeps its boundaries
            tail = batches.pop() if len(batches[-1]) < step else []
            for b in torch.randperm(len(batches), generator=g).tolist():
                out += batches[b]
            out += tail
        return out


class ShardSampler(UnrepeatedDistributedSampler):
    """Evaluation order ``0..n-1`` split across data-parallel ranks with nothing repeated (Lightning's
    ``UnrepeatedDistributedSampler`` over ``range(n)``): rank ``r`` of ``W`` takes ``r, r + W, ...`` (ranks may
    differ by one example), so metrics that sync their states across ranks (torchmetrics,
    ``self.log(..., sync_dist=True)``) see every validation example exactly once; ``DistributedSampler`` would
    pad with duplicates and bias them. One process: plain ``range(n)``.
    """

    def __init__(self, n: int, num_replicas: int | None = None, rank: int | None = None):
        num_replicas, rank = _world(num_replicas, rank)
        DistributedSampler.__init__(self, range(n), num_replicas=num_replicas, rank=rank, shuffle=False)
        # Lightning's sizes, without its assert that every rank holds an example: a dev set smaller than the
        # world is scored by the ranks that have one (the metric states still sync on every rank).
        self.num_samples, self.total_size, self.n = len(range(rank, n, num_replicas)), n, n


class TrainLoader(DataLoader):
    """The training ``DataLoader`` of every family: resumable in the middle of an epoch.

    Lightning saves the state of a loader that has ``state_dict``/``load_state_dict`` in every checkpoint (the fit
    loop's ``combined_loader``); :class:`kasa.training.callbacks.ResumeBatches` loads it back before a resumed run
    draws its first batch. The state is the epoch and the batches of it already trained (``trainer``'s batch
    progress at the save: a checkpoint is written after a batch's optimiser step, or after the validation that
    follows it); on load, the sampler
    (:meth:`EpochSampler.resume_at`) starts at the next batch, so the resumed run trains on the batches the
    uninterrupted one would. ``StepSeed`` seeds each of them from (epoch, batch index) as before.
    """

    def __init__(self, dataset, *, batch_size: int, sampler: EpochSampler, trainer=None, **kwargs):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._trainer = trainer

    def state_dict(self) -> dict[str, int]:
        done = 0
        if self._trainer is not None:
            done = int(self._trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        return {"epoch": int(self.sampler.epoch), "batches": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)
