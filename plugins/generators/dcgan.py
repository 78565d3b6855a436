"""Generator plugin ``dcgan``: DCGAN at the person aspect, with semantic control and guided losses.

Architecture (SPECS "DCGAN family", Radford et al.): the generator maps z (``z_dim``, uniform
in [-1, 1]) through Dense -> [h0, w0, C] -> BN -> ReLU and ``k`` 5x5 stride-2 transposed convs
(BN, ReLU; the last to 3 channels, tanh); the discriminator mirrors it with ``k`` 5x5 stride-2
convs (LeakyReLU 0.2, BN from the second) and Dense(1). ``k`` follows the image: doublings
from a start whose larger side is 8 (8x4 for 128x64 and 256x128, 8x8 for 128x128 as in the
reference), so crops keep their 2:1 aspect instead of being stretched to a square as the
reference code does.

Semantic control (paper): the discriminator learns from a real image only if the semantic
filter accepts it. The data side does the filtering (once, cached); the model also takes an
optional per-example ``real_weight`` [B] (1 = use, 0 = ignore) in the batch.

Guided mode (poster, lambda1 on real, lambda2 on generated, Delta = 1 where the filter finds no
face). In the public code the penalty is a constant added to the printed loss and changes no
gradient. Here it weights the per-example losses, so it does act:

    L_D = mean[ w_r (1 - lambda1 Delta(x)) BCE(D(x), 1) + (1 + lambda2 Delta(G(z))) BCE(D(G(z)), 0) ]
    L_G = mean[ (1 + lambda2 Delta(G(z))) BCE(D(G(z)), 1) ]

The discriminator trusts faceless real images less and pushes faceless samples down harder,
and the generator is pulled hardest where its samples have no face. ``Delta(x)`` of real images
comes with the batch (``real_no_face`` [B], computed once by the data side); ``Delta(G(z))`` is
computed every step by the filter given with ``set_semantic_filter`` (a Python callable on
uint8 images, run through ``tf.numpy_function``; it cannot run under XLA). The weights carry no
gradient.

Stabilisers (options, all off by default so the architecture and losses stay the paper's).
Measured on the synthetic LIMA twin (128x64, width 16, batch 16): the plain DCGAN's D wins
within the first ~60 steps (D loss 0.01-0.05, G loss 5-7) and G stays collapsed near one image
for ~450 steps before it escapes; 30 epochs are 750 steps on all 408 images but 420 on the
~229 that show a face, so semantic control stopped G_F while still collapsed (as it does G on a
random 229 of the 408). ``diff_augment`` (DiffAugment, Zhao et al. NeurIPS 2020) applies the
same kinds of random differentiable augmentation (colour: brightness/saturation/contrast;
translation by up to 1/8 of each side, zero fill; cutout of a random half-size rectangle) to
every image D sees, real and generated, in both updates, so D cannot memorise the few real
images and G's gradient passes through the augmentation (G does not learn to produce augmented
images); there G_F left the collapse by ~300 steps. ``label_smoothing`` sets D's real target
to 1 - s (one-sided, Salimans et al. 2016) and ``d_lr`` gives D its own learning rate (TTUR).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.registry import register
from keras_reid_plugins.generators._shapes import start_shape


class DCGANConfig(BaseModel):
    """Parameters of the ``dcgan`` generator."""

    model_config = ConfigDict(extra="forbid")

    z_dim: int = Field(100, gt=0, description="size of the noise vector z")
    filters: int = Field(64, gt=0, description="width of the discriminator's first layer and the "
                         "generator's last hidden layer (doubles per level)")
    max_filters: int = Field(512, gt=0, description="widest layer")
    lr: float = Field(2e-4, gt=0.0)
    beta_1: float = Field(0.5, ge=0.0, lt=1.0)
    d_steps: int = Field(1, gt=0, description="discriminator updates per training step")
    g_steps: int = Field(1, gt=0, description="generator updates per training step")
    guided: bool = Field(False, description="weight the losses by Delta = no face (poster)")
    lambda_real: float = Field(0.05, ge=0.0, le=1.0, description="lambda1 (real images without a face)")
    lambda_fake: float = Field(0.025, ge=0.0, description="lambda2 (samples without a face)")
    # Small-data stabilisers (all off by default: the paper's DCGAN). See "Stabilisers" above.
    diff_augment: list[Literal["color", "translation", "cutout"]] = Field(
        default_factory=list, description="DiffAugment (Zhao et al. 2020): these differentiable "
        "augmentations, drawn independently per image, on every image D sees, real and generated, "
        "in D's and G's updates (e.g. [translation, cutout] for a few hundred images)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="one-sided: D's target for "
                                   "real images is 1 - this (Salimans et al. 2016: 0.1)")
    d_lr: float | None = Field(None, gt=0.0, description="D's learning rate (default: lr; TTUR "
                               "uses a different one for D and G)")


@register("generator", "dcgan", config=DCGANConfig)
class DCGAN:
    """DCGAN (Radford et al. 2016): whole person images from noise, at the person aspect; optional semantic control and guided losses."""

    pairing = "unpaired"
    needs = frozenset({"source"})
    generation_needs = frozenset({"noise"})

    def __init__(self, config: DCGANConfig | None = None) -> None:
        self.config = config or DCGANConfig()

    def build(self, image_size: tuple[int, int]):
        """Returns the built ``DCGANModel`` for images of ``image_size`` (call in strategy.scope())."""
        from keras_reid_plugins.generators._dcgan_model import build_gan  # deferred: Keras, keeps plugin discovery light

        start_shape(image_size)
        return build_gan(self.config.model_dump(), tuple(image_size))

    def load(self, path: str):
        """Returns the ``DCGANModel`` saved at ``path`` (``.keras``), without optimizers."""
        import keras  # deferred: Keras, keeps plugin discovery light

        import keras_reid_plugins.generators._dcgan_model  # noqa: F401  # deferred: Keras; importing registers the classes

        return keras.saving.load_model(path, compile=False)

    def optimizers(self, steps_per_epoch: int, epochs: int) -> dict:
        """Returns ``{"d_optimizer", "g_optimizer"}``: Adam(lr, beta_1) each (D's at ``d_lr``
        when given)."""
        import keras  # deferred: Keras, keeps plugin discovery light

        c = self.config
        return {"d_optimizer": keras.optimizers.Adam(c.d_lr or c.lr, beta_1=c.beta_1),
                "g_optimizer": keras.optimizers.Adam(c.lr, beta_1=c.beta_1)}
