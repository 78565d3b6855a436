"""Using a trained model outside its run: ``keras_reid.load_model`` and the extract, search,
evaluate MODEL and export commands, on one tiny run trained once for the module (a ``tiny``
model on the synthetic dataset, evaluated by the pipeline's evaluate stage), and a condensed,
untrained CondenseNet saved the way train_reid saves one."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from keras_reid import runner, testing
from keras_reid.cli import main

STAGES = {
    "train": {"type": "train_reid", "dataset": "synth", "image_size": [32, 16],
              "backbone": {"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 16},
              "batch_size": 8, "instances_per_id": 2, "epochs": 2, "bn_recalibration_batches": 2,
              "verbose": 0},
    "evaluate": {"type": "evaluate", "dataset": "synth", "models": ["train"], "rerank": True,
                 "ranked_lists": 0, "projector_samples": 0},
}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_data):
    """The trained run, the dataset root and the features the evaluate stage extracted
    (``{path: feature}``, captured from the stage's own extraction calls)."""
    from keras_reid.stages.evaluate import common as evaluate_common

    tmp = tmp_path_factory.mktemp("infer")
    data = synthetic_data()  # ids 12, cameras 3, 64x32, seed 1, 2 images per identity and camera
    recipe = testing.build_recipe(tmp / "r.yaml", name="infer", datasets={"synth": data.spec},
                                  stages=STAGES)
    seen = {}
    original = evaluate_common.extract_features

    def spy(model, records, *args, **kwargs):
        feats = original(model, records, *args, **kwargs)
        seen.update({str(r.path): f for r, f in zip(records, feats)})
        return feats

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate_common, "extract_features", spy)
        runner.run(recipe, tmp / "run", echo=lambda *_: None)
    return {"dir": tmp / "run", "root": data.root, "evaluated": seen}


def test_train_reid_records_the_preprocessing_beside_the_model(run):
    import keras_reid

    record = json.loads((run["dir"] / "train" / "model.preprocessing.json").read_text())
    assert record["image_size"] == [32, 16] and record["input_range"] == [0.0, 255.0]
    assert record["flip"] is True and record["l2_normalise"] is True and record["feature_dim"] == 16
    assert record["backbone"]["type"] == "tiny" and record["stage"] == "train"
    extractor = keras_reid.load_model(run["dir"], model="train")
    assert extractor.image_size == (32, 16) and extractor.feature_dim == 16
    assert extractor.preprocessing.source.endswith("model.preprocessing.json")


def test_extract_equals_the_evaluate_stage_features(run, tmp_path):
    out = tmp_path / "feats.npz"
    res = invoke("extract", run["dir"] / "train", run["root"] / "query",
                 run["root"] / "bounding_box_test", "--out", out)
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "features" in res.output
    with np.load(out) as data:
        feats = dict(zip([str(p) for p in data["paths"]], data["features"]))
        pids, cams, paths = data["pids"], data["cameras"], [str(p) for p in data["paths"]]
    evaluated = run["evaluated"]
    assert len(evaluated) > 20 and set(evaluated) <= set(feats)
    for path, f in evaluated.items():
        np.testing.assert_allclose(feats[path], f, atol=1e-6)
    name = Path(paths[0]).name            # e.g. 0007_c2s1_000012_01.jpg
    assert (pids[0], cams[0]) == (int(name.split("_")[0]), int(name.split("_")[1][1]))


