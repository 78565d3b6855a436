"""tf.data input for generator training: in-memory images and masks, paired batches as dicts.

The images of a :class:`~keras_reid.data.gan_pairs.GANPairs` are decoded once into a uint8
array (a Market-1501 camera pair is ~5,000 images: 120 MB at 128x64, 490 MB at 256x128);
person masks, when the generator needs them, are kept beside them. Each epoch shuffles the
pairs with a generator that depends only on (seed, epoch) and cuts the stream into
per-replica batches exactly as ``keras_reid.data.pipeline.ReIDInput`` does, so a global step
sees the same examples under any strategy. A random horizontal flip (same for every image
and mask of one example, drawn from (seed, epoch, position)) is the only augmentation.

Batches are dicts with the keys the generator ``needs`` (``keras_reid.interfaces``): images
float32 in [-1, 1], masks float32 in [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from keras_reid.data.gan_pairs import GANPairs
from keras_reid.data.samplers import epoch_rng
from keras_reid.data.images import to_unit
from keras_reid.data.poses import skeleton_images
from keras_reid.errors import DatasetError, UserError
from keras_reid.interfaces import MASK_KEYS

IMAGE_KEYS = ("source", "target")
POSE_KEYS = ("target_pose",)


class GANInput:
    """Paired generator-training batches from ``pairs`` with in-memory ``images`` (uint8
    [N, H, W, 3], aligned with ``pairs.records``) and optional ``masks`` (float or uint8
    [N, H, W, 1], 1 = person); ``needs`` are the batch keys to produce. ``extras`` are
    per-image float values [N] added to every batch as [b] under their names, taken from each
    example's source image (e.g. ``real_no_face`` for a guided DCGAN). ``poses`` (float32
    [N, 18, 2+] keypoints at the image size) give ``target_pose``: the target image's skeleton
    image; a flipped example gets the skeleton of the mirrored pose (left and right swapped)."""

    def __init__(self, pairs: GANPairs, images: np.ndarray, masks: np.ndarray | None, *,
                 needs: Sequence[str], global_batch_size: int, seed: int = 0, flip: bool = True,
                 num_replicas: int = 1, extras: dict[str, np.ndarray] | None = None,
                 poses: np.ndarray | None = None) -> None:
        if len(pairs) == 0:
            raise DatasetError("there are no training pairs for the generator")
        self.needs = tuple(k for k in (*IMAGE_KEYS, *MASK_KEYS, *POSE_KEYS) if k in set(needs) | {"source"})
        unknown = set(needs) - set(IMAGE_KEYS) - set(MASK_KEYS) - set(POSE_KEYS)
        if unknown:
            raise UserError(f"the generator needs {sorted(unknown)}, which the train_generator stage "
                            "cannot provide (it provides source, target, source_mask, target_mask, "
                            "target_pose)")
        if any(k in MASK_KEYS for k in self.needs) and masks is None:
            raise UserError("the generator needs person masks but no masker gave any; add a masker")
        self.skeletons = None
        if "target_pose" in self.needs:
            if poses is None or len(poses) != len(pairs.records):
                raise UserError("the generator needs target poses but no pose estimator gave any; "
                                "add pose: {type: mediapipe_pose} (or synthetic / precomputed)")

            size = images.shape[1:3]
            self.skeletons = (skeleton_images(poses, size), skeleton_images(poses, size, flipped=True))
        if len(images) != len(pairs.records):
            raise UserError(f"{len(images)} images for {len(pairs.records)} records")
        self.pairs = pairs
        self.images = images
        self.extras = {k: np.asarray(v, np.float32) for k, v in (extras or {}).items()}
        for name, values in self.extras.items():
            if values.shape != (len(pairs.records),):
                raise UserError(f"extra '{name}' needs one value per image, got shape {values.shape}")
        if masks is not None and masks.dtype != np.uint8:
            masks = np.clip(np.rint(np.asarray(masks, np.float32) * 255), 0, 255).astype(np.uint8)
        self.masks = masks
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.flip = bool(flip)
        self._check(num_replicas)
        if len(pairs) < self.global_batch_size:
            raise DatasetError(f"only {len(pairs)} training pairs for a batch of {self.global_batch_size}; "
                               "lower batch_size or add images")
        self.height, self.width = images.shape[1:3]

    def _check(self, replicas: int) -> int:
        if replicas <= 0 or self.global_batch_size % replicas:
            raise UserError(f"global batch size {self.global_batch_size} must be a multiple of "
                            f"the number of replicas ({replicas})")
        return self.global_batch_size // replicas

    @property
    def steps_per_epoch(self) -> int:
        """Global steps per epoch (one pass over the pairs, last partial batch dropped)."""
        return len(self.pairs) // self.global_batch_size

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's stream of pair indices (a permutation; depends on seed and epoch only)."""
        return epoch_rng(self.seed, epoch, stream=7).permutation(len(self.pairs))

    def batch(self, pair_ids: np.ndarray, positions: np.ndarray, epoch: int) -> dict[str, np.ndarray]:
        """The example dict (numpy) for the given pair indices and stream positions."""
        src = self.pairs.pairs[pair_ids, 0]
        tgt = self.pairs.pairs[pair_ids, 1]
        out: dict[str, np.ndarray] = {}
        flips = np.array([self.flip and epoch_rng(self.seed, epoch, 1_000_003 + int(p)).random() < 0.5
                          for p in positions], bool)
        for key in self.needs:
            idx = src if key.startswith("source") else tgt
            if key in IMAGE_KEYS:
                out[key] = to_unit(self.images[idx])
            elif key in POSE_KEYS:  # already drawn for the mirrored pose where flipped
                plain, mirrored = self.skeletons
                out[key] = to_unit(np.where(flips[:, None, None, None], mirrored[idx], plain[idx]))
            else:
                out[key] = self.masks[idx].astype(np.float32) / 255.0
        if flips.any():
            for key in out:
                if key not in POSE_KEYS:
                    out[key][flips] = out[key][flips, :, ::-1]
        for name, values in self.extras.items():  # per-example scalars of the source image
            out[name] = values[src]
        return out

    def _signature(self, b: int) -> dict:
        h, w = self.height, self.width
        spec = {k: tf.TensorSpec([b, h, w, 1 if k in MASK_KEYS else 3], tf.float32) for k in self.needs}
        spec.update({k: tf.TensorSpec([b], tf.float32) for k in self.extras})
        return spec

    def dataset_fn(self, input_context: tf.distribute.InputContext, epoch: int) -> tf.data.Dataset:
        """This input pipeline's per-replica batches (dicts) for ``epoch`` (see the module docstring)."""
        replicas = int(input_context.num_replicas_in_sync)
        pipelines = int(input_context.num_input_pipelines)
        b = self._check(replicas)
        order = self.order(epoch)
        positions = np.arange(len(order), dtype=np.int64)
        ds = tf.data.Dataset.from_tensor_slices((order.astype(np.int64), positions))
        ds = ds.batch(b, drop_remainder=True)
        if pipelines > 1:
            ds = ds.shard(pipelines, int(input_context.input_pipeline_id))
        keys = self.needs + tuple(self.extras)

        def fetch(ids, pos):
            batch = self.batch(np.asarray(ids), np.asarray(pos), epoch)
            return [batch[k] for k in keys]

        def load(ids, pos):
            values = tf.numpy_function(fetch, [ids, pos], [tf.float32] * len(keys), stateful=False)
            spec = self._signature(b)
            out = {}
            for k, v in zip(keys, values):
                v.set_shape(spec[k].shape)
                out[k] = v
            return out

        ds = ds.map(load, num_parallel_calls=2, deterministic=True).prefetch(2)
        options = tf.data.Options()
        options.deterministic = True
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options)

    def dataset(self, epoch: int) -> tf.data.Dataset:
        """Single-device batches of the global batch size for ``epoch``."""
        ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)
        return self.dataset_fn(ctx, epoch)

    def fixed_examples(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` fixed examples (no flip) for the TensorBoard sample grid."""
        rng = np.random.default_rng(seed)
        ids = np.sort(rng.choice(len(self.pairs), size=min(n, len(self.pairs)), replace=False))
        flip, self.flip = self.flip, False
        try:
            return self.batch(ids, ids, 0)
        finally:
            self.flip = flip

