"""Shared pytest setup.

Two logical CPU devices are configured at import time, before any TensorFlow op runs, so tests
can use ``tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])``. Keep this block first.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

if not globals().get("_LOGICAL_CPUS_CONFIGURED"):
    _cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:  # the runtime was already initialised (e.g. conftest imported twice)
        pass
    _LOGICAL_CPUS_CONFIGURED = True


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def face_models():
    """The MediaPipe face-detector models, provisioned once into the default cache
    (``keras-reid models fetch``; from $KERAS_REID_TEST_WHEEL when set, else the official
    URL or PyPI's mediapipe wheel); returns the cache folder."""
    from keras_reid.models import fetch_models

    paths = fetch_models(["face_detection_full_range_sparse.tflite",
                          "face_detection_short_range.tflite"],
                         wheel=os.environ.get("KERAS_REID_TEST_WHEEL") or None, timeout=3.0)
    return paths[0].parent


@pytest.fixture(scope="session")
def selfie_model():
    """MediaPipe's selfie segmentation model, provisioned once like the face models."""
    from keras_reid.models import fetch_models

    return fetch_models(["selfie_segmentation.tflite"],
                        wheel=os.environ.get("KERAS_REID_TEST_WHEEL") or None, timeout=3.0)[0]
