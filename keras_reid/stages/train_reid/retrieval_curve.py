"""``train_reid``'s ``eval_every``: retrieval metrics of the model being trained, every N epochs,
so mAP and rank-1 are curves in TensorBoard (``reid/eval/<metric>``, x = epoch) and in the stage
summary (``eval_history``)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_reid import io
from keras_reid.data.records import Record
from keras_reid.inference import extract_features
from keras_reid.metrics import evaluate_retrieval, pairwise_distance

EVAL_HISTORY = "eval_history.json"
"""In the stage folder: ``[{"epoch", "mAP", "rank1", ...}, ...]``, kept across a resume."""

CURVE_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")


class RetrievalCurve(keras.callbacks.Callback):
    """After every ``every``-th epoch and the last (``epochs``): embeds ``query`` and ``gallery``
    with the model in training (inference mode, features flip-averaged and L2-normalised as the
    evaluate stage does, but before the precise-BN pass, so the last point can differ slightly
    from the evaluate stage's figure), ranks them by the Market-1501 protocol and writes
    ``reid/eval/<metric>`` at step = epoch and the stage's ``eval_history.json``.

    Put it after the :class:`~keras_reid.training.callbacks.ScalarLogger` of the same folder
    (which drops the points of an interrupted attempt beyond the resumed epoch)."""

    def __init__(self, query: list[Record], gallery: list[Record], *, image_size, every: int,
                 epochs: int, logdir: str | Path, stage_dir: str | Path, batch_size: int = 64,
                 flip: bool = True, echo: Callable[[str], None] = print, is_chief: bool = True,
                 prefix: str = "reid/eval") -> None:
        super().__init__()
        self.query, self.gallery = query, gallery
        self.image_size = tuple(image_size)
        self.every, self.epochs = max(1, int(every)), int(epochs)
        self.logdir, self.history_path = str(logdir), Path(stage_dir) / EVAL_HISTORY
        self.batch_size, self.flip, self.echo = batch_size, flip, echo
        self.is_chief, self.prefix = is_chief, prefix.strip("/")
        self.history: list[dict] | None = None
        self._infer = None
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.history is None:   # the first phase of a run: what a resumed run had before
            start = int((self.params or {}).get("initial_epoch", 0))
            self.history = [h for h in io.read_json(self.history_path, default=[]) or []
                            if h.get("epoch", 0) <= start]

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if not self.is_chief or (done % self.every and done != self.epochs):
            return
        entry = {"epoch": done, **self.evaluate()}
        self.history = [h for h in self.history or [] if h["epoch"] != done] + [entry]
        io.write_json(self.history_path, self.history)
        self._write(done, entry)
        self.echo(f"epoch {done}: mAP {entry['mAP']:.1%}, rank-1 {entry['rank1']:.1%} "
                  f"({len(self.query)} queries x {len(self.gallery)} gallery images)")

    def evaluate(self) -> dict:
        """Returns ``{metric: value}`` (:data:`CURVE_METRICS` present) of the model as it is now."""

        if self._infer is None:   # shares the training model's weights
            self._infer = self.model.inference_model("features")
        qf = extract_features(self._infer, self.query, self.image_size, self.batch_size, self.flip,
                              verbose=0)
        gf = extract_features(self._infer, self.gallery, self.image_size, self.batch_size, self.flip,
                              verbose=0)
        res = evaluate_retrieval(pairwise_distance(qf, gf), np.array([r.pid for r in self.query]),
                                 np.array([r.pid for r in self.gallery]),
                                 np.array([r.camid for r in self.query]),
                                 np.array([r.camid for r in self.gallery]))
        cmc = np.asarray(res["cmc"])
        out = {"mAP": float(res["mAP"]), "mINP": float(res["mINP"])}
        for r in (1, 5, 10):
            if r <= len(cmc):
                out[f"rank{r}"] = float(cmc[r - 1])
        return {k: out[k] for k in CURVE_METRICS if k in out}

    def _write(self, epoch: int, entry: dict) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        with self._writer.as_default(step=epoch):
            for key, value in entry.items():
                if key != "epoch":
                    tf.summary.scalar(f"{self.prefix}/{key}", float(value))
        self._writer.flush()
