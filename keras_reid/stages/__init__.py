"""Pipeline stages, registered through the ``keras_reid.plugins`` entry point like any plugin.

Each stage module keeps its config and registration light; the TensorFlow work lives
in a private ``_*_impl`` module imported when the stage runs.
"""
from keras_reid.stages import (  # noqa: F401
    augment, canonical_poses, evaluate, report, train_generator, train_reid)
