"""Keras callbacks for the core training loop: TensorBoard scalars and image grids."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import cv2
import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from keras_reid.tb_events import purge_beyond
from keras_reid.training.loop import model_optimizers


def image_grid(images: np.ndarray, cols: int | None = None, border: int = 2,
               border_colors: list[tuple[int, int, int]] | None = None) -> np.ndarray:
    """Tile uint8 images [N, H, W, 3] into one uint8 image [rows*H', cols*W', 3].

    ``border_colors`` (one RGB per image) draws a coloured frame around each tile.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(images, 0, 255).astype(np.uint8)
    n, h, w, c = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    H, W = h + 2 * border, w + 2 * border
    grid = np.full((rows * H, cols * W, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        tile = np.full((H, W, c), 255, np.uint8)
        if border_colors is not None:
            tile[:] = np.array(border_colors[i], np.uint8)
        tile[border:border + h, border:border + w] = images[i]
        grid[r * H:(r + 1) * H, col * W:(col + 1) * W] = tile
    return grid


def label_rows(grid: np.ndarray, labels: list[str]) -> np.ndarray:
    """Returns ``grid`` (uint8 [H, W, 3], ``len(labels)`` rows of equal height) with a white
    strip on its left naming each row (dark text, vertically centred on the row)."""
    rows = len(labels)
    if rows == 0:
        return grid
    row_h = grid.shape[0] // rows
    scale = float(np.clip(row_h / 160.0, 0.35, 0.8))
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0] for t in labels]
    width = max(w for w, _ in sizes) + 10
    strip = np.full((grid.shape[0], width, 3), 255, np.uint8)
    for i, (text, (_, th)) in enumerate(zip(labels, sizes)):
        y = i * row_h + (row_h + th) // 2
        cv2.putText(strip, text, (5, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (30, 30, 30), 1, cv2.LINE_AA)
    return np.concatenate([strip, np.ascontiguousarray(grid)], axis=1)


def figure_to_image(fig) -> np.ndarray:
    """Render a matplotlib figure to a uint8 RGB array [H, W, 3] and close it."""
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


class ScalarLogger(keras.callbacks.Callback):
    """Writes the loop's step logs every ``every`` steps and epoch means to TensorBoard.

    Step scalars go under ``<prefix>/step/<name>`` (x: the optimizer's step), epoch means under
    ``<prefix>/epoch/<name>`` (x: the epoch; the learning rate is in the epoch logs as ``lr``);
    the stages use the prefixes ``reid`` and ``gan``, so the two kinds of training never share
    a chart. Before the first write it drops what an interrupted attempt left in ``logdir``
    beyond the state training starts from (all of it on a fresh start, see
    :func:`keras_reid.tb_events.purge_beyond`), so a resumed stage has no duplicate points; put
    it before the other loggers of the same folder in the callback list.
    """

    def __init__(self, logdir: str | Path, every: int = 10, is_chief: bool = True,
                 prefix: str = "train") -> None:
        super().__init__()
        self.logdir = str(logdir)
        self.every = max(1, int(every))
        self.is_chief = is_chief
        self.prefix = prefix.strip("/")
        self._writer = None
        self._step = 0
        self._purged = False

    def on_train_begin(self, logs=None):
        if self.is_chief and not self._purged:
            purge_beyond(self.logdir, step=optimizer_step(self.model),
                         epoch=int((self.params or {}).get("initial_epoch", 0)))
            self._purged = True

    @property
    def writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        return self._writer

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if not self.is_chief or not logs or self._step % self.every:
            return
        # the optimizers' step (a GAN's d/g optimizers: the larger), so a resumed run continues
        # the same axis; Model.optimizer alone is a GAN's unused default, always at 0
        global_step = optimizer_step(self.model) or self._step
        with self.writer.as_default(step=global_step):
            for k, v in logs.items():
                if np.isscalar(v) or np.ndim(v) == 0:
                    tf.summary.scalar(f"{self.prefix}/step/{k}", float(v))

    def on_epoch_end(self, epoch, logs=None):
        if not self.is_chief or not logs:
            return
        with self.writer.as_default(step=epoch + 1):
            for k, v in logs.items():
                if np.isscalar(v) or np.ndim(v) == 0:
                    tf.summary.scalar(f"{self.prefix}/epoch/{k}", float(v))
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()


class BatchImageLogger(keras.callbacks.Callback):
    """Writes one grid of sample input images (as the model sees them) to TensorBoard at the start."""

    def __init__(self, logdir: str | Path, batch_fn: Callable[[], np.ndarray], name: str = "inputs",
                 is_chief: bool = True) -> None:
        super().__init__()
        self.logdir = str(logdir)
        self.batch_fn = batch_fn
        self.name = name
        self.is_chief = is_chief

    def on_train_begin(self, logs=None):
        if not self.is_chief:
            return
        images = self.batch_fn()
        if images is None or len(images) == 0:
            return
        grid = image_grid(np.asarray(images)[:32], cols=16)
        writer = tf.summary.create_file_writer(self.logdir)
        with writer.as_default(step=0):
            tf.summary.image(self.name, grid[None], step=0)
        writer.flush()


def optimizer_step(model: keras.Model) -> int:
    """The model's global training step: the largest ``iterations`` of its built optimizers."""
    steps = [int(keras.ops.convert_to_numpy(opt.iterations))
             for opt in model_optimizers(model, built_only=True).values()]
    return max(steps) if steps else 0


class GeneratorSamples(keras.callbacks.Callback):
    """Writes a fixed grid of generator samples to TensorBoard every ``every`` steps and at the end.

    ``examples`` is a fixed example dict (``keras_reid.interfaces.GENERATOR_KEYS``, images in
    [-1, 1], masks in [0, 1]); the picture has one column per example and the rows source,
    source mask, target pose (skeleton image), generated (``model.generate(examples,
    noise=False)``), target mask, target (rows the examples do not have are left out). Steps
    are the optimizer's iterations, so a resumed run continues the same time axis.
    """

    ROWS = ("source", "source_mask", "target_pose", "generated", "target_mask", "target")

    def __init__(self, logdir: str | Path, examples: dict, every: int = 100, name: str = "samples",
                 is_chief: bool = True) -> None:
        super().__init__()
        self.logdir = str(logdir)
        self.examples = examples
        self.every = max(1, int(every))
        self.name = name
        self.is_chief = is_chief
        self._writer = None

    def render(self) -> np.ndarray:
        """Return the sample grid as uint8 [H, W, 3]."""
        generated = np.asarray(self.model.generate(self.examples, noise=False))
        rows, labels = [], []
        for key in self.ROWS:
            value = generated if key == "generated" else self.examples.get(key)
            if value is None:
                continue
            value = np.asarray(value, np.float32)
            if value.shape[-1] == 1:  # a mask in [0, 1] -> grey image in [-1, 1]
                value = np.repeat(value * 2.0 - 1.0, 3, axis=-1)
            rows.append(np.clip(np.rint((value + 1.0) * 127.5), 0, 255).astype(np.uint8))
            labels.append(key.replace("_", " "))
        n = len(rows[0])
        return label_rows(image_grid(np.concatenate(rows, 0), cols=n), labels)

    def _write(self, step: int) -> None:
        if not self.is_chief:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        with self._writer.as_default(step=step):
            tf.summary.image(self.name, self.render()[None], step=step)
        self._writer.flush()

    def on_train_begin(self, logs=None):
        self._last = -1
        if optimizer_step(self.model) == 0:
            self._write(0)
            self._last = 0

    def on_train_batch_end(self, batch, logs=None):
        step = optimizer_step(self.model)
        if step % self.every == 0 and step != self._last:
            self._write(step)
            self._last = step

    def on_train_end(self, logs=None):
        step = optimizer_step(self.model)
        if step != self._last:
            self._write(step)
