"""keras-reid: person re-identification with GAN-synthesised training data (Keras 3 / TensorFlow)."""
__version__ = "0.1.0"

__all__ = ["load_model", "FeatureExtractor"]


def __getattr__(name: str):
    """``keras_reid.load_model`` and ``keras_reid.FeatureExtractor`` (``keras_reid.inference``),
    imported on first use so that ``import keras_reid`` stays light."""
    if name in __all__:
        from keras_reid import inference  # deferred: NumPy and the stages, keeps import keras_reid light

        return getattr(inference, name)
    raise AttributeError(f"module 'keras_reid' has no attribute {name!r}")
