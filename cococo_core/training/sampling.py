"""The order in which samples are seen: the same for any number of processes, and resumable at any micro-step.

Epoch ``e`` visits the dataset in the permutation drawn from ``(seed, e)``. A micro-step takes the next
``batch × processes`` indices of that permutation (a short last group is dropped, as ``drop_last``), and process
``r`` takes the ``r``-th slice of ``batch`` of them. So the global micro-batch of step ``m`` depends only on
``(seed, m, batch × processes)``: one process with batch 4 sees the same samples as two with batch 2, and a run
resumed at micro-step ``m`` continues exactly where the uninterrupted run would be.

Per-sample randomness (clip start, mask, diffusion timestep and noise) comes from :func:`sample_seed`, a
function of ``(seed, epoch, index)`` only, so it too is independent of how the batch is split over processes.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def mixed_seed(*values: int) -> int:
    """A 63-bit seed from non-negative integers (NumPy ``SeedSequence`` mixing: nearby inputs, unrelated seeds)."""
    state = np.random.SeedSequence([int(v) & 0xFFFF_FFFF_FFFF_FFFF for v in values]).generate_state(2, np.uint32)
    return ((int(state[0]) << 32) | int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample in one epoch."""
    return mixed_seed(seed, 1, epoch, index)


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The permutation of ``range(num_samples)`` visited in ``epoch``."""
    generator = torch.Generator().manual_seed(mixed_seed(seed, 0, epoch))
    return torch.randperm(num_samples, generator=generator).tolist()


def micro_steps_per_epoch(num_samples: int, global_batch: int) -> int:
    return num_samples // global_batch


class RankBatchSampler:
    """Yields this process's ``[(epoch, index), ...]`` micro-batches from micro-step ``start`` on.

    ``max_epochs`` None: endless. Raises if the dataset is smaller than one global micro-batch.
    """

    def __init__(self, num_samples: int, batch_size: int, num_processes: int, rank: int, seed: int,
                 start: int = 0, max_epochs: int | None = None):
        self.global_batch = batch_size * num_processes
        self.per_epoch = micro_steps_per_epoch(num_samples, self.global_batch)
        if self.per_epoch < 1:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global micro-batch "
                f"({batch_size} per process x {num_processes} processes)"
            )
        self.num_samples, self.batch_size, self.rank, self.seed = num_samples, batch_size, rank, seed
        self.start, self.max_epochs = start, max_epochs

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        epoch, order = -1, []
        while self.max_epochs is None or step < self.max_epochs * self.per_epoch:
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                order = epoch_order(self.num_samples, self.seed, epoch)
            first = (step % self.per_epoch) * self.global_batch + self.rank * self.batch_size
            yield [(epoch, index) for index in order[first:first + self.batch_size]]
            step += 1

    def __len__(self) -> int:
        if self.max_epochs is None:
            raise TypeError("an endless sampler has no length")
        return max(0, self.max_epochs * self.per_epoch - self.start)
