"""Preflight: a model file a stage's component needs (MediaPipe face filter, selfie masker,
pose landmarker) is checked before any stage runs, not after the GAN has trained."""
from pathlib import Path

import pytest

from keras_reid.errors import ModelFileError
from keras_reid.runner import check_model_files
from keras_reid.recipe import load_recipe
from keras_reid.registry import REGISTRY

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("recipe, stage, component", [
    ("synthetic_lima_dcgan.yaml", "g_face", "filter 'face'"),
    ("market_model4.yaml", "gan", "masker 'mediapipe_selfie'"),
    ("market_pngan.yaml", "gan", "pose 'mediapipe_pose'"),
])
def test_missing_model_file_names_stage_component_and_fix(monkeypatch, tmp_path, recipe, stage, component):
    monkeypatch.setenv("KERAS_REID_DATA", str(tmp_path))
    rec = load_recipe(RECIPES / recipe)
    monkeypatch.setenv("KERAS_REID_MODELS", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelFileError) as err:
        check_model_files(rec, stage, REGISTRY)
    msg = str(err.value)
    assert f"stage '{stage}' ({component})" in msg and "keras-reid models fetch" in msg
    assert "\n" not in msg


def test_stages_without_model_files_and_a_provisioned_cache_pass(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_REID_DATA", str(tmp_path))
    rec = load_recipe(RECIPES / "synthetic_lima_dcgan.yaml")
    monkeypatch.setenv("KERAS_REID_MODELS", str(tmp_path / "empty-cache"))
    check_model_files(rec, "g", REGISTRY)           # no semantic filter: nothing to check
    monkeypatch.delenv("KERAS_REID_MODELS")         # the cache `keras-reid models fetch` filled
    check_model_files(rec, "g_face", REGISTRY)
