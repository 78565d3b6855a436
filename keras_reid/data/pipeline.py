"""tf.data input pipelines for re-ID training and feature extraction.

Training (:class:`ReIDInput`)
    A sampler (``keras_reid.data.samplers``) gives one deterministic global stream of example
    indices per epoch, a function of (seed, epoch) only. ``dataset_fn(ctx, epoch)`` cuts that
    stream, in order, into per-replica batches of ``b = global_batch // R`` (R =
    ``ctx.num_replicas_in_sync``); with P = ``ctx.num_input_pipelines`` > 1 the stream of
    per-replica batches is sharded with ``.shard(P, ctx.input_pipeline_id)``. Each pipeline's
    consecutive elements go to its L = R / P local replicas in turn (that is how
    ``strategy.distribute_datasets_from_function`` hands them out), so pipeline i, local
    replica j, step s gets per-replica batch number ``(s*L + j)*P + i``. For one step s those
    numbers are exactly ``s*R .. s*R + R - 1``: a global step covers the same examples as
    batch s of size global_batch of a single-device run (``dataset(epoch)``), in any
    strategy. TensorFlow's auto-sharding is turned off since the pipeline shards itself.
    Augmentation is seeded per example from (seed, epoch, position in the global stream), so
    images too are identical however the stream is split.

Evaluation (:func:`eval_dataset`)
    Images in record order, no shuffling, no transforms.

Corrupt images
    :func:`scan_images` decodes every file once (with the same TensorFlow decoder the
    pipelines use) and returns the good records and the bad paths; callers log a warning
    with the count and go on. A corrupt image never crashes training or evaluation.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import tensorflow as tf

from keras_reid.data.records import Record, relabel
from keras_reid.data.samplers import PKSampler, RandomSampler
from keras_reid.data.transforms import SeededTransforms
from keras_reid.errors import DatasetError, UserError

log = logging.getLogger("keras_reid")

AUTOTUNE = tf.data.AUTOTUNE
SCAN_CACHE_FILE = "image_scan.json"

# ---------------------------------------------------------------------------------------------
# decoding


def decode_resize(path: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Return the image at ``path`` as uint8 [height, width, 3] RGB (TensorFlow ops).

    Any format ``tf.io.decode_image`` reads (JPEG, PNG, BMP, first frame of a GIF); grey
    images become RGB. Resized (bilinear, antialiased, rounded) only when the size differs.
    """
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    shape = tf.shape(image)

    def resize():
        out = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
        return tf.cast(tf.round(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)

    same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
    image = tf.cond(same, lambda: image, resize)
    return tf.ensure_shape(image, [height, width, 3])


# ---------------------------------------------------------------------------------------------
# scanning for corrupt files

_SCAN_MEMO: dict[tuple[str, int, int], bool] = {}
_SCAN_LOCK = threading.Lock()


def _stat_key(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_size, st.st_mtime_ns)


def _decodable(paths: list[str]) -> np.ndarray:
    """Return a bool array: which of ``paths`` TensorFlow reads and decodes to a non-empty image."""
    if not paths:
        return np.zeros(0, bool)

    def check(i, p):
        img = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
        shape = tf.shape(img)
        return i, shape[0] * shape[1]

    ds = (tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), paths))
          .map(check, num_parallel_calls=AUTOTUNE, deterministic=False)
          .ignore_errors()
          .batch(4096))
    ok = np.zeros(len(paths), bool)
    for idx, area in ds.as_numpy_iterator():
        ok[idx[area > 0]] = True
    return ok


