"""The body of the ``canonical_poses`` stage (imported when it runs; it imports TensorFlow)."""
from __future__ import annotations

import time

import cv2
import keras
import numpy as np
import tensorflow as tf
from scipy.cluster.vq import kmeans2

from keras_reid import io
from keras_reid.data.poses import cached_keypoints, pose_found, skeleton_images
from keras_reid.data.records import JUNK_PID, subset
from keras_reid.errors import DatasetError, UserError
from keras_reid.keypoints import CSV_SIZE, normalised_pose_vector, scale_keypoints, write_pose_csv
from keras_reid.stages.base import StageContext
from keras_reid.stages.outputs import CanonicalPosesOutput
from keras_reid.tb_events import clear_events
from keras_reid.training.callbacks import image_grid

JSON_NAME = "canonical_poses.json"


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, restarts: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(centres [k, D], labels [N])`` of k-means (SciPy's kmeans2, k-means++ starts), the run
    with the lowest distortion of ``restarts``; every cluster non-empty."""
    best = None
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        centres, labels = kmeans2(x.astype(np.float64), k, minit="++", seed=int(rng.integers(2**31)))
        if len(np.unique(labels)) < k:
            continue
        cost = float(((x - centres[labels]) ** 2).sum())
        if best is None or cost < best[0]:
            best = (cost, centres, labels)
    if best is None:
        raise DatasetError(f"k-means left a cluster empty in all {restarts} restarts; lower k ({k}) "
                           "or cluster more poses")
    return best[1], best[2]


#: Where Keras downloads the ImageNet weights of each network (named in the error when that fails).
IMAGENET_WEIGHTS_URLS = {
    "vgg19": "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
             "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "cnn": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
           "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
}


def pose_image_features(skeletons: np.ndarray, network: str, weights: str | None,
                        batch_size: int = 32) -> np.ndarray:
    """Returns float32 features [N, D] of uint8 skeleton images [N, H, W, 3] computed by
    ``network``: ``vgg19`` (PN-GAN: VGG-19's last pooled map, flattened: D = 512 * H/32 * W/32)
    or ``cnn`` (MobileNetV2, global-average-pooled: D = 1280). ``weights``: 'imagenet', a local
    weights file of the network without its top, or None (random). Raises UserError (one line
    naming the fix) when the weights cannot be downloaded or loaded."""
    shape = (*skeletons.shape[1:3], 3)
    name = "VGG-19" if network == "vgg19" else "MobileNetV2"
    try:
        if network == "vgg19":
            net = keras.applications.VGG19(include_top=False, input_shape=shape,
                                           weights="imagenet" if weights == "imagenet" else None)
            preprocess = keras.applications.vgg19.preprocess_input
        else:
            net = keras.applications.MobileNetV2(include_top=False, pooling="avg", input_shape=shape,
                                                 weights="imagenet" if weights == "imagenet" else None)
            preprocess = keras.applications.mobilenet_v2.preprocess_input
        if weights not in (None, "imagenet"):
            net.load_weights(weights)
    except Exception as exc:  # noqa: BLE001 - a download or file problem, reported in one line
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        if weights == "imagenet":
            raise UserError(
                f"canonical_poses: could not download the ImageNet {name} weights ({reason}); fetch "
                f"{IMAGENET_WEIGHTS_URLS[network]} where there is network and set cnn_weights: "
                "/path/to/that.h5 (or copy it into ~/.keras/models/), or use features: keypoints") from None
        raise UserError(f"canonical_poses: could not load {name} weights '{weights}' ({reason}); give "
                        f"a weights file of {name} without its top as cnn_weights, or use features: "
                        "keypoints") from None
    x = preprocess(skeletons.astype(np.float32))
    out = np.asarray(net.predict(x, batch_size=batch_size, verbose=0), np.float32)
    return out.reshape(len(out), -1)


def mean_keypoints(kp: np.ndarray) -> np.ndarray:
    """[18, 3]: per keypoint the mean (y, x) over the poses where it is present, and the fraction
    present; keypoints present in under half of the poses are missing (-1)."""
    present = (kp[..., 0] >= 0) & (kp[..., 1] >= 0)
    out = np.full((18, 3), -1.0, np.float32)
    for j in range(18):
        frac = present[:, j].mean()
        out[j, 2] = frac
        if frac >= 0.5:
            out[j, :2] = kp[present[:, j], j, :2].mean(axis=0)
    return out


def run(cfg, ctx: StageContext) -> dict:
    """Cluster the split's poses into ``cfg.k`` canonical poses: pictures, ``canonical_poses.json``
    and ``.csv`` in the stage folder, a grid in TensorBoard; returns the stage summary."""
    h, w = cfg.image_size
    seed = ctx.seed if cfg.seed is None else cfg.seed
    paths = _image_paths(cfg, ctx, seed)
    t0 = time.time()
    kp = _found_poses(cfg, ctx, paths)
    skeletons = skeleton_images(kp, (h, w))
    if cfg.features == "keypoints":
        x = np.stack([normalised_pose_vector(p, (h, w)) for p in kp])
    else:
        x = pose_image_features(skeletons, cfg.features, cfg.cnn_weights)
    _, labels = kmeans(x, cfg.k, seed=seed, restarts=cfg.restarts)
    order = np.argsort(-np.bincount(labels, minlength=cfg.k), kind="stable")  # largest cluster first
    poses, pictures = _write_clusters(cfg, ctx, kp, skeletons, labels, order)
    _write_tables(cfg, ctx, poses)
    if ctx.is_chief:
        _log_pictures(cfg, ctx, pictures)
    sizes = [p["members"] for p in poses]
    ctx.echo(f"{cfg.k} canonical poses from {len(kp):,} poses ({cfg.features}); cluster sizes {sizes} "
             f"-> {ctx.stage_dir / JSON_NAME}")
    return CanonicalPosesOutput(
        poses=str((ctx.stage_dir / JSON_NAME).relative_to(ctx.run_dir)), k=cfg.k, image_size=(h, w),
        features=cfg.features, poses_found=len(kp), images=len(paths), cluster_sizes=sizes,
        seconds=round(time.time() - t0, 2)).dump()


def _image_paths(cfg, ctx: StageContext, seed: int) -> list[str]:
    """The decodable images of the split (junk dropped), a seeded subset of ``max_poses``."""
    records = ctx.decodable([r for r in ctx.dataset(cfg.dataset)[cfg.split] if r.pid != JUNK_PID],
                            f"images of split '{cfg.split}'")
    return [str(r.path) for r in subset(records, cfg.max_poses, seed)]


def _found_poses(cfg, ctx: StageContext, paths: list[str]) -> np.ndarray:
    """The keypoints [N, 18, 3] of the images where the pose estimator found at least
    ``min_keypoints``. Raises DatasetError when fewer than k poses are found."""
    h, w = cfg.image_size
    with ctx.registry.using("pose", cfg.pose) as estimator:  # image-based ones decode on a cache miss only
        kp, cached = cached_keypoints(ctx.stage_dir, cfg.pose, estimator, paths, (h, w))
    found = pose_found(kp, cfg.min_keypoints)
    ctx.echo(f"poses ({cfg.pose['type']}{', from cache' if cached else ''}): found in {int(found.sum()):,} "
             f"of {len(paths):,} images (at least {cfg.min_keypoints} keypoints)")
    if found.sum() < cfg.k:
        raise DatasetError(f"canonical_poses: {int(found.sum())} poses found, fewer than k = {cfg.k}; "
                           "lower k or min_keypoints, or check the pose estimator")
    return kp[found]


def _write_clusters(cfg, ctx: StageContext, kp: np.ndarray, skeletons: np.ndarray, labels: np.ndarray,
                    order: np.ndarray) -> tuple[list[dict], list[np.ndarray]]:
    """Per cluster (in ``order``): its mean pose's skeleton ``pose_<i>.png`` and its members' mean
    skeleton ``mean_<i>.png``. Returns ``(poses: [{index, members, keypoints}], pictures)``."""
    h, w = cfg.image_size
    poses, pictures = [], []
    for i, c in enumerate(order):
        members = labels == c
        mean_kp = mean_keypoints(kp[members])
        pose_img = skeleton_images(mean_kp[None], (h, w))[0]
        mean_img = skeletons[members].astype(np.float32).mean(axis=0).round().astype(np.uint8)
        for name, img in ((f"pose_{i}.png", pose_img), (f"mean_{i}.png", mean_img)):
            with io.atomic_path(ctx.stage_dir / name) as tmp:
                ok, data = cv2.imencode(".png", img[..., ::-1])
                tmp.write_bytes(data.tobytes())
        poses.append({"index": i, "members": int(members.sum()),
                      "keypoints": [[round(float(v), 2) for v in row] for row in mean_kp]})
        pictures += [pose_img, mean_img]
    return poses, pictures


def _write_tables(cfg, ctx: StageContext, poses: list[dict]) -> None:
    """``canonical_poses.json`` (image size, features, poses) and ``canonical_poses.csv`` (the
    poses' keypoints at the CSV's image size)."""
    h, w = cfg.image_size
    io.write_json(ctx.stage_dir / JSON_NAME, {"image_size": [h, w], "features": cfg.features,
                                              "poses": poses})
    write_pose_csv(ctx.stage_dir / "canonical_poses.csv",
                   {f"pose_{p['index']}.png": np.rint(scale_keypoints(np.asarray(p["keypoints"])[:, :2], (h, w),
                                                                       CSV_SIZE)).astype(np.int64)
                    for p in poses})


def _log_pictures(cfg, ctx: StageContext, pictures: list[np.ndarray]) -> None:
    """The poses and cluster means as one grid image in TensorBoard."""
    clear_events(ctx.tensorboard_dir)   # the picture of an earlier, unfinished attempt
    with tf.summary.create_file_writer(str(ctx.tensorboard_dir)).as_default():
        tf.summary.image("canonical_poses (pose, cluster mean)", image_grid(np.stack(pictures), cols=2 * min(cfg.k, 8))[None], step=0)
