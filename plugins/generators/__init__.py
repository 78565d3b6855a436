"""Generator plugins: pix2pix (thesis Models 1-4, variable loss), dcgan (semantic control, guided)."""
from . import dcgan, pix2pix  # noqa: F401
