"""Generator training data: pairings, the paired tf.data input, mask caching, recipe merge keys."""
import numpy as np
import pytest
import tensorflow as tf

from keras_reid.data.gan_input import GANInput
from keras_reid.data.gan_pairs import make_pairs
from keras_reid.data.masks import cached_masks
from keras_reid.data.records import Record
from keras_reid.errors import DatasetError


def _records():
    out = []
    # pid 1: cams 1 and 2, same sequence (pairs); pid 2: cam 1 only; pid 3: cam 2 only
    for pid, cam, seq, n in [(1, 1, 1, 2), (1, 2, 1, 3), (2, 1, 1, 2), (3, 2, 2, 2), (-1, 1, 1, 1)]:
        for f in range(n):
            out.append(Record(f"/x/{pid:04d}_c{cam}s{seq}_{f:06d}_01.jpg", pid, cam, seq, f))
    return out


def test_camera_pairs_are_the_cross_product_of_shared_identity_sequences():
    p = make_pairs("camera_pairs", _records(), source_camera=1, target_camera=2)
    assert len(p) == 2 * 3
    for s, t in p.pairs:
        a, b = p.records[s], p.records[t]
        assert (a.camid, b.camid, a.pid, a.sequence) == (1, 2, b.pid, b.sequence)


def test_camera_pairs_without_shared_identity_is_a_clear_error():
    recs = [r for r in _records() if r.pid != 1]
    with pytest.raises(DatasetError, match="share no identity.*model4"):
        make_pairs("camera_pairs", recs, source_camera=1, target_camera=2)


def test_missing_camera_names_the_cameras_present():
    with pytest.raises(DatasetError, match="camera 7 does not occur.*1, 2"):
        make_pairs("random_target", _records(), source_camera=7, target_camera=2)


def test_random_target_pairs_every_source_with_n_target_images_deterministically():
    a = make_pairs("random_target", _records(), source_camera=1, target_camera=2,
                   targets_per_source=4, seed=5)
    b = make_pairs("random_target", _records(), source_camera=1, target_camera=2,
                   targets_per_source=4, seed=5)
    assert len(a) == 4 * 4  # 4 usable camera-1 images (junk dropped) x 4
    np.testing.assert_array_equal(a.pairs, b.pairs)
    assert all(a.records[t].camid == 2 for _, t in a.pairs)
    assert all(a.records[s].camid == 1 and a.records[s].pid > 0 for s, _ in a.pairs)


def test_identity_pairs_are_ordered_pairs_of_one_identity():
    p = make_pairs("identity_pairs", _records())
    n = {1: 5, 2: 2, 3: 2}
    assert len(p) == sum(k * (k - 1) for k in n.values())
    assert all(p.records[s].pid == p.records[t].pid and s != t for s, t in p.pairs)


def _input(batch=4, flip=True, seed=0):
    p = make_pairs("random_target", _records(), source_camera=1, target_camera=2,
                   targets_per_source=3, seed=0)
    n = len(p.records)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 4, 3), dtype=np.uint8)
    masks = (rng.random((n, 8, 4, 1)) > 0.5).astype(np.float32)
    return GANInput(p, images, masks, needs=["source", "target", "source_mask", "target_mask"],
                    global_batch_size=batch, seed=seed, flip=flip), images, masks


