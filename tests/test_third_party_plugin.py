"""A throwaway third-party plugin package, found through its own entry-point metadata,
used by a recipe that trains and evaluates with it end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_reid import testing

PLUGIN = '''
from pydantic import BaseModel, ConfigDict
from keras_reid.registry import register


class MiniNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 8


@register("backbone", "mininet", config=MiniNetConfig)
class MiniNet:
    """A third-party test backbone."""

    def __init__(self, config):
        self.config = config

    def build(self, input_shape, num_classes):
        import keras
        x = inp = keras.Input(input_shape)
        x = keras.layers.Rescaling(1 / 255.0)(x)
        x = keras.layers.Conv2D(self.config.width, 3, strides=2, activation="relu")(x)
        x = keras.layers.Conv2D(self.config.width, 3, strides=2, activation="relu")(x)
        emb = keras.layers.GlobalAveragePooling2D()(x)
        logits = keras.layers.Dense(num_classes)(emb)
        return keras.Model(inp, {"embedding": emb, "features": emb, "logits": logits})
'''


def make_plugin_package(root: Path) -> Path:
    """A package plus a .dist-info with entry_points.txt, importable from ``root``."""
    pkg = root / "acme_reid_plugins"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(PLUGIN)
    dist = root / "acme_reid_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-reid-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[keras_reid.plugins]\nacme = acme_reid_plugins.nets\n")
    (dist / "top_level.txt").write_text("acme_reid_plugins\n")
    return root


def run_cli(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "keras_reid.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_third_party_backbone_in_a_recipe(tmp_path, synthetic_data):
    site = make_plugin_package(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    listed = run_cli(["plugins", "backbone"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(l for l in listed.stdout.splitlines() if "mininet" in l)
    assert "acme-reid-plugins" in line and "A third-party test backbone." in line

    data = synthetic_data(ids=8, cameras=2, size=(32, 16), seed=1, images_per_id_camera=4)
    recipe = testing.write_recipe(
        tmp_path / "r.yaml", name="acme", datasets={"synth": data.spec},
        stages={"train": {"type": "train_reid", "dataset": "synth", "image_size": [32, 16],
                          "backbone": {"type": "mininet", "width": 8}, "loss": {"type": "softmax"},
                          "batch_size": 8, "instances_per_id": 2, "epochs": 1, "verbose": 0},
                "evaluate": {"type": "evaluate", "dataset": "synth", "models": ["train"],
                             "projector_samples": 10, "ranked_lists": 2}})
    out = run_cli(["run", str(recipe), "--run-dir", str(tmp_path / "run")], env, tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["models"]["train"]["mAP"] <= 1.0

    bad = run_cli(["validate", str(recipe), "--set", "stages.train.backbone.widht=3"], env, tmp_path)
    assert bad.returncode == 2
    assert "did you mean 'width'" in bad.stderr and "Traceback" not in bad.stderr
