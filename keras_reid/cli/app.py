"""The ``keras-reid`` click group and the error handling every command shares.

User errors (``keras_reid.errors.UserError``) are printed as one line and turned into a
non-zero exit code, never a traceback. The command modules register on :data:`main`;
``keras_reid.cli`` imports them all.
"""
from __future__ import annotations

import functools
import os
import sys

import click
from pydantic import ValidationError

from keras_reid import __version__
from keras_reid.errors import UserError
from keras_reid.registry import RegistryError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def handle_user_errors(func):
    """Decorator: print UserError/RegistryError as one red line and exit with its code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except RegistryError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)
        except ValidationError as exc:   # component parameters given on the command line
            click.secho(f"error: {_parameter_errors(exc)}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted; run the same command again to resume (finished stages are "
                        "kept, an interrupted one restarts from its last checkpoint)", fg="yellow", err=True)
            sys.exit(130)
        except OSError as exc:   # a read-only or full disk, an unwritable --json path, ...
            if os.environ.get("KERAS_REID_DEBUG"):
                raise
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            click.secho(f"error: cannot use{where}: {exc.strerror or exc}; check the path, its "
                        "permissions and free space (KERAS_REID_DEBUG=1 shows the traceback)",
                        fg="red", err=True)
            sys.exit(1)

    return wrapper


def _parameter_errors(exc: ValidationError) -> str:
    """One line for pydantic's report on a component's parameters, e.g. ``threshold: got 'abc',
    expected a number (face filter parameters; see keras-reid plugins filter face)``."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err.get("loc", ())) or "(parameters)"
        got = f"got {err['input']!r}, " if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{key}: {got}{err.get('msg', 'invalid').lower()}")
    return f"invalid {exc.title}: " + "; ".join(parts) + " (the parameters each component takes: " \
        "keras-reid plugins KIND NAME)"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="keras-reid")
def main() -> None:
    """keras-reid: train person re-identification models on GAN-augmented data.

    \b
    Typical use:
      keras-reid run recipes/quickstart.yaml        run a recipe end to end
      keras-reid validate recipes/market_model4.yaml check a recipe without running it
      keras-reid plugins                             list the registered components
      keras-reid data synth data/synth --ids 50      write the synthetic dataset
      tensorboard --logdir runs                      look at what happened
    """
