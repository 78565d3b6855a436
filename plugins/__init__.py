"""The built-in components of keras-reid, registered through the keras_reid.plugins entry-point group exactly like third-party plugins."""
