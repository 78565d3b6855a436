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
