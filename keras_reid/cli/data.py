"""keras-reid data commands."""
from __future__ import annotations

import click

from keras_reid.cli import handle_user_errors, main  # noqa: F401
