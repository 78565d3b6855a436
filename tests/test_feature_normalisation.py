"""evaluate `normalise: false` ranks raw features (torchreid's test default, which the thesis
used); the default L2-normalises them. Flip averaging is the mean of image and mirror."""
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from keras_reid.inference import extract_features
from keras_reid.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _model():
    """images [B, 4, 2, 3] -> [B, 2]: (sum of the left column, sum of the right column)."""
    x = inp = keras.Input((4, 2, 3))
    left = keras.layers.Lambda(lambda t: keras.ops.sum(t[:, :, 0, :], axis=(1, 2)))(x)
    right = keras.layers.Lambda(lambda t: keras.ops.sum(t[:, :, 1, :], axis=(1, 2)))(x)
    return keras.Model(inp, keras.layers.Concatenate()([left[:, None], right[:, None]]))


class _Rec:
    def __init__(self, path):
        self.path = str(path)


@pytest.fixture
def records(tmp_path):
    image = np.zeros((4, 2, 3), np.uint8)
    image[:, 0] = 10     # left column 10, right column 0
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), image)
    return [_Rec(path)]


def test_raw_and_normalised_features(records):
    model = _model()
    raw = extract_features(model, records, (4, 2), 1, flip=False, verbose=0, normalise=False)
    np.testing.assert_allclose(raw, [[10.0 * 4 * 3, 0.0]])
    mean = extract_features(model, records, (4, 2), 1, flip=True, verbose=0, normalise=False)
    np.testing.assert_allclose(mean, [[60.0, 60.0]])            # the mean of image and mirror
    unit = extract_features(model, records, (4, 2), 1, flip=True, verbose=0)
    np.testing.assert_allclose(unit, [[2 ** -0.5, 2 ** -0.5]], rtol=1e-6)


def test_thesis_recipes_rank_raw_features_and_multi_query_needs_unit_vectors(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_REID_DATA", str(tmp_path))
    for name in ("market_model1", "market_model2", "market_model3", "market_model4"):
        cfg = load_recipe(RECIPES / f"{name}.yaml").stage_configs["evaluate"]
        assert cfg.normalise is False and cfg.flip is False, name
    assert load_recipe(RECIPES / "quickstart.yaml").stage_configs["evaluate"].normalise is True
    from keras_reid.errors import RecipeError
    with pytest.raises(RecipeError, match="multi_query pools unit vectors"):
        load_recipe(RECIPES / "market_model1.yaml", ["stages.evaluate.multi_query=mean"])
