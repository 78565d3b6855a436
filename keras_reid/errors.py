"""Errors a user can cause and fix: the CLI prints them as one line, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (recipe, dataset, model file) and how to fix it.

    The message is one line naming the problem and the fix. ``exit_code`` is what the
    CLI exits with (2 for invalid recipes and arguments, 1 otherwise).
    """

    exit_code = 1


class RecipeError(UserError):
    """An invalid recipe: the message carries file:line, key path, bad value, expectation."""

    exit_code = 2


class DatasetError(UserError):
    """A missing or malformed dataset root, or an empty split."""


class ModelFileError(UserError):
    """A model file (MediaPipe .tflite, weights) that is missing or does not match its checksum."""


class InputError(UserError):
    """Invalid command input: a missing model or image, a folder without images, an unknown
    format (exit code 2, like an invalid argument)."""

    exit_code = 2
