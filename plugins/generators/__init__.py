"""Generator plugins: pix2pix (thesis Models 1-4, variable loss), dcgan (semantic control, guided),
pngan (PN-GAN pose normalisation)."""
from . import dcgan, pix2pix, pngan  # noqa: F401
