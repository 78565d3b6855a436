"""keras-reid data commands: synth, info, pairs."""
from __future__ import annotations

import click

from keras_reid.cli import handle_user_errors, main  # noqa: F401


@main.group()
def data() -> None:
    """Datasets: write the synthetic dataset, summarise a dataset, camera-pair splits."""
