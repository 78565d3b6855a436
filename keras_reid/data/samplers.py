"""Epoch samplers: one deterministic stream of example indices per (seed, epoch).

A sampler returns, for an epoch, ``steps_per_epoch * global_batch_size`` indices into the
dataset; consecutive runs of ``global_batch_size`` indices are the global batches. The input
pipeline (``keras_reid.data.pipeline``) cuts that stream into per-replica batches, so the
same seed gives the same global batches on one device, on several replicas and on several
workers.
"""
from __future__ import annotations

from collections import deque
from typing import Protocol, Sequence

import numpy as np

from keras_reid.errors import DatasetError, UserError


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """Return a numpy Generator that depends only on (seed, epoch, stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(stream)]))


class Sampler(Protocol):
    """What the input pipeline needs from a sampler."""

    global_batch_size: int
    steps_per_epoch: int

    def indices(self, epoch: int) -> np.ndarray:
        """Return int64 indices [steps_per_epoch * global_batch_size] for ``epoch``."""


class RandomSampler:
    """Shuffle all examples each epoch; the last incomplete global batch is dropped."""

    def __init__(self, num_examples: int, global_batch_size: int, seed: int = 0) -> None:
        if global_batch_size <= 0:
            raise UserError(f"global batch size must be positive, got {global_batch_size}")
        if num_examples < global_batch_size:
            raise DatasetError(
                f"the training set has {num_examples} images, fewer than one global batch of "
                f"{global_batch_size}; lower batch_size or use more images")
        self.num_examples = int(num_examples)
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.steps_per_epoch = self.num_examples // self.global_batch_size

    def indices(self, epoch: int) -> np.ndarray:
        """Return the epoch's shuffled indices (int64), cut to whole global batches."""
        perm = epoch_rng(self.seed, epoch).permutation(self.num_examples)
        return perm[: self.steps_per_epoch * self.global_batch_size].astype(np.int64)


class PKSampler:
    """Identity-balanced batches: each global batch is P identities x K images.

    Identities are visited in shuffled rounds (every identity once per round, a new shuffle
    for the next round), P distinct identities per batch. Each time an identity is visited it
    gives its next K images from its own shuffled queue (without replacement; the queue is
    refilled with a new shuffle when it runs out). An identity with fewer than K images gives
    K images drawn with replacement. An epoch has ``len(labels) // (P*K)`` batches (at least
    one), so about one pass over the images. The batch is laid out identity by identity
    (K consecutive indices per identity); with ``num_replicas`` R the batch is split into R
    contiguous slices, which is why P must be a multiple of R: each replica then sees P/R
    whole identities (what a batch-hard triplet loss computed per replica needs).
    Deterministic for (seed, epoch).
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0,
                 num_replicas: int = 1) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if p <= 0 or k <= 0:
            raise UserError(f"the PK sampler needs positive P and K, got P={p}, K={k}")
        if num_replicas <= 0 or p % num_replicas:
            raise UserError(
                f"the PK sampler splits each batch of P={p} identities over {num_replicas} "
                f"replicas; P must be a multiple of the number of replicas (choose batch_size = "
                f"K x a multiple of {num_replicas})")
        ids, inverse = np.unique(labels, return_inverse=True)
        if len(ids) < p:
            raise DatasetError(
                f"the PK sampler needs at least P={p} identities per batch but the training set "
                f"has {len(ids)}; lower batch_size or raise instances_per_id (K)")
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.num_replicas = int(num_replicas)
        self.global_batch_size = self.p * self.k
        self.steps_per_epoch = max(1, len(labels) // self.global_batch_size)
        # indices of each identity, identities in sorted label order
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(ids))
        self._members = np.split(order, np.cumsum(counts)[:-1])

    def indices(self, epoch: int) -> np.ndarray:
        """Return the epoch's indices (int64): batches of P identity groups of K images."""
        rng = epoch_rng(self.seed, epoch)
        n_ids = len(self._members)
        queues: list[deque] = [deque() for _ in range(n_ids)]
        order: deque = deque()
        out = np.empty(self.steps_per_epoch * self.global_batch_size, np.int64)
        pos = 0
        for _ in range(self.steps_per_epoch):
            chosen: list[int] = []
            deferred: list[int] = []
            while len(chosen) < self.p:
                if not order:
                    order.extend(rng.permutation(n_ids).tolist())
                ident = order.popleft()
                if ident in chosen:  # only at a round boundary: keep it for the next batch
                    deferred.append(ident)
                else:
                    chosen.append(ident)
            order.extendleft(reversed(deferred))
            for ident in chosen:
                out[pos:pos + self.k] = self._take(ident, queues[ident], rng)
                pos += self.k
        return out

    def _take(self, ident: int, queue: deque, rng: np.random.Generator) -> np.ndarray:
        members = self._members[ident]
        if len(members) < self.k:
            return rng.choice(members, size=self.k, replace=True)
        taken = []
        while len(taken) < self.k:
            if not queue:
                queue.extend(rng.permutation(members).tolist())
            # no repeat inside one group when the queue is refilled mid-group
            cand = queue.popleft()
            if cand in taken:
                queue.append(cand)
                continue
            taken.append(cand)
        return np.asarray(taken, np.int64)