def test_load_model_takes_a_file_a_stage_folder_or_a_run_and_arrays_or_paths(run):
    import tensorflow as tf

    import keras_reid

    stage = run["dir"] / "train"
    paths = sorted(str(p) for p in (run["root"] / "query").iterdir())[:5]
    by_file = keras_reid.load_model(stage / "model.keras")(paths)
    by_stage = keras_reid.load_model(stage)(paths, batch_size=2)
    by_run = keras_reid.load_model(run["dir"], model="train")
    np.testing.assert_allclose(by_stage, by_file, atol=1e-6)
    # uint8 arrays at the files' own size (64x32) are resized as the files are
    arrays = np.stack([tf.io.decode_image(tf.io.read_file(p), channels=3).numpy() for p in paths])
    assert arrays.shape[1:3] == (64, 32)
    np.testing.assert_allclose(by_run(arrays), by_file, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(by_file, axis=1), 1.0, atol=1e-5)
    assert by_file.shape == (5, 16) and by_file.dtype == np.float32


def test_search_ranks_a_query_that_is_in_the_gallery_first(run, tmp_path):
    gallery = run["root"] / "bounding_box_test"
    query = sorted(p for p in gallery.iterdir() if not p.name.startswith("-1"))[3]
    out = tmp_path / "ranked.html"
    res = invoke("search", run["dir"] / "train", "--query", query, "--gallery", gallery, "--top", 4,
                 "--out", out)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("query 1:"))
    first = lines[head + 2].split()
    assert first[0] == "1" and first[-1] == str(query) and float(first[1]) < 1e-3
    assert first[4] == "yes"                                   # same person (Market-style names)
    assert len([l for l in lines[head + 2:] if l.strip()[:1].isdigit()]) == 4
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 5 and "http" not in page
    png = tmp_path / "ranked.png"
    assert invoke("search", run["dir"] / "train", "--query", query, "--gallery", gallery,
                  "--top", 3, "--out", png).exit_code == 0
    import cv2

    assert cv2.imread(str(png)) is not None


def test_evaluate_on_a_keras_file_equals_the_pipeline_metrics(run, tmp_path):
    out = tmp_path / "m.json"
    res = invoke("evaluate", run["dir"] / "train" / "model.keras", "--dataset",
                 f"market1501:{run['root']}", "--rerank", "--json", out)
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    want = json.loads((run["dir"] / "metrics.json").read_text())["models"]["train"]
    for key in ("mAP", "mINP", "rank1", "rank5"):
        assert got["plain"][key] == pytest.approx(want[key], abs=1e-6), key
        assert got["rerank"][key] == pytest.approx(want["rerank"][key], abs=1e-6), key
    assert got["plain"]["num_valid_queries"] == want["valid_queries"]
    assert "chance" in res.output and got["chance"]["mAP"] > 0


