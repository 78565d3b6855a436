"""Closed-set (LIMA-style) evaluation of the ``evaluate`` stage: identity classification of the
test images, prec@1 and mAP for ALL classes and p-ID, confusion matrices."""
from __future__ import annotations

import numpy as np

from keras_reid import io
from keras_reid.errors import UserError
from keras_reid.stages._evaluate_impl import load_saved
from keras_reid.stages.base import StageContext


def evaluate_closed_set(cfg, ctx: StageContext) -> dict:
    """Closed-set identity classification (LIMA-style): prec@1 and mAP, ALL and p-ID."""
    import keras

    from keras_reid.data.pipeline import eval_dataset, scan_images
    from keras_reid.metrics import closed_set_metrics

    splits = ctx.dataset(cfg.dataset)
    test, bad = scan_images(splits[cfg.test_split])
    if bad:
        ctx.echo(f"warning: skipped {len(bad)} test images that could not be decoded")
    results = {}
    for stage in cfg.models:
        name = cfg.names.get(stage, stage)
        out = ctx.output_of(stage)
        path = ctx.run_dir / out.get("classifier", "")
        if not out.get("classifier") or not path.exists():
            raise UserError(f"stage '{stage}' saved no classifier model; closed-set evaluation needs "
                            "a train_reid stage trained on closed-set data")
        clf = load_saved(ctx, stage, path)
        labels_map = io.read_json(ctx.stage_dir_of(stage) / "labels.json")  # pid -> class index
        pid_of = {int(v): int(k) for k, v in labels_map.items()}
        num = len(pid_of)
        scores = []
        for images in eval_dataset(test, image_size=tuple(out["image_size"]), batch_size=cfg.batch_size):
            if isinstance(images, (tuple, list)):
                images = images[0]
            scores.append(np.asarray(keras.ops.softmax(clf(images, training=False)), np.float32))
        s = np.concatenate(scores, 0)
        pids = sorted(pid_of.values())
        # columns ordered by class id (pid), classes unseen in training get score 0
        col = {pid: i for i, pid in enumerate(pids)}
        y = np.array([col.get(r.pid, -1) for r in test])
        known = y >= 0
        res = closed_set_metrics(s[known], y[known], unknown_class=col.get(0, -1))
        entry = {k: float(res[k]) for k in ("prec1_all", "prec1_pid", "mAP_all", "mAP_pid")}
        entry["num_test_images"] = int(known.sum())
        entry["num_classes"] = num
        results[name] = entry
        io.write_json(ctx.stage_dir / f"confusion_{name}.json",
                      {"classes": pids, "matrix": np.asarray(res["confusion"]).tolist()})
        if ctx.is_chief:
            _write_closed_set_tensorboard(ctx, name, entry, np.asarray(res["confusion"]), pids)
    if ctx.is_chief:
        ctx.record_metrics(results)
        for name, e in results.items():
            ctx.echo(f"{name}: prec@1 ALL {100 * e['prec1_all']:.2f}%  p-ID {100 * e['prec1_pid']:.2f}%  "
                     f"mAP ALL {100 * e['mAP_all']:.2f}%  p-ID {100 * e['mAP_pid']:.2f}%")
    return {"models": results}


def _write_closed_set_tensorboard(ctx: StageContext, name: str, entry: dict, confusion: np.ndarray,
                                  classes: list[int]) -> None:
    """Closed-set scalars and the row-normalised confusion matrix as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    from keras_reid.training.callbacks import figure_to_image

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

