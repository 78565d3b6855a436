"""Shared pytest setup.

``keras_reid.pytest_plugin`` (the fixtures third-party plugin tests load too) configures two
logical CPU devices at import time, before any TensorFlow op runs, so tests can use
``tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])``, and gives the session-scoped
``synthetic_data`` fixture. No TensorFlow op may run in this file before it loads.
"""
import importlib.util
import os
from pathlib import Path

import pytest

pytest_plugins = ["keras_reid.pytest_plugin"]


@pytest.fixture(scope="session")
def face_models():
    """The MediaPipe face-detector models, provisioned once into the default cache
    (``keras-reid models fetch``; from $KERAS_REID_TEST_WHEEL when set, else the official
    URL or PyPI's mediapipe wheel); returns the cache folder."""
    from keras_reid.model_files import fetch_models

    paths = fetch_models(["face_detection_full_range_sparse.tflite",
                          "face_detection_short_range.tflite"],
                         wheel=os.environ.get("KERAS_REID_TEST_WHEEL") or None, timeout=3.0)
    return paths[0].parent


@pytest.fixture(scope="session")
def selfie_model():
    """MediaPipe's selfie segmentation model, provisioned once like the face models."""
    from keras_reid.model_files import fetch_models

    return fetch_models(["selfie_segmentation.tflite"],
                        wheel=os.environ.get("KERAS_REID_TEST_WHEEL") or None, timeout=3.0)[0]


@pytest.fixture(scope="session")
def load_tool():
    """``load_tool(name)``: the script ``tools/<name>.py`` imported as a module (once per session)."""
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(
                name, Path(__file__).resolve().parents[1] / "tools" / f"{name}.py")
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]

    return load