def test_evaluate_model_single_shot_and_multi_query(run, tmp_path):
    """--single-shot: the CMC of the evaluate stage's 10 seeded single-shot draws, mAP unchanged;
    --multi-query max: each query's feature pooled by hand with its person's gt_bbox/ images
    in its camera. Without a gt_bbox/ split, or with --distmat, --multi-query is one line, exit 2."""
    import keras_reid
    from keras_reid.metrics import evaluate_retrieval, pairwise_distance
    from keras_reid.metrics.retrieval import single_shot_cmc
    from keras_reid_plugins.datasets.market import read_market_layout

    root = tmp_path / "market"
    shutil.copytree(run["root"], root)
    plain = read_market_layout(root)
    keys = {(q.pid, q.camid) for q in plain["query"]}
    (root / "gt_bbox").mkdir()
    for r in plain["query"] + [g for g in plain["gallery"] if (g.pid, g.camid) in keys]:
        shutil.copy(r.path, root / "gt_bbox" / Path(r.path).name)
    splits = read_market_layout(root)
    query, gallery, gt = splits["query"], splits["gallery"], splits["gt_bbox"]
    out = tmp_path / "m.json"
    stage = run["dir"] / "train"
    res = invoke("evaluate", stage, "--dataset", f"market1501:{root}", "--single-shot",
                 "--multi-query", "max", "--json", out)
    assert res.exit_code == 0, res.output
    assert "multi-query" in res.output and "single-shot CMC" in res.output
    got = json.loads(out.read_text())
    want = json.loads((run["dir"] / "metrics.json").read_text())["models"]["train"]
    assert got["plain"]["mAP"] == pytest.approx(want["mAP"], abs=1e-6)
    extract = keras_reid.load_model(stage)
    qf, gf, mf = (extract([r.path for r in recs]) for recs in (query, gallery, gt))
    ids = ([q.pid for q in query], [g.pid for g in gallery], [q.camid for q in query],
           [g.camid for g in gallery])
    ss = single_shot_cmc(pairwise_distance(qf, gf), *ids, max_rank=50, repeats=10, seed=0)
    assert got["plain"]["cmc_protocol"] == "single_shot" and got["plain"]["single_shot_repeats"] == 10
    np.testing.assert_allclose(got["plain"]["cmc"], ss["cmc"], atol=1e-9)
    pooled = []
    for i, q in enumerate(query):
        same = [j for j, m in enumerate(gt) if (m.pid, m.camid) == (q.pid, q.camid)
                and Path(m.path).name != Path(q.path).name]
        v = np.max(np.vstack([qf[i:i + 1], mf[same]]), axis=0)
        pooled.append(v / np.linalg.norm(v))
    d = pairwise_distance(np.array(pooled, np.float32), gf)
    mq = got["multi_query"]
    assert mq["pooling"] == "max" and mq["pooled_images"] == sum(
        1 for q in query for m in gt if (m.pid, m.camid) == (q.pid, q.camid)
        and Path(m.path).name != Path(q.path).name) > 0
    assert mq["mAP"] == pytest.approx(evaluate_retrieval(d, *ids, max_rank=50)["mAP"], abs=1e-5)
    np.testing.assert_allclose(mq["cmc"], single_shot_cmc(d, *ids, max_rank=50, repeats=10, seed=0)["cmc"],
                               atol=1e-9)
    for args, words in (
            (("evaluate", stage, "--dataset", f"market1501:{run['root']}", "--multi-query", "mean"),
             "pools the images of split 'gt_bbox', which market1501 at"),
            (("evaluate", "--distmat", tmp_path / "d.npz", "--multi-query", "max"), "a distance matrix does not have"),
            (("evaluate", stage, "--dataset", f"market1501:{root}", "--multi-query", "median"), "'median' is not one of")):
        if "--distmat" in args:
            np.savez(tmp_path / "d.npz", distmat=np.zeros((1, 1)), q_pids=[1], g_pids=[1], q_camids=[1], g_camids=[2])
        res = invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert words in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 or "Usage" in res.stderr, res.stderr


def _onnx_missing():
    from keras_reid.export import missing_onnx_packages

    return bool(missing_onnx_packages())


@pytest.mark.parametrize("fmt,name", [
    ("savedmodel", "exported"), ("tflite", "m.tflite"),
    pytest.param("onnx", "m.onnx", marks=pytest.mark.skipif(_onnx_missing(), reason="pip install "
                                                             "'keras-reid[onnx]'"))])
def test_export_features_agree_with_keras(run, tmp_path, fmt, name):
    import keras_reid
    from keras_reid.export import run_exported

    out = tmp_path / name
    res = invoke("export", run["dir"] / "train", "--format", fmt, "--out", out)
    assert res.exit_code == 0, res.output
    assert "parity: max |exported - Keras| =" in res.output
    # checked again here on real images, with the exported file's own runtime
    extractor = keras_reid.load_model(run["dir"] / "train")
    paths = sorted(str(p) for p in (run["root"] / "query").iterdir())[:6]
    from keras_reid.export import sample_batch

    images = sample_batch(extractor, paths)
    got = run_exported(out, fmt, images)
    np.testing.assert_allclose(got, extractor(paths), atol=1e-3)
    record = out / "preprocessing.json" if fmt == "savedmodel" else Path(str(out) + ".preprocessing.json")
    assert json.loads(record.read_text())["exported"]["format"] == fmt


