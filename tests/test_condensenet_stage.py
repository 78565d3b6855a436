"""A CondenseNet trained by train_reid is evaluated by a fresh process (its layers load)."""
import json
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
