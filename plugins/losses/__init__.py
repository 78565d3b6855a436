"""Built-in re-ID losses (registered on import; Keras is imported only when one is computed)."""
from keras_reid_plugins.losses import reid  # noqa: F401
