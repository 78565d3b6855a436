"""PN-GAN pipeline pieces: target poses for the generator, canonical poses, pose-normalised sets."""
import json

import numpy as np
import pytest

from keras_reid import runner, testing
from keras_reid.data.gan_input import GANInput
from keras_reid.data.gan_pairs import make_pairs
from keras_reid.data.records import Record
from keras_reid.errors import RecipeError
from keras_reid.stages.canonical_poses.run import kmeans, mean_keypoints

DATA = {"ids": 10, "cameras": 3, "size": (64, 32), "seed": 1, "images_per_id_camera": 2}


def _stages():
    return {
        "gan": {"type": "train_generator", "dataset": "synth", "generator": {"type": "pngan", "width": 4, "res_blocks": 1},
                "pose": {"type": "synthetic"}, "image_size": [32, 16], "batch_size": 4, "epochs": 1,
                "steps_per_epoch": 2, "verbose": 0},
        "canonical": {"type": "canonical_poses", "dataset": "synth", "pose": {"type": "synthetic"},
                      "image_size": [32, 16], "k": 3},
        "pn_query": {"type": "augment", "generator": "gan", "poses": "canonical", "split": "query",
                     "pose_indices": [0, 2], "source_pose": {"type": "synthetic"}, "no_pose": "skip"},
    }


def _recipe(tmp_path, root, stages):
    return testing.build_recipe(tmp_path / "r.yaml", name="pn", stages=stages,
                                datasets={"synth": testing.SyntheticData(root, DATA).spec})


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_data):
    base = tmp_path_factory.mktemp("pn")
    rec = _recipe(base, synthetic_data(**DATA).root, _stages())
    out = runner.run(rec, base / "run", echo=lambda *_: None)
    return base, out


def test_generator_trains_on_pairs_with_target_poses(run):
    _, out = run
    poses = out["gan"]["poses"]
    assert poses["found"] == poses["images"] > 0 and poses["pairs_dropped"] == 0
    assert out["gan"]["pairing"] == "identity_pairs"


