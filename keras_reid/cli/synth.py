"""keras-reid data synth: write the built-in synthetic dataset."""
from __future__ import annotations

import click

from keras_reid.cli import handle_user_errors  # noqa: F401
from keras_reid.cli.data import data  # noqa: F401
