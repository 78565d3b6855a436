"""keras-reid: person re-identification with GAN-synthesised training data (Keras 3 / TensorFlow)."""
__version__ = "0.1.0"