def test_batches_hold_the_paired_images_and_masks_scaled():
    inp, images, masks = _input(flip=False)
    batch = next(iter(inp.dataset(0)))
    assert set(batch) == {"source", "target", "source_mask", "target_mask"}
    order = inp.order(0)[:4]
    src, tgt = inp.pairs.pairs[order, 0], inp.pairs.pairs[order, 1]
    np.testing.assert_allclose(batch["source"].numpy(), images[src] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(batch["target"].numpy(), images[tgt] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(batch["source_mask"].numpy(), masks[src], atol=1e-6)
    assert batch["source"].shape == (4, 8, 4, 3) and batch["target_mask"].shape == (4, 8, 4, 1)


def test_flip_is_the_same_for_all_images_of_an_example():
    inp, images, masks = _input(flip=True)
    plain, _, _ = _input(flip=False)
    a = next(iter(inp.dataset(0)))
    b = next(iter(plain.dataset(0)))
    flipped = 0
    for i in range(4):
        same = np.allclose(a["source"][i], b["source"][i])
        mirrored = np.allclose(a["source"][i], b["source"][i][:, ::-1])
        assert same or mirrored
        flipped += (not same)
        for key in ("target", "source_mask", "target_mask"):
            ref = b[key][i][:, ::-1] if not same else b[key][i]
            np.testing.assert_allclose(a[key][i], ref)
    epochs = [next(iter(inp.dataset(e)))["source"].numpy() for e in (0, 1)]
    assert not np.allclose(*epochs)  # a new order each epoch


def test_two_replicas_see_the_global_batch_of_one_device():
    inp, _, _ = _input(batch=4)
    single = next(iter(inp.dataset(0)))["source"].numpy()
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    parts = list(inp.dataset_fn(ctx, 0).take(2))
    np.testing.assert_allclose(np.concatenate([p["source"].numpy() for p in parts]), single)


def test_masks_are_cached_per_masker_spec(tmp_path):
    calls = []

    class Masker:
        def __call__(self, images):
            calls.append(len(images))
            return (images[..., :1] > 127).astype(np.float32)

    paths = []
    import cv2
    for i in range(3):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), np.full((8, 4, 3), 200 * (i % 2), np.uint8))
        paths.append(str(p))
    m1, cached1 = cached_masks(tmp_path, {"type": "t"}, Masker(), paths, (8, 4))
    m2, cached2 = cached_masks(tmp_path, {"type": "t"}, Masker(), paths, (8, 4))
    assert (cached1, cached2) == (False, True) and calls == [3]
    np.testing.assert_array_equal(m1, m2)
    assert m1[1].min() == 255 and m1[0].max() == 0
    _, cached3 = cached_masks(tmp_path, {"type": "other"}, Masker(), paths, (8, 4))
    assert not cached3


def test_recipe_yaml_merge_keys_copy_a_stage_and_keys_given_win(tmp_path):
    from keras_reid.recipe import load_yaml

    f = tmp_path / "r.yaml"
    f.write_text("a: &x {p: 1, q: [1, 2]}\nb:\n  <<: *x\n  q: [3]\n")
    data = load_yaml(f).data
    assert data["b"] == {"p": 1, "q": [3]}
    data["b"]["p"] = 5
    assert data["a"]["p"] == 1


def test_label_policies_become_target_distributions(tmp_path):
    import cv2

    from keras_reid.data.pipeline import ReIDInput

    recs = []
    for i in range(8):
        p = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(p), np.full((16, 8, 3), 30 * i, np.uint8))
        recs.append(Record(str(p), 1 + i % 2, 1))
    labels = np.array([i % 2 for i in range(8)])
    eps = np.array([0.0, 0.0, 0.1, 0.1, 1.0, 1.0, 0.0, 0.0], np.float32)
    inp = ReIDInput(recs, labels, image_size=(16, 8), global_batch_size=8, sampler="random",
                    epsilons=eps, num_classes=4, seed=0)
    _, targets = next(iter(inp.dataset(0)))
    targets = targets.numpy()
    assert targets.shape == (8, 4) and np.allclose(targets.sum(1), 1.0)
    order = inp.sampler.indices(0)[:8]
    for row, idx in zip(targets, order):
        expect = np.full(4, eps[idx] / 4)
        expect[labels[idx]] += 1 - eps[idx]
        np.testing.assert_allclose(row, expect, atol=1e-6)


def test_lsro_with_the_pk_sampler_needs_a_batch_share(tmp_path):
    from keras_reid.errors import RecipeError
    from keras_reid.recipe import load_recipe

    f = tmp_path / "r.yaml"
    f.write_text("""
name: t
datasets: {s: {type: synthetic, root: /nowhere, ids: 4}}
stages:
  gan: {type: train_generator, dataset: s, source_camera: 1, target_camera: 2, masker: {type: synthetic}}
  aug: {type: augment, generator: gan}
  reid: {type: train_reid, dataset: s, generated: [{stage: aug, labels: lsro}]}
""")
    with pytest.raises(RecipeError, match=r"r.yaml:7: stages.reid.generated\[0\].labels: lsro.*generated_ratio"):
        load_recipe(f)
    with pytest.raises(RecipeError, match="expected an augment stage"):
        load_recipe(f, ["stages.reid.generated=[{stage: gan}]"])
    with pytest.raises(RecipeError, match="multiple of instances_per_id"):
        load_recipe(f, ["stages.reid.generated_ratio=0.3"])
    assert load_recipe(f, ["stages.reid.generated_ratio=0.25"]).stage_configs["reid"].generated_ratio == 0.25
