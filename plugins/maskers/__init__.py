"""Masker plugins: person masks for images."""
from . import files, mediapipe_selfie  # noqa: F401
