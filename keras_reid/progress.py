"""Progress bars that suit where the output goes."""
from __future__ import annotations

import sys
from typing import Any


def bar_verbosity(verbose: int = 1) -> int:
    """Keras ``Progbar`` verbosity for ``verbose``: an animated bar (1) on a terminal; one line
    per bar (2) when output goes to a file or pipe, where carriage-return updates pile up."""
    if verbose == 1 and not sys.stdout.isatty():
        return 2
    return int(verbose)


def live_bar(wanted: bool = True) -> bool:
    """Whether to draw a tqdm bar (it writes to stderr): only when ``wanted`` and stderr is a
    terminal; in a log file or pipe its carriage-return updates pile up into one long line."""
    return bool(wanted) and sys.stderr.isatty()


def progbar(target: int, verbose: int = 1, **kwargs: Any):
    """Returns a ``keras.utils.Progbar`` with :func:`bar_verbosity` applied."""
    import keras  # deferred: Keras, the CLI imports this module

    return keras.utils.Progbar(target, verbose=bar_verbosity(verbose), **kwargs)
