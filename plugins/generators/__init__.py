"""Generator plugins: pix2pix (thesis Models 1-4, variable loss)."""
from . import pix2pix  # noqa: F401