def _load_cache(cache_dir: Path) -> dict[str, list]:
    try:
        return json.loads((cache_dir / SCAN_CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache_dir: Path, entries: dict[str, list]) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / (SCAN_CACHE_FILE + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, cache_dir / SCAN_CACHE_FILE)


def scan_images(records: Iterable[Record], *, cache_dir: str | Path | None = None
                ) -> tuple[list[Record], list[str]]:
    """Return (records whose image exists and decodes, paths of those that do not).

    Each file is decoded once with TensorFlow's decoder (in parallel); results are remembered
    for the process (keyed by path, size and modification time) and, with ``cache_dir``, in
    ``cache_dir/image_scan.json`` across runs. Callers log a warning with the count and go
    on, e.g. ``skipped 3 of 12,936 images that could not be decoded (first: PATH)``.
    """
    records = list(records)
    keys = [_stat_key(str(r.path)) for r in records]
    disk: dict[str, list] = _load_cache(Path(cache_dir)) if cache_dir else {}
    known: dict[int, bool] = {}
    todo: list[int] = []
    with _SCAN_LOCK:
        for n, key in enumerate(keys):
            if key is None:
                known[n] = False
            elif key in _SCAN_MEMO:
                known[n] = _SCAN_MEMO[key]
            elif disk.get(key[0], [None, None])[:2] == [key[1], key[2]]:
                known[n] = bool(disk[key[0]][2])
                _SCAN_MEMO[key] = known[n]
            else:
                todo.append(n)
    if todo:
        ok = _decodable([keys[n][0] for n in todo])
        with _SCAN_LOCK:
            for n, good in zip(todo, ok):
                known[n] = bool(good)
                _SCAN_MEMO[keys[n]] = bool(good)
    if cache_dir and (todo or any(k is not None and k[0] not in disk for k in keys)):
        for n, key in enumerate(keys):
            if key is not None:
                disk[key[0]] = [key[1], key[2], known[n]]
        _save_cache(Path(cache_dir), disk)
    good = [r for n, r in enumerate(records) if known[n]]
    bad = [str(r.path) for n, r in enumerate(records) if not known[n]]
    return good, bad


def skipped_message(bad: Sequence[str], total: int, what: str = "images") -> str:
    """Return the one-line warning for undecodable images (count, total, first path)."""
    return (f"skipped {len(bad):,} of {total:,} {what} that could not be decoded "
            f"(first: {bad[0]})" if bad else "")


# ---------------------------------------------------------------------------------------------
# training input


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _class_labels(records: list[Record], labels) -> np.ndarray:
    """int32 class indices, one per record (``relabel``-ed pids when ``labels`` is None);
    UserError unless they are that many integers >= 0."""
    if labels is None:
        labels, _ = relabel(records)
    labels = np.asarray(labels)
    if labels.shape != (len(records),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels must be {len(records)} integers (one per record), "
                        f"got shape {labels.shape} dtype {labels.dtype}")
    if labels.min() < 0:
        raise UserError("labels must be class indices >= 0; relabel pids first "
                        "(keras_reid.data.records.relabel)")
    return labels.astype(np.int32)


class ReIDInput:
    """Training input: sampler + decode/resize + seeded transforms, per epoch and per replica.

    ``records`` are the training images (already scanned), ``labels`` their int class labels
    (0..num_classes-1; by default the records' pids relabelled in sorted order).
    ``sampler="pk"`` gives identity-balanced batches of ``p`` identities x ``k`` images
    (``p * k == global_batch_size``; give either); ``"random"`` shuffles everything.
    ``transforms`` are transform specs (``keras_reid.data.transforms``) or mappings.
    ``num_replicas`` is checked up front (PK needs P divisible by it); ``dataset_fn`` checks
    the replica count of the context it is given again.
    ``epsilons`` (one per record, in [0, 1]) switch the labels to target distributions
    float32 [b, num_classes]: ``one_hot(label) * (1 - eps) + eps / num_classes`` (the label
    policies for generated images: 0 keeps the label, 0.1 smooths it, 1 is LSRO's uniform
    distribution).
    """

    def __init__(self, records: Sequence[Record], labels: Sequence[int] | np.ndarray | None = None,
                 *, image_size: tuple[int, int], global_batch_size: int,
                 sampler: Literal["pk", "random"] = "pk", p: int | None = None,
                 k: int | None = None, transforms: Sequence[Any] | None = None, seed: int = 0,
                 num_replicas: int = 1, num_parallel_calls: int = AUTOTUNE,
                 epsilons: Sequence[float] | np.ndarray | None = None,
                 num_classes: int | None = None) -> None:
        records = list(records)
        if not records:
            raise DatasetError("the training set is empty; check the dataset root and split")
        self.records = records
        self.labels = _class_labels(records, labels)
        self._num_classes = int(num_classes) if num_classes else int(self.labels.max()) + 1
        if self._num_classes <= int(self.labels.max()):
            raise UserError(f"num_classes {num_classes} is not more than the largest label {self.labels.max()}")
        self.epsilons = None
        if epsilons is not None:
            eps = np.asarray(epsilons, np.float32)
            if eps.shape != (len(records),) or eps.min() < 0 or eps.max() > 1:
                raise UserError(f"epsilons must be {len(records)} values in [0, 1] (one per record)")
            self.epsilons = eps
        self.paths = np.asarray([str(r.path) for r in records], dtype=object)
        self.height, self.width = (int(v) for v in image_size)
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.num_parallel_calls = num_parallel_calls
        if self.num_replicas <= 0 or self.global_batch_size % self.num_replicas:
            raise UserError(f"global batch size {global_batch_size} must be a multiple of the "
                            f"number of replicas ({num_replicas})")
        self.sampler = self._sampler(sampler, p, k)
        self.transforms = SeededTransforms(transforms, self.height, self.width)

    def _sampler(self, sampler: str, p: int | None, k: int | None):
        """The batch sampler: PK (P identities x K images; K = 4 when neither is given) or random."""
        if sampler == "pk":
            if k is None and p is None:
                k = 4
            if k is None:
                k = self.global_batch_size // p if p else 0
            if p is None:
                p = self.global_batch_size // k if k else 0
            if p * k != self.global_batch_size:
                raise UserError(f"the PK sampler needs batch_size = P x K, got batch_size "
                                f"{self.global_batch_size} with P={p}, K={k}")
            return PKSampler(self.labels, p, k, seed=self.seed, num_replicas=self.num_replicas)
        if sampler == "random":
            return RandomSampler(len(self.records), self.global_batch_size, seed=self.seed)
        raise UserError(f"unknown sampler '{sampler}'; expected 'pk' or 'random'")

    @property
    def steps_per_epoch(self) -> int:
        """Global steps (batches of ``global_batch_size``) per epoch."""
        return self.sampler.steps_per_epoch

    @property
    def num_classes(self) -> int:
        """Number of classes (default: largest label + 1)."""
        return self._num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images the datasets yield."""
        return (self.height, self.width)

    def _check_replicas(self, replicas: int) -> int:
        if replicas <= 0 or self.global_batch_size % replicas:
            raise UserError(f"global batch size {self.global_batch_size} must be a multiple of "
                            f"the number of replicas ({replicas})")
        if isinstance(self.sampler, PKSampler) and self.sampler.p % replicas:
            raise UserError(
                f"the PK sampler's P={self.sampler.p} identities per batch must be a multiple of "
                f"the number of replicas ({replicas}) so each replica gets whole identities")
        return self.global_batch_size // replicas

    def dataset_fn(self, input_context: tf.distribute.InputContext, epoch: int) -> tf.data.Dataset:
        """Return this input pipeline's dataset for ``epoch``: per-replica batches
        ``(images float32 [b, H, W, 3] in [0, 255], labels int32 [b])``, b = global // replicas.

        See the module docstring for which examples each pipeline and replica gets.
        """
        replicas = int(input_context.num_replicas_in_sync)
        pipelines = int(input_context.num_input_pipelines)
        b = self._check_replicas(replicas)
        if replicas % pipelines:
            raise UserError(f"{replicas} replicas cannot be split evenly over {pipelines} "
                            "input pipelines (workers need the same number of devices)")
        index = self.sampler.indices(epoch)
        positions = np.arange(len(index), dtype=np.int64)
        labels = self.labels[index]
        if self.epsilons is not None:
            c = self.num_classes
            targets = np.zeros((len(index), c), np.float32)
            targets[np.arange(len(index)), labels] = 1.0
            eps = self.epsilons[index][:, None]
            labels = targets * (1.0 - eps) + eps / c
        ds = tf.data.Dataset.from_tensor_slices(
            (self.paths[index].astype(str), labels, positions))
        ds = ds.batch(b, drop_remainder=True)  # the stream of per-replica batches, in order
        if pipelines > 1:
            ds = ds.shard(pipelines, int(input_context.input_pipeline_id))
        ds = ds.unbatch()
        ds = ds.map(self._loader(epoch), num_parallel_calls=self.num_parallel_calls,
                    deterministic=True)
        ds = ds.batch(b, drop_remainder=True).prefetch(AUTOTUNE)
        return ds.with_options(_options())

    def dataset(self, epoch: int) -> tf.data.Dataset:
        """Return the single-device dataset for ``epoch``: global batches
        ``(images float32 [global_batch, H, W, 3] in [0, 255], labels int32 [global_batch])``."""
        ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)
        return self.dataset_fn(ctx, epoch)

    def _loader(self, epoch: int):
        h, w = self.height, self.width
        transforms, seed = self.transforms, self.seed

        def augment(image: np.ndarray, position: np.ndarray) -> np.ndarray:
            return transforms(image, seed, epoch, int(position))

        def load(path, label, position):
            image = decode_resize(path, h, w)
            if transforms:
                image = tf.numpy_function(augment, [image, position], tf.uint8, stateful=False)
                image.set_shape([h, w, 3])
            return tf.cast(image, tf.float32), (label if label.dtype == tf.float32
                                                else tf.cast(label, tf.int32))

        return load

    def sample_images(self, epoch: int = 0, max_images: int | None = None) -> np.ndarray:
        """Return the first global batch of ``epoch`` as uint8 [n, H, W, 3] (for TensorBoard)."""
        images, _ = next(iter(self.dataset(epoch).take(1)))
        images = np.clip(np.rint(images.numpy()), 0, 255).astype(np.uint8)
        return images[:max_images] if max_images else images


# ---------------------------------------------------------------------------------------------
# evaluation input


def eval_dataset(records: Sequence[Record], *, image_size: tuple[int, int], batch_size: int,
                 flip: bool = False, num_parallel_calls: int = AUTOTUNE) -> tf.data.Dataset:
    """Return a dataset of float32 image batches [<=batch_size, H, W, 3] in [0, 255], in record
    order (no shuffling, no transforms); with ``flip`` each element is
    ``(images, mirrored images)``.

    Every record yields exactly one image so features line up with ``records``: an image that
    is missing or cannot be decoded (callers normally drop those with :func:`scan_images`
    first) yields a black image, with a logged warning.
    """
    records = list(records)
    h, w = (int(v) for v in image_size)
    if batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}")
    good, bad = scan_images(records)
    if bad:
        log.warning("%s; they are replaced by black images", skipped_message(bad, len(records)))
    bad_set = set(bad)
    paths = np.asarray([str(r.path) for r in records], dtype=str) if records else np.zeros(0, str)
    ok = np.asarray([str(r.path) not in bad_set for r in records], dtype=bool)

    def load(path, valid):
        image = tf.cond(valid, lambda: decode_resize(path, h, w),
                        lambda: tf.zeros([h, w, 3], tf.uint8))
        return tf.cast(image, tf.float32)

    ds = tf.data.Dataset.from_tensor_slices((paths, ok))
    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.batch(int(batch_size))
    if flip:
        ds = ds.map(lambda x: (x, tf.reverse(x, axis=[2])))
    return ds.prefetch(AUTOTUNE).with_options(_options())
