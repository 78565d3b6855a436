"""PN-GAN fused evaluation (model A on the real image + model B on its pose-normalised versions)
and the transfer setting (a model trained on one dataset evaluated on another).

The pose-normalised versions are written by the tests themselves in the layout an augment stage
leaves (images under data/bounding_box_train/, manifest-0-of-1.jsonl rows with file, kept, source,
pose_index, and the .complete.json marker that ``ctx.output_of`` reads), so no generator is trained.
"""
import json
import shutil
import uuid

import cv2
import numpy as np
import pytest

from keras_reid import io, runner, testing
from keras_reid.errors import RecipeError, UserError
from keras_reid.metrics import evaluate_retrieval, pairwise_distance
from keras_reid.metrics.retrieval import fuse_features
from keras_reid.stages.base import COMPLETE_MARKER

REID = {"type": "train_reid", "dataset": "synth", "image_size": [32, 16],
        "backbone": {"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 16},
        "optimizer": {"type": "adam", "lr": 0.001}, "batch_size": 8, "instances_per_id": 2, "epochs": 1,
        "bn_recalibration_batches": 0, "verbose": 0}
STAGES = {
    "gan": {"type": "train_generator", "dataset": "synth", "source_camera": 1, "target_camera": 2,
            "generator": {"type": "pix2pix", "variant": "model1", "filters": 4, "max_filters": 8},
            "image_size": [32, 16], "epochs": 1, "verbose": 0},
    "pn_test": {"type": "augment", "generator": "gan"},
    "A": REID,
    "B": dict(REID, augment=[]),
    "C": dict(REID, backbone={"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 8}),
    "evaluate": {"type": "evaluate", "dataset": "synth", "models": ["A", "B"], "ranked_lists": 2,
                 "projector_samples": 0,
                 "fusion": {"name": "fused", "real": "A", "normalised": "B", "views": ["pn_test"],
                            "normalised_name": "B_normalised"}},
}


# ------------------------------------------------------------------------------ pure fusion
def _unit(*v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("method", ["max", "mean", "concat"])
def test_fusion_ranks_the_right_gallery_item_first_only_when_fused(method):
    """The query's real vector is closer to the wrong gallery item; its pose-normalised version
    matches the right one's version: real-only ranks the wrong item first, fused the right one."""
    q_real = _unit(0.6, 0.8, 0, 0)
    g_real = np.stack([_unit(0, 1, 0, 0), _unit(1, 0, 0, 0)])  # 0: wrong pid, 1: right pid
    versions = np.stack([_unit(0, 0, 1, 0),    # the query's version
                         _unit(0, 0, 0, 1),    # the wrong item's version
                         _unit(0, 0, 1, 0)])   # the right item's version
    owners = [0, 1, 2]  # image index in [query; gallery]
    q_pids, g_pids, q_cams, g_cams = [1], [2, 1], [1], [2, 2]
    plain = evaluate_retrieval(pairwise_distance(q_real[None], g_real), q_pids, g_pids, q_cams, g_cams)
    assert plain["cmc"][0] == 0.0
    fused = fuse_features(np.concatenate([q_real[None], g_real]), versions, owners, method=method)
    res = evaluate_retrieval(pairwise_distance(fused[:1], fused[1:]), q_pids, g_pids, q_cams, g_cams)
    assert res["cmc"][0] == 1.0 and res["mAP"] == 1.0


def test_fusion_methods_on_hand_made_vectors():
    real = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    versions = np.array([[0, 3, 4], [0, 0, -1], [1, 1, 0]], np.float32)  # normalised inside
    owners = [0, 0, 1]  # image 2 has no version
    v = versions / np.linalg.norm(versions, axis=1, keepdims=True)
    got = fuse_features(real, versions, owners, method="max")
    want = np.stack([np.maximum.reduce([real[0], v[0], v[1]]), np.maximum(real[1], v[2]), real[2]])
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)

    got = fuse_features(real, versions, owners, method="mean")
    want = np.stack([(real[0] + v[0] + v[1]) / 3, (real[1] + v[2]) / 2, real[2]])
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)

    got = fuse_features(real, versions, owners, method="concat")
    assert got.shape == (3, 6)
    part = np.stack([v[0] + v[1], v[2], np.zeros(3)])
    part[:2] /= np.linalg.norm(part[:2], axis=1, keepdims=True)
    want = np.concatenate([real, part], 1)
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)

    # normalise_fused: false (PN-GAN): the fused vectors are ranked as they are
    for method in ("max", "mean"):
        raw = fuse_features(real, versions, owners, method=method, normalise=False)
        again = fuse_features(real, versions, owners, method=method)
        np.testing.assert_allclose(again, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    raw = fuse_features(real, versions, owners, method="max", normalise=False)
    want = np.stack([np.maximum.reduce([real[0], v[0], v[1]]), np.maximum(real[1], v[2]), real[2]])
    np.testing.assert_allclose(raw, want, atol=1e-6)
    assert np.linalg.norm(raw[0]) > 1.2  # not re-normalised
    raw = fuse_features(real, versions, owners, method="concat", normalise=False)
    np.testing.assert_allclose(raw[:, 3:], np.stack([(v[0] + v[1]) / 2, v[2], np.zeros(3)]), atol=1e-6)

    # versions only (model B alone): every image needs at least one version
    only = fuse_features(None, versions, [0, 0, 1], n=2, method="max")
    np.testing.assert_allclose(only[1], v[2], atol=1e-6)
    with pytest.raises(ValueError, match="image 2 has neither"):
        fuse_features(None, versions, owners, n=3)
    with pytest.raises(ValueError, match="use concat"):
        fuse_features(real, np.ones((1, 5), np.float32), [0], method="max")
    with pytest.raises(ValueError, match="owner indices"):
        fuse_features(real, versions, [0, 1, 3])


# ------------------------------------------------------------------------------ stage
@pytest.fixture(scope="module")
def roots(synthetic_data):
    """The datasets 'synth' and 'other' (specs for the recipe)."""
    return (synthetic_data(ids=8, cameras=2, size=(32, 16), seed=1, images_per_id_camera=2).spec,
            synthetic_data(ids=10, cameras=3, size=(32, 16), seed=7, images_per_id_camera=2).spec)


def _recipe(tmp_path, roots, *overrides):
    return testing.build_recipe(tmp_path, name="fusion", seed=4, stages=STAGES,
                                datasets={"synth": roots[0], "other": roots[1]}, overrides=overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, roots):
    """A run folder with models A, B (16-d) and C (8-d) trained (once per module)."""
    tmp = tmp_path_factory.mktemp("trained")
    run_dir = tmp / "run"
    runner.run(_recipe(tmp, roots), run_dir, echo=lambda s: None, only=["A", "B", "C"])
    return run_dir


def _new_run(trained, tmp_path):
    run_dir = tmp_path / "run"
    for stage in ("A", "B", "C"):
        shutil.copytree(trained / stage, run_dir / stage)
    return run_dir


def _query_gallery(rec):
    from keras_reid.data.records import JUNK_PID
    from keras_reid.registry import REGISTRY

    splits = REGISTRY.create("dataset", rec.model.datasets["synth"].model_dump()).load()
    return ([r for r in splits["query"] if r.pid != JUNK_PID],
            [r for r in splits["gallery"] if r.pid != JUNK_PID], splits["train"])


def _pid_image(pid):
    """The same picture for every image of one identity (a stand-in for a perfect generator)."""
    rng = np.random.default_rng(1000 + pid)
    img = np.zeros((32, 16, 3), np.uint8)
    for y in range(0, 32, 8):
        img[y:y + 8] = rng.integers(0, 256, 3)
    return img


def _mark_done(rec, run_dir, name, summary):
    """A completion marker for ``name`` with the identity the run expects (the hash and the
    completion ids of the stages it reads), as if the stage had run."""
    step = next(s for s in runner.plan(rec, run_dir) if s.name == name)
    io.write_json(run_dir / name / COMPLETE_MARKER, {
        "hash": step.hash, "stage": name, "type": step.type, "completion_id": uuid.uuid4().hex,
        "inputs": step.inputs, "summary": summary})


def _write_view(rec, run_dir, name, images, train, skip=()):
    """An augment stage's output: for image i (not in ``skip``) pose 0 = its identity's picture,
    pose 1 = noise; plus a dropped row and a version of a training image (both to be ignored)."""
    folder = run_dir / name / "data" / "bounding_box_train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []

    def add(file, image, source, pose, kept=True):
        if kept:
            cv2.imwrite(str(folder / file), image[..., ::-1])
        rows.append({"file": file, "kept": kept, "source": str(source), "pose_index": pose,
                     "pid": 0, "camera": 1, "scores": {}})

    for i, r in enumerate(images):
        if i in skip:
            continue
        add(f"v{i:04d}_p0.jpg", _pid_image(r.pid), r.path, 0)
        add(f"v{i:04d}_p1.jpg", rng.integers(0, 256, (32, 16, 3), dtype=np.uint8), r.path, 1)
    add("dropped.jpg", _pid_image(0), images[0].path, 1, kept=False)
    add("train_source.jpg", _pid_image(0), train[0].path, 0)
    (run_dir / name / "manifest-0-of-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not (run_dir / "gan" / COMPLETE_MARKER).exists():   # the generator the view came from
        (run_dir / "gan").mkdir(parents=True, exist_ok=True)
        _mark_done(rec, run_dir, "gan", {})
    _mark_done(rec, run_dir, name, {"data": f"{name}/data"})
    return rows


@pytest.fixture
def spy(monkeypatch):
    """Paths of every image whose features the evaluate stage extracts."""
    from keras_reid.stages.evaluate import common as evaluate_common
    from keras_reid.stages.evaluate import fusion as evaluate_fusion

    seen = []
    original = evaluate_common.extract_features

    def wrapper(model, records, *args, **kwargs):
        seen.extend(str(r.path) for r in records)
        return original(model, records, *args, **kwargs)

    for module in (evaluate_common, evaluate_fusion):
        monkeypatch.setattr(module, "extract_features", wrapper)
    return seen


def test_fused_evaluation_reports_A_B_and_fused(tmp_path, roots, trained, spy):
    rec = _recipe(tmp_path, roots)
    query, gallery, train = _query_gallery(rec)
    run_dir = _new_run(trained, tmp_path)
    skip = {0, len(query) + 1}  # the first query and the second gallery image have no version
    _write_view(rec, run_dir, "pn_test", query + gallery, train, skip=skip)
    lines = []
    out = runner.run(rec, run_dir, echo=lines.append, only=["evaluate"])

    models = json.loads((run_dir / "metrics.json").read_text())["models"]
    assert set(models) == {"A", "B", "fused", "B_normalised"}
    assert out["evaluate"]["models"] == models
    keys = {"mAP", "mINP", "rank1", "rank5", "rank10", "rank20", "valid_queries", "invalid_queries"}
    for name in models:
        assert keys <= set(models[name])
        assert models[name]["valid_queries"] + models[name]["invalid_queries"] == len(query)
    n = len(query) + len(gallery)
    fused = models["fused"]
    assert fused["images_without_versions"] == 2
    assert fused["versions"] == 2 * (n - 2)  # poses 0 and 1; dropped and foreign rows ignored
    assert fused["vectors"] == n + 2 * (n - 2)
    assert fused["fusion"]["method"] == "max" and fused["fusion"]["poses"] is None
    assert models["B_normalised"]["vectors"] == 2 * (n - 2) + 2  # two fall back to B on the real image
    assert not any(p.endswith(("dropped.jpg", "train_source.jpg")) for p in spy)
    assert sum("pn_test" in p for p in spy) == 2 * (n - 2)  # each version embedded once
    real_paths = [str(r.path) for r in query + gallery]
    assert spy.count(real_paths[0]) == 2  # A and B each embed the real images once (features reused)
    assert any(line.startswith("fused ") for line in lines) and any("2 of" in l for l in lines)
    assert (run_dir / "tensorboard" / "evaluate" / "fused").is_dir()
    assert (run_dir / "evaluate" / "cmc_fused.npy").is_file()


def test_one_pose_uses_only_pose_0(tmp_path, roots, trained, spy):
    """poses: [0] embeds only the pose-0 versions; those show each identity's own picture, so B
    on the versions alone finds every match first (mAP 1), which the noise of pose 1 would spoil."""
    rec = _recipe(tmp_path, roots, "stages.evaluate.fusion.poses=[0]", "stages.evaluate.models=[A]",
                  "stages.evaluate.fusion.method=mean")
    query, gallery, train = _query_gallery(rec)
    run_dir = _new_run(trained, tmp_path)
    rows = _write_view(rec, run_dir, "pn_test", query + gallery, train)
    out = runner.run(rec, run_dir, echo=lambda s: None, only=["evaluate"])["evaluate"]["models"]
    assert set(out) == {"A", "fused", "B_normalised"}
    pose0 = {r["file"] for r in rows if r["kept"] and r["pose_index"] == 0 and r["file"].startswith("v")}
    used = {p.rsplit("/", 1)[-1] for p in spy if "pn_test" in p}
    assert used == pose0
    assert out["fused"]["versions"] == len(pose0) == len(query) + len(gallery)
    assert out["fused"]["images_without_versions"] == 0 and out["fused"]["fusion"]["poses"] == [0]
    assert out["B_normalised"]["mAP"] == pytest.approx(1.0)
    assert out["B_normalised"]["rank1"] == 1.0
    # the fused entry is the mean of A on each real image and B on its pose-0 version
    import keras

    from keras_reid.inference import extract_features

    images = query + gallery
    feats = {}
    for stage in ("A", "B", "C"):
        model = keras.saving.load_model(run_dir / stage / "model.keras", compile=False)
        folder = run_dir / "pn_test" / "data" / "bounding_box_train"
        recs = images if stage == "A" else [type(r)(str(folder / f"v{i:04d}_p0.jpg"), r.pid, r.camid)
                                            for i, r in enumerate(images)]
        feats[stage] = extract_features(model, recs, (32, 16), 16, True)
    fused = feats["A"] + feats["B"]
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    nq = len(query)
    want = evaluate_retrieval(pairwise_distance(fused[:nq], fused[nq:]), [r.pid for r in query],
                              [r.pid for r in gallery], [r.camid for r in query], [r.camid for r in gallery])
    assert out["fused"]["mAP"] == pytest.approx(want["mAP"], abs=1e-6)
    assert out["fused"]["rank1"] == pytest.approx(want["cmc"][0], abs=1e-6)
    assert out["fused"]["mAP"] != pytest.approx(out["A"]["mAP"], abs=1e-6)


def test_normalise_fused_false_ranks_the_fused_vectors_unnormalised(tmp_path, roots, trained,
                                                                     monkeypatch):
    """PN-GAN: the element-wise max of the 9 vectors is ranked by Euclidean distance as it is."""
    from keras_reid.stages.evaluate import fusion as evaluate_fusion

    ranked = []
    original = evaluate_fusion.score

    def score(qf, gf, *args, **kwargs):
        ranked.append((np.asarray(qf), np.asarray(gf)))
        return original(qf, gf, *args, **kwargs)

    monkeypatch.setattr(evaluate_fusion, "score", score)
    rec = _recipe(tmp_path, roots, "stages.evaluate.fusion.normalise_fused=false",
                  "stages.evaluate.models=[A]")
    query, gallery, train = _query_gallery(rec)
    run_dir = _new_run(trained, tmp_path)
    _write_view(rec, run_dir, "pn_test", query + gallery, train)
    out = runner.run(rec, run_dir, echo=lambda s: None, only=["evaluate"])["evaluate"]["models"]
    assert out["fused"]["fusion"]["normalise_fused"] is False
    assert len(ranked) == 2  # fused and B_normalised
    norms = np.linalg.norm(np.concatenate(ranked[0]), axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)  # the max of unit vectors, not brought back to 1


def test_models_of_different_sizes_fuse_by_concat_only(tmp_path, roots, trained, spy):
    over = ("stages.evaluate.fusion.normalised=C", "stages.evaluate.models=[A]")
    rec = _recipe(tmp_path, roots, *over)
    query, gallery, train = _query_gallery(rec)
    run_dir = _new_run(trained, tmp_path)
    _write_view(rec, run_dir, "pn_test", query + gallery, train)
    with pytest.raises(UserError, match="fusion.method max needs vectors of one size, but 'A' gives 16 "
                                        "and 'C' 8; use method: concat"):
        runner.run(rec, run_dir, echo=lambda s: None, only=["evaluate"])
    assert spy == []  # refused before embedding anything
    rec = _recipe(tmp_path, roots, *over, "stages.evaluate.fusion.method=concat")
    out = runner.run(rec, run_dir, echo=lambda s: None, only=["evaluate"])["evaluate"]["models"]
    assert set(out) == {"A", "fused", "B_normalised"}
    assert out["fused"]["fusion"]["method"] == "concat" and 0.0 <= out["fused"]["mAP"] <= 1.0
    assert out["fused"]["versions"] == 2 * (len(query) + len(gallery))


def test_transfer_model_trained_on_one_dataset_evaluated_on_another(tmp_path, roots, trained):
    """No fine-tuning: A (trained on 'synth') ranks the query/gallery images of 'other'."""
    rec = _recipe(tmp_path, roots, "stages.evaluate.dataset=other", "stages.evaluate.models=[A]",
                  "stages.evaluate.fusion=null")
    run_dir = _new_run(trained, tmp_path)
    out = runner.run(rec, run_dir, echo=lambda s: None, only=["evaluate"])["evaluate"]["models"]
    from keras_reid.data.records import JUNK_PID
    from keras_reid.registry import REGISTRY

    other = REGISTRY.create("dataset", rec.model.datasets["other"].model_dump()).load()
    synth = REGISTRY.create("dataset", rec.model.datasets["synth"].model_dump()).load()
    n_other = len([r for r in other["query"] if r.pid != JUNK_PID])
    n_synth = len([r for r in synth["query"] if r.pid != JUNK_PID])
    assert n_other != n_synth
    assert out["A"]["valid_queries"] + out["A"]["invalid_queries"] == n_other
    assert 0.0 <= out["A"]["mAP"] <= 1.0
    assert rec.stage_configs["A"].dataset == "synth"


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("override, key, message", [
    ("stages.evaluate.fusion.real=pn_test", "fusion.real", "augment stage, expected a train_reid"),
    ("stages.evaluate.fusion.normalised=gan", "fusion.normalised",
     "train_generator stage, expected a train_reid"),
    ("stages.evaluate.fusion.views=[A]", r"fusion.views\[0\]", "train_reid stage, expected an augment"),
    ("stages.evaluate.fusion.views=[]", "fusion.views", "empty: list the augment"),
    ("stages.evaluate.fusion.views=[nowhere]", r"fusion.views\[0\]", "'nowhere' is not a name under stages"),
    ("stages.evaluate.fusion.name=B", "fusion.name", "already the name of an evaluated model"),
    ("stages.evaluate.fusion.normalised_name=fused", "fusion.normalised_name", "already a model name"),
    ("stages.evaluate.fusion.method=min", "fusion.method", "one of 'max', 'mean' or 'concat'"),
    ("stages.evaluate.fusion.poses=[]", "fusion.poses", "non-empty list of distinct pose indices"),
    ("stages.evaluate.fusion.poses=[0,0]", "fusion.poses", "distinct"),
    ("stages.evaluate.fusion.pose=[0]", "fusion.pose", "did you mean 'poses'"),
])
def test_bad_fusion_config_is_one_clear_error(tmp_path, roots, override, key, message):
    with pytest.raises(RecipeError, match=f"stages.evaluate.{key}: .*{message}") as exc:
        _recipe(tmp_path, roots, override)
    assert "\n" not in str(exc.value)


def test_views_that_hold_no_version_of_the_test_images_fail_clearly(tmp_path, roots, trained, spy):
    """Each problem is one UserError raised before any image is embedded."""
    rec = _recipe(tmp_path, roots)
    query, gallery, train = _query_gallery(rec)
    run_dir = _new_run(trained, tmp_path)
    with pytest.raises(UserError, match="reads stage 'pn_test', which has not completed"):
        runner.run(rec, run_dir, echo=lambda s: None, only=["evaluate"])
    _write_view(rec, run_dir, "pn_test", train[:3], train)  # versions of training images only
    with pytest.raises(UserError, match="none of the 7 kept images .* run those augment stages over the "
                                        "query and gallery"):
        runner.run(rec, run_dir, echo=lambda s: None, only=["evaluate"])
    rec = _recipe(tmp_path, roots, "stages.evaluate.fusion.poses=[0,5]")
    shutil.rmtree(run_dir / "pn_test")
    _write_view(rec, run_dir, "pn_test", query + gallery, train)
    with pytest.raises(UserError, match=r"pose 5 of fusion.poses occurs in no manifest row; poses "
                                        r"present: \[0, 1\]"):
        runner.run(rec, run_dir, echo=lambda s: None, only=["evaluate"])
    assert spy == []
