"""``python -m keras_reid.cli`` runs the keras-reid command line."""
from keras_reid.cli import entry

entry()
