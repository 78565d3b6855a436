"""The ``keras-reid`` command line: thin click commands over the library.

The group and its error handling are in ``app``; each command group lives in its own module,
imported here so that its commands register on :data:`main`. User errors
(``keras_reid.errors.UserError``) are printed as one line and turned into a non-zero exit code,
never a traceback.
"""
from __future__ import annotations

from keras_reid.cli import data, evaluate, filter, inference, models, plugins, report, run, synth
from keras_reid.cli.app import handle_user_errors, main
from keras_reid.cli.quiet import filter_native_stderr

__all__ = ["entry", "handle_user_errors", "main"]

COMMAND_MODULES = (data, evaluate, filter, inference, models, plugins, report, run, synth)
"""The modules whose commands register on :data:`main` when imported."""


def entry() -> None:
    """The ``keras-reid`` console script: :func:`main` with TensorFlow's native start-up noise
    filtered from stderr (``KERAS_REID_TF_LOGS=1`` shows it)."""
    filter_native_stderr()
    main()
