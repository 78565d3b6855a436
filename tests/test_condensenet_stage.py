"""A CondenseNet trained by train_reid is evaluated by a fresh process (its layers load)."""
import json

import numpy as np
import pytest
import subprocess
import sys

from keras_reid import pipeline
from keras_reid.recipe import load_recipe

RECIPE = """
name: condense
seed: 0
strategy: {{type: one_device}}
jit_compile: false
datasets:
  synth: {{type: synthetic, root: {root}, ids: 12, cameras: 3, size: 64x32, seed: 1, images_per_id_camera: 2}}
stages:
  train:
    type: train_reid
    dataset: synth
    image_size: [32, 16]
    backbone: {{type: condensenet, preset: small, condense_steps: 6}}
    batch_size: 8
    instances_per_id: 2
    epochs: 2
    bn_recalibration_batches: 2
    verbose: 0
  evaluate:
    type: evaluate
    dataset: synth
    models: [train]
    ranked_lists: 0
    projector_samples: 0
"""


def test_condensenet_model_trains_and_a_new_process_evaluates_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path / "data"))
    run_dir = tmp_path / "run"
    pipeline.run(load_recipe(recipe), run_dir, only=["train"], echo=lambda *_: None)
    res = subprocess.run([sys.executable, "-m", "keras_reid.cli", "run", str(recipe), "--run-dir",
                          str(run_dir), "--stage", "evaluate"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["models"]["train"]["mAP"] <= 1.0


AUTO = """
name: condense_auto
seed: 0
strategy: {strategy}
jit_compile: {jit}
datasets:
  synth: {{type: synthetic, root: {root}, ids: 12, cameras: 3, size: 64x32, seed: 1, images_per_id_camera: 2}}
stages:
  train:
    type: train_reid
    dataset: synth
    image_size: [32, 16]
    backbone: {{type: condensenet, preset: small}}
    batch_size: 8
    instances_per_id: 2
    epochs: 2
    bn_recalibration_batches: 0
    verbose: 0
"""


@pytest.mark.parametrize("strategy,jit", [("{type: one_device}", "false"),
                                          ("{type: mirrored, devices: ['/cpu:0', '/cpu:1']}", "false"),
                                          ("{type: one_device}", "true")])
def test_train_reid_fills_in_the_condensation_schedule_and_it_runs(tmp_path, strategy, jit):
    """Without condense_steps the schedule spans the run: every learned layer ends condensed
    C-1 = 3 times and keeps 1/C of its inputs per group, on one device, on two replicas
    (the step counter must advance once per global step, not once per replica) and with the
    train step compiled by XLA (the condensation runs inside the compiled step)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(AUTO.format(root=tmp_path / "data", strategy=strategy, jit=jit))
    lines = []
    out = pipeline.run(load_recipe(recipe), tmp_path / "run", echo=lines.append)["train"]
    assert any("condensation(s) over the first" in str(x) for x in lines), lines
    from keras_reid_plugins.backbones.condensenet import load_model
    from keras_reid_plugins.backbones._condensenet_model import LearnedGroupConv, learned_layers

    model = load_model(str(tmp_path / "run" / out["model"]))
    convs = [l for l in learned_layers(model) if isinstance(l, LearnedGroupConv)]
    assert convs
    for layer in convs:
        assert int(np.asarray(layer.condensed)) == 3, layer.name
        mask = np.asarray(layer.mask)
        kept = mask.sum() / mask.size
        assert abs(kept - 0.25) < 0.05, (layer.name, kept)


DEPLOY = """
name: condense_deploy
seed: 0
strategy: {{type: one_device}}
jit_compile: false
datasets:
  synth: {{type: synthetic, root: {root}, ids: 12, cameras: 3, size: 64x32, seed: 1, images_per_id_camera: 2}}
stages:
  r:
    type: train_reid
    dataset: synth
    image_size: [32, 16]
    backbone: {{type: condensenet, preset: small}}
    batch_size: 8
    instances_per_id: 2
    epochs: 2
    bn_recalibration_batches: 2
    verbose: 0
  evaluate:
    type: evaluate
    dataset: synth
    models: [r]
    latency_runs: 5
    ranked_lists: 2
    projector_samples: 0
"""


def test_condensenet_is_converted_after_training_and_evaluated_beside_the_trained_model(tmp_path):
    """train_reid saves the deploy form (model_converted.keras, same features within 1e-4);
    evaluate ranks it as 'r (converted)' with the same metrics and
    reports both forms' parameters, bytes on disk and latency; the closing lines, the printed
    table and the report show them; exporting the converted file does not convert it again."""
    from keras_reid import run_summary
    from keras_reid.export import compact_model
    from keras_reid.inference import load_model, read_preprocessing
    from keras_reid.report import build_report

    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(DEPLOY.format(root=tmp_path / "data"))
    run_dir = tmp_path / "run"
    lines = []
    recipe = load_recipe(recipe_path)
    out = pipeline.run(recipe, run_dir, echo=lines.append)
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
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(DEPLOY.format(root=tmp_path / "data").replace(
        "backbone: {type: condensenet, preset: small}",
        "backbone: {type: tiny, width: 8, blocks: 2}\n    convert: true"))
    with pytest.raises(RecipeError, match=r"stages\.r\.convert: backbone 'tiny' has no deploy form"):
        load_recipe(recipe_path)


CLOSED = """
name: condense_closed
seed: 0
strategy: {{type: one_device}}
jit_compile: false
datasets:
  lima: {{type: synthetic_closed_set, root: {root}, ids: 3, sessions: 3, size: 64x32, seed: 2,
          images_per_session: 6, unknown_per_session: 6, test_session: 3}}
stages:
  r:
    type: train_reid
    dataset: lima
    image_size: [32, 16]
    backbone: {{type: condensenet, preset: small}}
    loss: {{type: softmax}}
    sampler: random
    batch_size: 8
    epochs: 2
    bn_recalibration_batches: 0
    verbose: 0
  evaluate: {{type: evaluate, dataset: lima, models: [r], latency_runs: 3}}
"""


def test_closed_set_condensenet_deploys_its_converted_classifier(tmp_path):
    """On closed-set (LIMA-style) data the deployed model is the classifier: train_reid converts
    it too (classifier_converted.keras) and evaluate reports 'r (converted)' with the same
    prec@1/mAP columns, both classifiers' size and latency."""
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(CLOSED.format(root=tmp_path / "lima"))
    run_dir = tmp_path / "run"
    lines = []
    out = pipeline.run(load_recipe(recipe_path), run_dir, echo=lines.append)
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
