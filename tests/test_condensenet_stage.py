"""CondenseNet in train_reid and evaluate: the condensation schedule filled in from the run length
(one device, two replicas, XLA), a fresh process evaluating the trained model (its layers load),
and the deploy form (converted model) evaluated beside it, for retrieval and closed-set data.

One retrieval run (train + evaluate) is shared by the tests that read it."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keras_reid import runner, testing

REID = {"type": "train_reid", "dataset": "synth", "image_size": [32, 16],
        "backbone": {"type": "condensenet", "preset": "small"}, "batch_size": 8, "instances_per_id": 2,
        "epochs": 2, "bn_recalibration_batches": 2, "verbose": 0}
EVALUATE = {"type": "evaluate", "dataset": "synth", "models": ["r"], "latency_runs": 5, "ranked_lists": 2,
            "projector_samples": 0}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, synthetic_data):
    """``(recipe, run folder, stage summaries, printed lines)`` of one CondenseNet run (no
    condense_steps: the schedule spans the run) on one device, evaluated with its deploy form."""
    tmp = tmp_path_factory.mktemp("condense")
    recipe = testing.build_recipe(tmp / "r.yaml", name="condense_deploy", stages={"r": REID, "evaluate": EVALUATE},
                                  datasets={"synth": synthetic_data().spec})
    lines = []
    out = runner.run(recipe, tmp / "run", echo=lines.append)
    return recipe, tmp / "run", out, lines


def test_condensenet_model_trains_and_a_new_process_evaluates_it(deployed, tmp_path):
    recipe, trained, _, _ = deployed
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "r", run_dir / "r")
    res = subprocess.run([sys.executable, "-m", "keras_reid.cli", "run", recipe.source, "--run-dir",
                          str(run_dir), "--stage", "evaluate"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["models"]["r"]["mAP"] <= 1.0


def _assert_condensed(lines, path):
    """Every learned layer of the model at ``path`` condensed C-1 = 3 times, keeping 1/C of its
    inputs per group, and the stage said so."""
    assert any("condensation(s) over the first" in str(x) for x in lines), lines
    from keras_reid_plugins.backbones.condensenet import load_model
    from keras_reid_plugins.backbones._condensenet_model import LearnedGroupConv, learned_layers

    model = load_model(str(path))
    convs = [l for l in learned_layers(model) if isinstance(l, LearnedGroupConv)]
    assert convs
    for layer in convs:
        assert int(np.asarray(layer.condensed)) == 3, layer.name
        mask = np.asarray(layer.mask)
        kept = mask.sum() / mask.size
        assert abs(kept - 0.25) < 0.05, (layer.name, kept)


def test_train_reid_fills_in_the_condensation_schedule_and_it_runs(deployed):
    """Without condense_steps the schedule spans the run (here: one device, no XLA)."""
    _, run_dir, out, lines = deployed
    _assert_condensed(lines, run_dir / out["r"]["model"])


@pytest.mark.parametrize("strategy,jit", [({"type": "mirrored", "devices": ["/cpu:0", "/cpu:1"]}, False),
                                          ({"type": "one_device"}, True)])
def test_the_condensation_schedule_runs_on_two_replicas_and_under_xla(tmp_path, synthetic_data, strategy, jit):
    """The same on two replicas (the step counter must advance once per global step, not once
    per replica) and with the train step compiled by XLA (the condensation runs inside the
    compiled step)."""
    recipe = testing.build_recipe(tmp_path, name="condense_auto", strategy=strategy, jit_compile=jit,
                                  datasets={"synth": synthetic_data().spec},
                                  stages={"r": dict(REID, bn_recalibration_batches=0)})
    lines = []
    out = runner.run(recipe, tmp_path / "run", echo=lines.append)["r"]
    _assert_condensed(lines, tmp_path / "run" / out["model"])


def test_condensenet_is_converted_after_training_and_evaluated_beside_the_trained_model(deployed):
    """train_reid saves the deploy form (model_converted.keras, same features within 1e-4);
    evaluate ranks it as 'r (converted)' with the same metrics and
    reports both forms' parameters, bytes on disk and latency; the closing lines, the printed
    table and the report show them; exporting the converted file does not convert it again."""
    from keras_reid import run_summary
    from keras_reid.export import compact_model
    from keras_reid.inference import load_model, read_preprocessing
    from keras_reid.report import build_report

    recipe, run_dir, out, lines = deployed
    conv = out["r"]["converted"]
    path = run_dir / conv["model"]
    assert path.name == "model_converted.keras" and path.is_file()
    assert 0.0 <= conv["max_abs_diff"] <= 1e-4 and conv["parity_images"] > 0
    assert read_preprocessing(path).converted and not read_preprocessing(run_dir / "r/model.keras").converted

    models = json.loads((run_dir / "metrics.json").read_text())["models"]
    assert list(models) == ["r", "r (converted)"]
    trained, converted = models["r"], models["r (converted)"]
    metric_keys = {"mAP", "mINP", "rank1", "rank5", "valid_queries"}
    assert metric_keys <= set(trained) and metric_keys <= set(converted)
    assert converted["converted_from"] == "r" and converted["feature_max_abs_diff"] <= 1e-4
    for key in ("mAP", "rank1", "rank5"):
        assert abs(trained[key] - converted[key]) <= 0.02, key
    for entry, file in ((trained, run_dir / "r/model.keras"), (converted, path)):
        d = entry["deploy"]
        assert d["bytes"] == file.stat().st_size and d["params"] > 0
        assert d["ms_per_image"] > 0 and d["ms_min"] <= d["ms_per_image"] and d["runs"] == 5
    assert converted["deploy"]["params"] == conv["params"]
    assert (run_dir / "evaluate" / "cmc_r (converted).npy").is_file()

    printed = "\n".join(map(str, lines))
    assert "size and latency (batch 1, median of 5 calls):" in printed
    assert "x as fast" in printed and "x the parameters" in printed
    closing = "\n".join(run_summary.closing_lines(recipe, run_dir, out))
    assert "r (converted)" in closing and "size and latency" in closing and str(path) in closing
    html = build_report(run_dir)
    assert "Size and latency" in html and "deploy form of r" in html
    assert f"data-model='r (converted)' data-metric='ms_per_image'" in html

    extractor = load_model(path)
    assert compact_model(extractor)[1] is None                    # already the deploy form
    assert load_model(run_dir / "r").model.count_params() == conv["params_trained"]


def test_conversion_parity_is_checked_and_convert_needs_a_deploy_form(tmp_path):
    """A converted model whose outputs differ by more than 1e-4 fails with one line naming the
    stage; convert: true on a backbone without a deploy form is a recipe error."""
    import keras

    from keras_reid.deploy import ConversionError, check_parity
    from keras_reid.errors import RecipeError

    inp = keras.Input((8, 4, 3))
    a = keras.Model(inp, keras.layers.Dense(3, name="d")(keras.layers.Flatten()(inp)))
    b = keras.models.clone_model(a)
    b.set_weights(a.get_weights())
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 4, 3)).astype(np.float32)
    assert check_parity(a, b, x, "stage 'r'") <= 1e-6
    w = b.get_weights()
    w[1] = w[1] + 1e-3
    b.set_weights(w)
    with pytest.raises(ConversionError, match=r"^stage 'r': the converted model's outputs differ .* convert: false"):
        check_parity(a, b, x, "stage 'r'")
    with pytest.raises(RecipeError, match=r"stages\.r\.convert: backbone 'tiny' has no deploy form"):
        testing.build_recipe(tmp_path, name="condense_deploy", datasets={"synth": testing.SyntheticData(
            tmp_path / "data", testing.SYNTHETIC_DEFAULTS).spec}, stages={
            "r": dict(REID, backbone={"type": "tiny", "width": 8, "blocks": 2}, convert=True), "evaluate": EVALUATE})


def test_closed_set_condensenet_deploys_its_converted_classifier(tmp_path):
    """On closed-set (LIMA-style) data the deployed model is the classifier: train_reid converts
    it too (classifier_converted.keras) and evaluate reports 'r (converted)' with the same
    prec@1/mAP columns, both classifiers' size and latency."""
    recipe = testing.build_recipe(
        tmp_path, name="condense_closed",
        datasets={"lima": {"type": "synthetic_closed_set", "root": tmp_path / "lima", "ids": 3, "sessions": 3,
                           "size": "64x32", "seed": 2, "images_per_session": 6, "unknown_per_session": 6,
                           "test_session": 3}},
        stages={"r": {"type": "train_reid", "dataset": "lima", "image_size": [32, 16],
                      "backbone": {"type": "condensenet", "preset": "small"}, "loss": {"type": "softmax"},
                      "sampler": "random", "batch_size": 8, "epochs": 2, "bn_recalibration_batches": 0,
                      "verbose": 0},
                "evaluate": {"type": "evaluate", "dataset": "lima", "models": ["r"], "latency_runs": 3}})
    run_dir = tmp_path / "run"
    lines = []
    out = runner.run(recipe, run_dir, echo=lines.append)
    conv = out["r"]["converted"]
    assert (run_dir / conv["classifier"]).name == "classifier_converted.keras"
    assert (run_dir / conv["model"]).is_file() and conv["max_abs_diff"] <= 1e-4
    models = json.loads((run_dir / "metrics.json").read_text())["models"]
    assert list(models) == ["r", "r (converted)"]
    for key in ("prec1_all", "prec1_pid", "mAP_all", "mAP_pid"):
        assert models["r (converted)"][key] == pytest.approx(models["r"][key], abs=0.02), key
    for name, file in (("r", "r/classifier.keras"), ("r (converted)", conv["classifier"])):
        d = models[name]["deploy"]
        assert d["bytes"] == (run_dir / file).stat().st_size and d["runs"] == 3 and d["ms_per_image"] > 0
    assert (run_dir / "evaluate" / "confusion_r (converted).json").is_file()
    assert any("size and latency" in str(x) for x in lines)
