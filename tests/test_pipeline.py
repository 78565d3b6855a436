"""tf.data input pipeline: samplers, transforms, per-replica scheme, corrupt files, eval order."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_reid.data.pipeline import ReIDInput, eval_dataset, scan_images, skipped_message
from keras_reid.data.records import Record
from keras_reid.data.samplers import PKSampler, RandomSampler
from keras_reid.data.transforms import build_transforms, parse_specs
from keras_reid.errors import RecipeError, UserError

H, W = 32, 16
AUGMENT = [{"type": "flip", "p": 0.5}, {"type": "pad_crop", "pad": 4},
           {"type": "color_jitter", "brightness": 0.3, "p": 0.8},
           {"type": "random_erasing", "p": 0.5, "fill": "mean"}]


def _write_images(folder, ids=6, per_id=5, size=(H, W)):
    """Tiny distinct JPEGs in Market naming; returns records (pid = 1..ids)."""
    rng = np.random.default_rng(0)
    records = []
    for pid in range(1, ids + 1):
        for n in range(per_id):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            img[:4, :4] = (pid * 40 % 256, n * 50, 0)
            path = folder / f"{pid:04d}_c{n % 3 + 1}s1_{n:06d}_00.jpg"
            assert cv2.imwrite(str(path), img)
            records.append(Record(str(path), pid, n % 3 + 1, 1, n))
    return records


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("imgs"))


def _labels(records):
    return [r.pid - 1 for r in records]


# --- samplers -----------------------------------------------------------------------------


def test_pk_batches_hold_p_ids_times_k_images():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # id 0 has 1 image < K
    s = PKSampler(labels, p=4, k=3, seed=1)
    idx = s.indices(0)
    assert len(idx) == s.steps_per_epoch * 12 and s.steps_per_epoch == len(labels) // 12
    for batch in idx.reshape(-1, 12):
        groups = labels[batch].reshape(4, 3)
        assert (groups == groups[:, :1]).all()          # K consecutive images of one identity
        assert len(set(groups[:, 0])) == 4               # P distinct identities
        for g, members in zip(groups[:, 0], batch.reshape(4, 3)):
            if (labels == g).sum() >= 3:                 # without replacement when possible
                assert len(set(members)) == 3


def test_samplers_are_deterministic_and_epochs_differ():
    labels = np.repeat(np.arange(8), 6)
    for make in (lambda: PKSampler(labels, 4, 2, seed=3), lambda: RandomSampler(48, 8, seed=3)):
        a, b = make(), make()
        assert np.array_equal(a.indices(0), b.indices(0))
        assert not np.array_equal(a.indices(0), a.indices(1))
    assert not np.array_equal(PKSampler(labels, 4, 2, seed=3).indices(0),
                              PKSampler(labels, 4, 2, seed=4).indices(0))


def test_random_sampler_drops_incomplete_batch():
    s = RandomSampler(50, 8, seed=0)
    idx = s.indices(0)
    assert s.steps_per_epoch == 6 and len(idx) == 48 and len(set(idx)) == 48


def test_pk_requires_p_multiple_of_replicas():
    with pytest.raises(UserError, match="multiple of the number of replicas"):
        PKSampler(np.repeat(np.arange(8), 4), p=3, k=4, num_replicas=2)


# --- transforms ---------------------------------------------------------------------------


def test_transform_specs_are_validated():
    assert [s.type for s in parse_specs(AUGMENT)] == [a["type"] for a in AUGMENT]
    with pytest.raises(RecipeError, match="flip"):
        parse_specs([{"type": "flip", "prob": 0.5}])
    with pytest.raises(RecipeError, match="random_erasing"):
        parse_specs([{"type": "erase"}])
    assert build_transforms([], H, W) is None


def test_random_translate_crops_a_window_of_the_enlarged_image():
    """torchreid's Random2DTranslation: enlarge 1.125x (bilinear), crop a random window; p=0 keeps
    the image."""
    from keras_reid.data.transforms import SeededTransforms

    img = np.random.default_rng(4).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    big = cv2.resize(img, (36, 72), interpolation=cv2.INTER_LINEAR)  # round(32 * 1.125), round(64 * 1.125)
    always = SeededTransforms([{"type": "random_translate", "p": 1.0}], 64, 32)
    offsets = set()
    for position in range(12):
        out = always(img, 0, 0, position)
        assert out.shape == img.shape
        found = [(y, x) for y in range(9) for x in range(5)
                 if np.array_equal(out, big[y:y + 64, x:x + 32])]
        assert found, "not a window of the enlarged image"
        offsets.add(found[0])
    assert len(offsets) > 3
    never = SeededTransforms([{"type": "random_translate", "p": 0.0}], 64, 32)
    np.testing.assert_array_equal(never(img, 0, 0, 0), img)
    with pytest.raises(RecipeError, match="random_translate"):
        parse_specs([{"type": "translate"}])


def test_transforms_change_images_keep_shape_and_are_seeded(records):
    plain = ReIDInput(records, _labels(records), image_size=(H, W), global_batch_size=8, p=4, k=2)
    aug = ReIDInput(records, _labels(records), image_size=(H, W), global_batch_size=8, p=4, k=2,
                    transforms=AUGMENT)
    (x0, y0), = plain.dataset(0).take(1)
    (x1, y1), = aug.dataset(0).take(1)
    (x2, _), = aug.dataset(0).take(1)
    assert x1.shape == x0.shape == (8, H, W, 3) and x1.dtype == tf.float32 and y1.dtype == tf.int32
    assert np.array_equal(y0, y1)                      # same sampler stream
    assert not np.array_equal(x0, x1)                  # transforms did something
    assert np.array_equal(x1, x2)                      # deterministic for (seed, epoch, position)
    assert 0 <= float(tf.reduce_min(x1)) and float(tf.reduce_max(x1)) <= 255
    # same images whatever the parallelism; Composes are reused, not rebuilt per image
    serial = ReIDInput(records, _labels(records), image_size=(H, W), global_batch_size=8, p=4,
                       k=2, transforms=AUGMENT, num_parallel_calls=1)
    par = [x.numpy() for x, _ in aug.dataset(1)]
    ser = [x.numpy() for x, _ in serial.dataset(1)]
    assert all(np.array_equal(a, b) for a, b in zip(par, ser)) and len(par) == aug.steps_per_epoch
    assert aug.transforms.built < (len(par) + 2) * 8 // 4


# --- ReIDInput ----------------------------------------------------------------------------


def test_reid_input_batches_deterministic_per_epoch(records):
    make = lambda: ReIDInput(records, _labels(records), image_size=(H, W), global_batch_size=8,  # noqa: E731
                             sampler="pk", k=2, seed=5, transforms=AUGMENT)
    inp = make()
    assert inp.steps_per_epoch == len(records) // 8 and inp.num_classes == 6
    e0 = [(x.numpy(), y.numpy()) for x, y in inp.dataset(0)]
    again = [(x.numpy(), y.numpy()) for x, y in make().dataset(0)]
    e1 = [y.numpy() for _, y in inp.dataset(1)]
    assert len(e0) == inp.steps_per_epoch
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(e0, again))
    assert not all(np.array_equal(a[1], b) for a, b in zip(e0, e1))
    for _, y in e0:  # 4 ids x 2 images
        assert (y.reshape(4, 2) == y.reshape(4, 2)[:, :1]).all()


def test_resizes_to_image_size(tmp_path, records):
    big = _write_images(tmp_path, ids=2, per_id=2, size=(64, 40))
    inp = ReIDInput(big, sampler="random", image_size=(H, W), global_batch_size=4)
    (x, y), = inp.dataset(0).take(1)
    assert x.shape == (4, H, W, 3) and sorted(y.numpy().tolist()) == [0, 0, 1, 1]


def test_per_replica_scheme_with_two_input_pipelines(records):
    """P=2 pipelines x L=2 local replicas: pipeline i, replica j, step s gets batch (s*L+j)*P+i."""
    inp = ReIDInput(records, _labels(records), image_size=(H, W), global_batch_size=8, k=2,
                    transforms=AUGMENT, seed=2, num_replicas=4)
    glob = [(x.numpy(), y.numpy()) for x, y in inp.dataset(3)]
    pipes = [[(x.numpy(), y.numpy()) for x, y in inp.dataset_fn(
        tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i,
                                   num_replicas_in_sync=4), 3)] for i in range(2)]
    b, L, P = 2, 2, 2
    assert all(x.shape == (b, H, W, 3) for pipe in pipes for x, _ in pipe)
    for s, (gx, gy) in enumerate(glob):
        parts = {}
        for i in range(P):
            for j in range(L):
                x, y = pipes[i][s * L + j]
                parts[(s * L + j) * P + i - s * L * P] = (x, y)
        assert sorted(parts) == [0, 1, 2, 3]            # a step covers a contiguous range
        np.testing.assert_array_equal(np.concatenate([parts[n][0] for n in range(4)]), gx)
        np.testing.assert_array_equal(np.concatenate([parts[n][1] for n in range(4)]), gy)


def test_mirrored_strategy_step_equals_single_device_batch(records):
    from keras_reid.distribute import make_strategy

    strategy = make_strategy({"type": "mirrored", "devices": ["/cpu:0", "/cpu:1"]})
    inp = ReIDInput(records, _labels(records), image_size=(H, W), global_batch_size=8, k=2,
                    transforms=AUGMENT, seed=7, num_replicas=2)
    dist = strategy.distribute_datasets_from_function(lambda ctx: inp.dataset_fn(ctx, 1))
    steps = 0
    for (gx, gy), (dx, dy) in zip(inp.dataset(1), dist):
        xs = strategy.experimental_local_results(dx)
        ys = strategy.experimental_local_results(dy)
        assert len(xs) == 2 and xs[0].shape == (4, H, W, 3)
        np.testing.assert_array_equal(np.concatenate([x.numpy() for x in xs]), gx.numpy())
        np.testing.assert_array_equal(np.concatenate([y.numpy() for y in ys]), gy.numpy())
        for y in ys:  # each replica holds whole identities (2 ids x K=2)
            assert (y.numpy().reshape(2, 2) == y.numpy().reshape(2, 2)[:, :1]).all()
        steps += 1
    assert steps == inp.steps_per_epoch


def test_pk_with_replicas_not_dividing_p_is_a_clear_error(records):
    inp = ReIDInput(records, _labels(records), image_size=(H, W), global_batch_size=6, k=2)
    with pytest.raises(UserError, match="multiple of the number of replicas"):
        inp.dataset_fn(tf.distribute.InputContext(1, 0, 2), 0)


# --- corrupt files and evaluation -----------------------------------------------------------


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path, caplog):
    recs = _write_images(tmp_path, ids=3, per_id=4)
    (tmp_path / "0001_c1s1_000000_00.jpg").write_bytes(b"not a jpeg")          # garbage
    data = (tmp_path / "0002_c2s1_000001_00.jpg").read_bytes()
    (tmp_path / "0002_c2s1_000001_00.jpg").write_bytes(data[: len(data) // 2])  # truncated
    missing = Record(str(tmp_path / "gone.jpg"), 3, 1)
    good, bad = scan_images(recs + [missing], cache_dir=tmp_path / "cache")
    assert len(good) == 10 and len(bad) == 3 and bad[-1] == missing.path
    assert "skipped 3 of 13 images" in skipped_message(bad, 13)
    assert (tmp_path / "cache" / "image_scan.json").exists()
    again, bad2 = scan_images(recs + [missing], cache_dir=tmp_path / "cache")
    assert bad2 == bad and again == good
    # training on the good records runs a whole epoch; evaluation on all keeps the order
    inp = ReIDInput(good, image_size=(H, W), global_batch_size=4, sampler="random")
    assert sum(1 for _ in inp.dataset(0)) == inp.steps_per_epoch
    with caplog.at_level(logging.WARNING, logger="keras_reid"):
        batches = list(eval_dataset(recs + [missing], image_size=(H, W), batch_size=5))
    assert "skipped 3 of 13" in caplog.text
    x = np.concatenate([b.numpy() for b in batches])
    assert x.shape == (13, H, W, 3) and not x[0].any() and not x[-1].any() and x[1].any()


def test_eval_dataset_preserves_record_order(records):
    batches = list(eval_dataset(records, image_size=(H, W), batch_size=7))
    assert [b.shape[0] for b in batches] == [7, 7, 7, 7, 2]
    x = np.concatenate([b.numpy() for b in batches])
    expected = np.stack([tf.io.decode_jpeg(tf.io.read_file(r.path)).numpy() for r in records])
    np.testing.assert_array_equal(x, expected.astype(np.float32))
    # and the images are told apart by content, so a reordering would show
    assert len({e.tobytes() for e in expected}) == len(records)
    (a, m), = eval_dataset(records[:3], image_size=(H, W), batch_size=3, flip=True)
    np.testing.assert_array_equal(m.numpy(), a.numpy()[:, :, ::-1])


def test_subset_is_deterministic_keeps_order_and_leaves_small_lists_alone():
    from keras_reid.data.records import subset

    items = [f"img{i:03d}" for i in range(100)]
    a, b = subset(items, 10, seed=3), subset(items, 10, seed=3)
    assert a == b and len(a) == len(set(a)) == 10
    assert a == sorted(a)  # kept in the items' order
    assert subset(items, 10, seed=4) != a
    assert subset(items, None, 0) is items and subset(items, 100, 0) is items
