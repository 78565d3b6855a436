"""Market-1501 multi-query on PN-GAN's fused vectors (issue 12): each query's fused vector (model
A on the image + model B on its pose-normalised versions) pooled, mean or max, with the fused
vectors of the gt_bbox/ images of its person in its camera.

On a tiny fabricated Market-style folder (synthetic images, a gt_bbox/ folder holding the query
images and the test images of each query's person in its camera, as Market's hand-drawn boxes
do). Models A and B are untrained ``tiny`` backbones saved the way train_reid saves them, the
versions are written in an augment stage's layout, so nothing is trained; the figures are
recomputed here from the saved models."""
import json
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_reid import io, runner
from keras_reid.stages.base import COMPLETE_MARKER
from keras_reid.testing import build_recipe

def _recipe(path, root, pooling: str, normalise_fused: bool):
    """A tiny PN-GAN-style recipe: a pix2pix generator and its versions (never trained here:
    marked complete below), models A and B, an evaluation fusing them with multi-query."""
    reid = {"type": "train_reid", "dataset": "m", "image_size": [32, 16], "epochs": 1, "verbose": 0,
            "backbone": {"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 16}}
    return build_recipe(
        path, name="fused_mq",
        datasets={"m": {"type": "market1501", "root": root}},
        stages={"gan": {"type": "train_generator", "dataset": "m", "source_camera": 1,
                        "target_camera": 2, "image_size": [32, 16], "epochs": 1, "verbose": 0,
                        "generator": {"type": "pix2pix", "variant": "model1", "filters": 4,
                                      "max_filters": 8}},
                "pn_test": {"type": "augment", "generator": "gan"},
                "A": reid, "B": reid,
                "evaluate": {"type": "evaluate", "dataset": "m", "models": ["A"],
                             "ranked_lists": 0, "projector_samples": 0, "multi_query": pooling,
                             "fusion": {"real": "A", "normalised": "B", "views": ["pn_test"],
                                        "normalised_name": "B_normalised",
                                        "normalise_fused": normalise_fused}}})


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """A Market-1501 folder with gt_bbox/ (the query images and every test image of the query's
    person in the query's camera)."""
    from keras_reid.data.synthetic import synthesize
    from keras_reid_plugins.datasets.market import read_market_layout

    root = tmp_path_factory.mktemp("fused_mq") / "market"
    synthesize(root, ids=8, cameras=3, size=(32, 16), seed=3, images_per_id_camera=3)
    (root / "gt_bbox").mkdir()
    plain = read_market_layout(root)
    keys = {(q.pid, q.camid) for q in plain["query"]}
    for r in plain["query"] + [g for g in plain["gallery"] if (g.pid, g.camid) in keys]:
        shutil.copy(r.path, root / "gt_bbox" / Path(r.path).name)
    return root


def _mark_done(rec, run_dir, name, summary):
    step = next(s for s in runner.plan(rec, run_dir) if s.name == name)
    (run_dir / name).mkdir(parents=True, exist_ok=True)
    io.write_json(run_dir / name / COMPLETE_MARKER, {
        "hash": step.hash, "stage": name, "type": step.type, "completion_id": uuid.uuid4().hex,
        "inputs": step.inputs, "summary": summary})


def _save_model(run_dir, name, seed):
    import keras

    from keras_reid.registry import REGISTRY

    keras.utils.set_random_seed(seed)
    net = REGISTRY.create("backbone", {"type": "tiny", "width": 8, "blocks": 2,
                                       "embedding_dim": 16}).build((32, 16, 3), 4)
    model = keras.Model(net.inputs, net.output["features"])
    (run_dir / name).mkdir(parents=True)
    model.save(run_dir / name / "model.keras")
    return model


def _write_versions(run_dir, images, skip):
    """pn_test's output: two versions (a noise picture each) of every image not in ``skip``."""
    folder = run_dir / "pn_test" / "data" / "bounding_box_train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, paths = [], []
    for i, r in enumerate(images):
        if i in skip:
            continue
        for pose in (0, 1):
            file = f"v{i:04d}_p{pose}.jpg"
            cv2.imwrite(str(folder / file), rng.integers(0, 256, (32, 16, 3), dtype=np.uint8))
            rows.append({"file": file, "kept": True, "source": str(r.path), "pose_index": pose,
                         "pid": 0, "camera": 1, "scores": {}})
            paths.append((i, str(folder / file)))
    (run_dir / "pn_test" / "manifest-0-of-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def _pool(qf, extra, q_idx, method, normalise):
    out = []
    for i in range(len(qf)):
        vs = np.vstack([qf[i:i + 1], extra[q_idx == i]])
        v = vs.max(0) if method == "max" else vs.mean(0)
        out.append(v / np.linalg.norm(v) if normalise else v)
    return np.array(out, np.float32)


def _fuse(vectors, normalise):
    v = np.max(np.vstack(vectors), axis=0)
    return v / np.linalg.norm(v) if normalise else v


@pytest.mark.parametrize("pooling,normalise_fused", [("max", True), ("mean", False)])
def test_multi_query_pools_the_fused_vectors(tmp_path, market, pooling, normalise_fused):
    from keras_reid.data.records import JUNK_PID
    from keras_reid.inference import extract_features
    from keras_reid.metrics import evaluate_retrieval, pairwise_distance
    from keras_reid_plugins.datasets.market import read_market_layout

    rec = _recipe(tmp_path / "r.yaml", market, pooling, normalise_fused)
    run_dir = tmp_path / "run"
    splits = read_market_layout(market)
    query = [r for r in splits["query"] if r.pid != JUNK_PID]
    gallery = [r for r in splits["gallery"] if r.pid != JUNK_PID]
    gt = splits["gt_bbox"]
    # the multi-query images of each query: its person, its camera, not its own file
    pairs = [(i, j) for i, q in enumerate(query) for j, m in enumerate(gt)
             if (m.pid, m.camid) == (q.pid, q.camid) and Path(m.path).name != Path(q.path).name]
    used = sorted({j for _, j in pairs})
    mq = [gt[j] for j in used]
    images = query + gallery + mq
    skip = {0, len(query) + len(gallery)}           # a query and a multi-query image without versions
    models = {name: _save_model(run_dir, name, seed) for name, seed in (("A", 1), ("B", 2))}
    versions = _write_versions(run_dir, images, skip)
    _mark_done(rec, run_dir, "gan", {})
    _mark_done(rec, run_dir, "pn_test", {"data": "pn_test/data"})
    for name in ("A", "B"):
        _mark_done(rec, run_dir, name, {"model": f"{name}/model.keras", "image_size": [32, 16]})
    lines = []
    out = runner.run(rec, run_dir, echo=lines.append, only=["evaluate"])["evaluate"]["models"]

    def feats(model, recs):
        return extract_features(model, recs, (32, 16), 64, True, verbose=0)

    a = feats(models["A"], images)
    b_real = feats(models["B"], images)
    vb = feats(models["B"], [type("R", (), {"path": p})() for _, p in versions])
    owners = np.array([i for i, _ in versions])
    fused = np.array([_fuse([a[i]] + list(vb[owners == i]), normalise_fused) for i in range(len(images))])
    only = np.array([_fuse(list(vb[owners == i]) if (owners == i).any() else [b_real[i]], normalise_fused)
                     for i in range(len(images))])
    nq, ng = len(query), len(gallery)
    index = {j: k for k, j in enumerate(used)}
    q_idx = np.array([i for i, _ in pairs])
    ids = ([r.pid for r in query], [r.pid for r in gallery], [r.camid for r in query],
           [r.camid for r in gallery])
    for name, vectors in (("fused", fused), ("B_normalised", only)):
        extra = vectors[nq + ng:][[index[j] for _, j in pairs]]
        pooled = _pool(vectors[:nq], extra, q_idx, pooling, normalise_fused)
        want = evaluate_retrieval(pairwise_distance(pooled, vectors[nq:nq + ng]), *ids, max_rank=50)
        plain = evaluate_retrieval(pairwise_distance(vectors[:nq], vectors[nq:nq + ng]), *ids, max_rank=50)
        got = out[name]["multi_query"]
        assert got["pooling"] == pooling and got["pooled_images"] == len(pairs) > 0
        assert got["mAP"] == pytest.approx(want["mAP"], abs=1e-5), name
        assert got["rank1"] == pytest.approx(want["cmc"][0], abs=1e-6), name
        assert out[name]["mAP"] == pytest.approx(plain["mAP"], abs=1e-5), name   # single query unchanged
    # the pooled vectors are not the single-query ones: on this data pooling changes the ranking
    assert out["fused"]["multi_query"]["mAP"] != pytest.approx(out["fused"]["mAP"], abs=1e-6)
    saved = json.loads((run_dir / "metrics.json").read_text())["models"]
    assert saved["fused"]["multi_query"] == out["fused"]["multi_query"]
