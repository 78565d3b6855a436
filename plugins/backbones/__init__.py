"""Built-in backbones (registered on import; Keras is imported only when one is built)."""
from keras_reid_plugins.backbones import resnet50, tiny  # noqa: F401
from keras_reid_plugins.backbones import condensenet  # noqa: F401
