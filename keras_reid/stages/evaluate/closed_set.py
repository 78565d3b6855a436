"""Closed-set (LIMA-style) evaluation of the ``evaluate`` stage: identity classification of the
test images, prec@1 and mAP for ALL classes and p-ID, confusion matrices."""
from __future__ import annotations

import keras
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from keras_reid import io
from keras_reid.data.pipeline import eval_dataset
from keras_reid.data.records import Record
from keras_reid.deploy import converted_name, deploy_lines
from keras_reid.errors import UserError
from keras_reid.metrics import closed_set_metrics
from keras_reid.metrics.closed_set import top_k_accuracy
from keras_reid.stages.base import StageContext
from keras_reid.stages.evaluate.common import load_saved
from keras_reid.stages.evaluate.deploy import closed_set_converted
from keras_reid.stages.outputs import ReIDOutput
from keras_reid.training.callbacks import figure_to_image


def evaluate_closed_set(cfg, ctx: StageContext) -> dict:
    """Closed-set identity classification (LIMA-style): prec@1 and mAP, ALL and p-ID."""
    splits = ctx.dataset(cfg.dataset)
    test = ctx.decodable(splits[cfg.test_split], f"images of test split '{cfg.test_split}'",
                         allow_empty=True)
    results = {}
    for stage in cfg.models:
        results.update(_classify_with(ctx, cfg, stage, test))
    if ctx.is_chief:
        ctx.record_metrics(results)
        for name, e in results.items():
            ctx.echo(f"{name}: prec@1 ALL {100 * e['prec1_all']:.2f}%  p-ID {100 * e['prec1_pid']:.2f}%  "
                     f"mAP ALL {100 * e['mAP_all']:.2f}%  p-ID {100 * e['mAP_pid']:.2f}%")
        for line in deploy_lines(results):
            ctx.echo(line)
    return {"models": results}


def _classify_with(ctx: StageContext, cfg, stage: str, test: list[Record]) -> dict[str, dict]:
    """The test images classified by train stage ``stage``'s classifier (and its deploy form,
    when converted): ``{model name: entry}``; confusion matrices in the stage folder."""
    name = cfg.names.get(stage, stage)
    out = ctx.output_of(stage, ReIDOutput)
    path = ctx.run_dir / (out.classifier or "")
    if not out.classifier or not path.exists():
        raise UserError(f"stage '{stage}' saved no classifier model; closed-set evaluation needs "
                        "a train_reid stage trained on closed-set data")
    clf = load_saved(ctx, stage, path)
    labels_map = io.read_json(ctx.stage_dir_of(stage) / "labels.json")  # pid -> class index
    pid_of = {int(v): int(k) for k, v in labels_map.items()}
    num = len(pid_of)
    pids = sorted(pid_of.values())
    # columns ordered by class id (pid), classes unseen in training get score 0
    col = {pid: i for i, pid in enumerate(pids)}
    y = np.array([col.get(r.pid, -1) for r in test])
    known = y >= 0

    def score_model(model, model_name):
        s = class_scores(model, test, out.image_size, cfg.batch_size)
        res = closed_set_metrics(s[known], y[known], unknown_class=col.get(0, -1))
        entry = {k: float(res[k]) for k in ("prec1_all", "prec1_pid", "mAP_all", "mAP_pid")}
        entry["num_test_images"] = int(known.sum())
        entry["num_classes"] = num
        io.write_json(ctx.stage_dir / f"confusion_{model_name}.json",
                      {"classes": pids, "matrix": np.asarray(res["confusion"]).tolist()})
        if ctx.is_chief:
            _write_closed_set_tensorboard(ctx, model_name, entry, np.asarray(res["confusion"]), pids)
        return entry

    results = {name: score_model(clf, name)}
    if cfg.converted and out.converted and out.converted.classifier:   # the deploy form
        results.update(closed_set_converted(
            ctx, cfg, stage, name, out, clf, results[name],
            lambda model: score_model(model, converted_name(name)), test))
    return results


def class_scores(classifier, records: list, image_size, batch_size: int) -> np.ndarray:
    """Softmax class scores float32 [N, C] of ``records`` under ``classifier`` (a logits model)."""
    scores = []
    for images in eval_dataset(records, image_size=tuple(image_size), batch_size=batch_size):
        if isinstance(images, (tuple, list)):
            images = images[0]
        scores.append(np.asarray(keras.ops.softmax(classifier(images, training=False)), np.float32))
    return np.concatenate(scores, 0) if scores else np.zeros((0, 0), np.float32)


def classify_holdout(ctx: StageContext, cfg, stage: str) -> dict:
    """Classification of the training images train stage ``stage`` withheld
    (``holdout_per_class``): prec@1, prec@5 (share of images whose identity is among the 5
    highest-scoring classes) and mAP (mean over classes of the AP of the class's score column
    over the withheld images; classes without a withheld image skipped), as the semantic-selective
    DCGAN paper reports for DukeMTMC-reID. Columns beyond the real identities (an 'unknown' class
    of generated images) compete like any class."""

    out = ctx.output_of(stage, ReIDOutput)
    hold = io.read_json(ctx.run_dir / out.holdout.file)
    path = ctx.run_dir / (out.classifier or "")
    if hold is None or not out.classifier or not path.exists():
        raise UserError(f"stage '{stage}' withheld training images but its classifier or "
                        f"{out.holdout.file} is missing; re-run that stage (delete "
                        f"{ctx.stage_dir_of(stage)}/.complete.json)")
    records = ctx.decodable([Record(p, int(pid), int(cam)) for p, pid, cam in hold["records"]],
                            f"withheld images of '{stage}'", allow_empty=True)
    labels_map = io.read_json(ctx.stage_dir_of(stage) / "labels.json")   # pid -> class index
    col = {int(k): int(v) for k, v in labels_map.items()}
    s = class_scores(load_saved(ctx, stage, path), records, out.image_size, cfg.batch_size)
    y = np.array([col[r.pid] for r in records], np.int64)
    res = closed_set_metrics(s, y, unknown_class=None)
    return {"prec1": float(res["prec1_all"]), "prec5": top_k_accuracy(s, y, 5),
            "mAP": float(res["mAP_all"]), "images": len(records),
            "classes": len({int(v) for v in y}), "fraction": float(hold["fraction"])}


def _write_closed_set_tensorboard(ctx: StageContext, name: str, entry: dict, confusion: np.ndarray,
                                  classes: list[int]) -> None:
    """Closed-set scalars and the row-normalised confusion matrix as a picture."""
    matplotlib.use("Agg")   # the backend is chosen when drawing, not when the module is imported
    writer = tf.summary.create_file_writer(str(ctx.tensorboard_dir / name))
    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, np.float64), where=rows > 0)
    n = len(classes)
    side = min(12.0, 3.0 + 0.25 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= 40:
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in classes], fontsize=7)
    ax.set_xlabel("predicted class"); ax.set_ylabel("true class")
    ax.set_title(f"{name}: prec@1 {100 * entry['prec1_all']:.1f}% (rows sum to 1)")
    with writer.as_default(step=0):
        for key in ("prec1_all", "prec1_pid", "mAP_all", "mAP_pid"):
            tf.summary.scalar(f"eval/{key}", entry[key])
        tf.summary.image("eval/confusion_matrix", figure_to_image(fig)[None])
    writer.flush()