def test_sample_grid_shows_the_target_pose_row(run):
    """TensorBoard's gan/samples: source, target skeleton, generated and target rows, named."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base, _ = run
    acc = EventAccumulator(str(base / "run" / "tensorboard" / "gan"), size_guidance={"tensors": 0})
    acc.Reload()
    from keras_reid.training.callbacks import label_rows

    encoded = tf.make_ndarray(acc.Tensors("gan/samples")[-1].tensor_proto)[2]
    grid = tf.io.decode_png(encoded).numpy()
    tile_h = 32 + 2 * 2  # image height + the grid's borders
    assert grid.shape[0] == 4 * tile_h
    names = ["source", "target pose", "generated", "target"]
    strip = label_rows(np.zeros((4 * tile_h, 0, 3), np.uint8), names).shape[1]
    assert (grid[:, :strip] < 100).any()       # the row names, dark on white
    grid = grid[:, strip:]
    skeleton = grid[tile_h + 2:2 * tile_h - 2]  # the second row: coloured sticks on black
    skeleton = skeleton[:, [c for c in range(grid.shape[1]) if 2 <= c % (16 + 4) < 18]]
    assert (skeleton.max(axis=-1) < 30).mean() > 0.5 and skeleton.max() > 100


def test_canonical_poses_are_saved_as_json_csv_and_pictures(run):
    base, out = run
    data = json.loads((base / "run" / out["canonical"]["poses"]).read_text())
    assert len(data["poses"]) == 3 and data["image_size"] == [32, 16]
    sizes = [p["members"] for p in data["poses"]]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == out["canonical"]["poses_found"]
    for p in data["poses"]:
        kp = np.asarray(p["keypoints"])
        assert kp.shape == (18, 3) and (kp[1, :2] >= 0).all()  # the neck is in every mean pose
        assert (base / "run" / "canonical" / f"pose_{p['index']}.png").is_file()
    lines = (base / "run" / "canonical" / "canonical_poses.csv").read_text().splitlines()
    assert lines[0] == "name:keypoints_y:keypoints_x" and len(lines) == 4


def test_augment_draws_every_source_in_the_chosen_canonical_poses(run):
    base, out = run
    aug = out["pn_query"]
    assert aug["poses"]["pose_indices"] == [0, 2] and aug["poses"]["without_pose"] == 0
    rows = [json.loads(x) for x in (base / "run" / "pn_query" / "manifest-0-of-1.jsonl").read_text().splitlines()]
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r["pose_index"])
        assert r["camera"] == r["source_camera"]  # a pose version stays in its camera
    assert all(sorted(v) == [0, 2] for v in by_source.values())
    assert len(by_source) == aug["source_images"]
    # different poses give different pictures of the same source
    import cv2

    src = next(iter(by_source))
    files = [r["file"] for r in rows if r["source"] == src]
    a, b = (cv2.imread(str(base / "run" / "pn_query" / "data" / "bounding_box_train" / f)) for f in files)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0


def test_flipped_examples_get_the_mirrored_pose_with_left_and_right_swapped():
    recs = [Record(f"/x/{i}.jpg", 1, 1, 1, i) for i in range(2)]
    pairs = make_pairs("identity_pairs", recs)
    kp = np.full((2, 18, 3), -1.0, np.float32)
    kp[:, 2] = (10, 2, 1)   # right shoulder near the left image edge
    kp[:, 5] = (10, 12, 1)  # left shoulder near the right edge
    kp[:, 3] = (20, 2, 1)   # right elbow under the right shoulder: limb Rsho-Relb
    images = np.zeros((2, 32, 16, 3), np.uint8)
    data = GANInput(pairs, images, None, needs=["source", "target", "target_pose"], global_batch_size=2,
                    flip=True, poses=kp)
    plain, mirrored = (s[0] for s in data.skeletons)
    # the right arm drawn on the left of the plain skeleton is on the right after flipping, in
    # the same (right-arm) colour: not a pixel mirror of a differently coloured left arm
    assert plain[15, :5].any() and not plain[15, 11:].any()
    assert mirrored[15, 11:].any() and not mirrored[15, :5].any()
    col_plain = plain[15, :5][plain[15, :5].sum(-1) > 0][0]
    col_mirror = mirrored[15, 11:][mirrored[15, 11:].sum(-1) > 0][0]
    assert np.abs(col_plain.astype(int) - col_mirror.astype(int)).max() < 40


def test_kmeans_and_mean_keypoints():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (10, 2))])
    centres, labels = kmeans(x, 2, seed=0, restarts=3)
    assert sorted(np.bincount(labels).tolist()) == [10, 20]
    assert np.allclose(sorted(centres[:, 0]), [0, 5], atol=0.2)
    kp = np.full((4, 18, 2), -1.0)
    kp[:, 0] = [[1, 1], [3, 3], [1, 1], [3, 3]]
    kp[:1, 1] = [5, 5]  # present in 1 of 4 poses: missing in the mean
    m = mean_keypoints(kp)
    assert np.allclose(m[0], [2, 2, 1]) and m[1, 0] == -1 and m[1, 2] == 0.25


def test_pose_generator_needs_a_pose_estimator_and_canonical_poses(tmp_path):
    root = tmp_path / "data"
    stages = _stages()
    del stages["gan"]["pose"]
    with pytest.raises(RecipeError, match="needs target poses but no pose estimator"):
        _recipe(tmp_path, root, stages)
    stages = _stages()
    del stages["pn_query"]["poses"]
    with pytest.raises(RecipeError, match="name a canonical_poses stage"):
        _recipe(tmp_path, root, stages)
    stages = _stages()
    stages["pn_query"]["pose_indices"] = [5]
    with pytest.raises(RecipeError, match=r"\[5\] are not canonical poses"):
        _recipe(tmp_path, root, stages)


def test_vgg19_features_of_skeleton_images_cluster_with_random_weights():
    """features: vgg19 (the paper's clustering): VGG-19 features of the skeleton images, k-means
    over them; weights None here (no network on the test machine)."""
    from keras_reid.data.poses import skeleton_images
    from keras_reid.stages.canonical_poses.run import pose_image_features
    from keras_reid.stages.canonical_poses import CanonicalPosesConfig

    rng = np.random.default_rng(0)
    kp = np.full((6, 18, 2), -1.0, np.float32)
    for i in range(6):  # two groups of poses: arms to one side or the other
        side = 1 if i < 3 else -1
        kp[i, 1] = [14, 16]
        kp[i, 2], kp[i, 5] = [16, 16 - 6 * side], [16, 16 + 6 * side]
        kp[i, 3], kp[i, 6] = [24, 16 - 12 * side + rng.normal()], [24, 16 + 3 * side]
        kp[i, 8], kp[i, 11] = [34, 13], [34, 19]
    skeletons = skeleton_images(kp, (64, 32))
    x = pose_image_features(skeletons, "vgg19", None)
    assert x.shape == (6, 512 * 2 * 1) and x.dtype == np.float32 and np.isfinite(x).all()
    centres, labels = kmeans(x, 2, seed=0, restarts=3)
    assert centres.shape == (2, 1024) and sorted(np.bincount(labels).tolist())[0] >= 1
    assert CanonicalPosesConfig(dataset="d", features="vgg19", cnn_weights=None).features == "vgg19"
    assert CanonicalPosesConfig(dataset="d").features == "keypoints"  # the offline default


def test_vgg19_imagenet_weights_without_network_are_one_clear_line(monkeypatch):
    import keras

    from keras_reid.errors import UserError
    from keras_reid.stages.canonical_poses.run import pose_image_features

    def offline(*args, weights=None, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.applications, "VGG19", offline)
    with pytest.raises(UserError) as err:
        pose_image_features(np.zeros((1, 64, 32, 3), np.uint8), "vgg19", "imagenet")
    msg = str(err.value)
    assert "\n" not in msg and "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert "cnn_weights:" in msg and "features: keypoints" in msg