@pytest.fixture(scope="module")
def condensed(tmp_path_factory):
    """A CondenseNet (preset small) condensed C - 1 times, saved as train_reid saves a model:
    the features-only model.keras and its preprocessing record."""
    from keras_reid.inference import Preprocessing, write_preprocessing
    from keras_reid.registry import REGISTRY
    from keras_reid.training.reid_model import ReIDModel

    spec = {"type": "condensenet", "preset": "small"}
    backbone = REGISTRY.create("backbone", spec)
    net = backbone.build((32, 16, 3), 6)
    for _ in range(backbone.config.condense_factor - 1):
        backbone.condense(net)
    path = tmp_path_factory.mktemp("condensed") / "model.keras"
    ReIDModel(net).export_inference_model(path)
    write_preprocessing(path, Preprocessing(image_size=(32, 16), backbone=spec))
    return path


def test_condensenet_exports_its_compact_form(condensed, tmp_path):
    import keras_reid
    from keras_reid.export import export_model, run_exported

    extractor = keras_reid.load_model(condensed)
    result = export_model(extractor, tmp_path / "c", "savedmodel")
    assert result.compact and "converted inference form" in result.compact and result.max_abs_diff <= 1e-3
    # what was exported is the converted form: no masked learned group convs are left
    from keras_reid.export import compact_model
    from keras_reid_plugins.backbones._condensenet_model import LearnedGroupConv

    compact, _ = compact_model(extractor)
    assert any(isinstance(layer, LearnedGroupConv) for layer in extractor.model.layers)
    assert not any(isinstance(layer, LearnedGroupConv) for layer in compact.layers)
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(run_exported(tmp_path / "c", "savedmodel", images), extractor(images),
                               atol=1e-4)


def test_export_failing_its_parity_check_writes_nothing(run, tmp_path, monkeypatch):
    from keras_reid import export

    original = export.run_exported
    monkeypatch.setattr(export, "run_exported", lambda *a: original(*a) + 0.01)
    res = invoke("export", run["dir"] / "train", "--format", "savedmodel", "--out", tmp_path / "x")
    assert res.exit_code == 1
    assert "differ from the Keras model's by 0.01" in res.stderr and "nothing was written" in res.stderr
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".tmp-*"))


def test_bad_inputs_are_one_line_errors_with_exit_code_2(run, tmp_path, monkeypatch):
    stage = run["dir"] / "train"
    (tmp_path / "empty").mkdir()
    loose = tmp_path / "loose.keras"
    shutil.copy(stage / "model.keras", loose)     # no record beside it, not in a stage folder
    for name in ("a", "b"):                          # a run folder with two models
        shutil.copytree(stage, tmp_path / "two" / name, ignore=shutil.ignore_patterns("checkpoints"))
    cases = {
        ("extract", tmp_path / "nowhere", run["root"] / "query", "--out", tmp_path / "f.npz"): "does not exist",
        ("extract", stage, tmp_path / "empty", "--out", tmp_path / "f.npz"): "no images",
        ("extract", loose, run["root"] / "query", "--out", tmp_path / "f.npz"): "no preprocessing record",
        ("search", tmp_path / "two", "--query", run["root"] / "query", "--gallery", run["root"] / "query"):
            "name one",
        ("extract", run["dir"], run["root"] / "query", "--model", "nosuch", "--out", tmp_path / "f.npz"):
            "no trained model 'nosuch'",
        ("evaluate", stage, "--dataset", f"market1501:{tmp_path / 'nowhere'}"): "does not exist",
        ("export", stage, "--format", "pt", "--out", tmp_path / "m"): "unknown format",
        ("evaluate", stage): "needs --dataset",
    }
    for args, words in cases.items():
        res = invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    from keras_reid import export

    monkeypatch.setattr(export, "missing_onnx_packages", lambda: ["tf2onnx"])
    res = invoke("export", stage, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert res.exit_code == 2 and "keras-reid[onnx]" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
