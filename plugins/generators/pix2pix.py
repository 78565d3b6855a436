"""Generator plugin ``pix2pix``: the thesis's camera-transfer GANs (Models 1-4 and the variable loss).

Architecture (Isola et al.; SPECS "pix2pix family"): a U-Net generator (4x4 stride-2 convs,
LeakyReLU 0.2, normalisation except on the first and innermost layers; decoder ReLU -> 4x4
stride-2 transposed conv -> normalisation, dropout 0.5 in the three innermost decoder blocks,
skip concatenations, tanh) whose depth follows the input shape: it halves both sides until
the smaller one reaches 1 (256x128 -> 7 levels down to 2x1, 128x64 -> 6, 64x32 -> 5, 32x16
-> 4; see :func:`unet_depth`), so person crops keep their 2:1 aspect instead of being squashed
into a square. The widths double from ``filters`` up to ``max_filters`` (64-128-256-512-512-..). A 70x70 PatchGAN
discriminator (4x4 convs 64 s2 -> 128 s2 -> 256 s2 -> 512 s1 -> 1 s1) sees the condition and
an image, concatenated.

Variants (``x`` source image, ``y`` target image, ``m_in``/``m_out`` source/target person masks):

=========  ===============================  =================================================
variant    generator input                  generator loss (besides the cGAN term)
=========  ===============================  =================================================
model1     x                                ``lambda_l1 * |G - y|``
model2     x, m_in                          ``lambda_l1 * |G - y|``
model3     x, m_in, m_out                   ``lambda_l1 * |G - y|`` (m_out chooses the pose)
model4     x                                ``lambda_fg * |G - x| m_in + lambda_bg * |G - y| (1 - m_in)(1 - m_out)``;
                                            D's condition is the source's background
                                            ``x (1 - m_in)(1 - m_out)``; the real and generated
                                            images reach D whole (``d_image_mask: none``)
variable   x, m_in, m_out                   ``lambda_fg * |G - y| m_out + lambda_bg * |G - y| (1 - m_out)``
=========  ===============================  =================================================

Every L1 term is the mean over all pixels and channels of the (masked) absolute difference,
so a term's weight means the same whatever the share of person pixels. The cGAN loss is
binary cross-entropy on the patch logits; the discriminator's loss is halved as in pix2pix.

Model 4's discriminator (thesis 3.5 and 4.6): "the discriminator does not receive the full
input image but only the background of the image" - the condition ``x`` loses both persons -
while "the GAN loss is still present and affects the whole image", so the real target ``y``
and the generated ``G(x)`` reach D unmasked (Eq. 6: ``D(x*m, y)``, ``D(x*m, G(x, z))``). With
``d_image_mask: background`` the images are masked like the condition as well: D then never
sees a person, the person gets no adversarial signal and the pixels between the two persons
(outside both L1 terms) no gradient at all.

Generation: dropout is pix2pix's only noise source; ``dropout_at_generation`` says whether it
stays on. ``batch_stats_at_generation`` normalises every generated image with its own
BatchNorm statistics instead of the running ones. The authors' test script runs the generator
in training mode on batches of one image, so both are on there (the thesis's recipes set
both); both off is ordinary inference.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from keras_reid.registry import register
from keras_reid_plugins.generators._shapes import unet_depth

VARIANTS = ("model1", "model2", "model3", "model4", "variable")

_NEEDS = {
    "model1": ({"source", "target"}, {"source"}),
    "model2": ({"source", "target", "source_mask"}, {"source", "source_mask"}),
    "model3": ({"source", "target", "source_mask", "target_mask"},
               {"source", "source_mask", "target_mask"}),
    "model4": ({"source", "target", "source_mask", "target_mask"}, {"source"}),
    "variable": ({"source", "target", "source_mask", "target_mask"},
                 {"source", "source_mask", "target_mask"}),
}


class Pix2PixConfig(BaseModel):
    """Parameters of the ``pix2pix`` generator."""

    model_config = ConfigDict(extra="forbid")

    variant: Literal["model1", "model2", "model3", "model4", "variable"] = Field(
        "model4", description="thesis model (see the plugin docstring)")
    filters: int = Field(64, gt=0, description="width of the first layer (doubles per level)")
    max_filters: int = Field(512, gt=0, description="widest layer")
    depth: int | None = Field(None, ge=3, le=8, description="U-Net levels (stride-2 halvings; the "
                              "sides must divide by 2**depth); null = halve until the smaller side is 1")
    norm: Literal["batch", "instance"] = Field("batch", description="batch (pix2pix) or instance "
                                               "normalisation")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="in the three innermost decoder blocks")
    dropout_at_generation: bool = Field(False, description="keep dropout on when generating (noise; "
                                        "the authors' pix2pix test script does)")
    batch_stats_at_generation: bool = Field(
        False, description="normalise each generated image with its own BatchNorm statistics (what "
        "the authors' test script computes: training mode on one image at a time) instead of the "
        "running statistics")
    d_image_mask: Literal["none", "background"] = Field(
        "none", description="model4: the images D sees next to the masked condition - none: whole "
        "(thesis: the GAN loss affects the whole image); background: masked like the condition, so "
        "the person gets no adversarial signal")
    lambda_l1: float = Field(100.0, ge=0.0, description="L1 weight of models 1-3")
    lambda_fg: float = Field(70.0, ge=0.0, description="foreground weight (model4, variable)")
    lambda_bg: float = Field(30.0, ge=0.0, description="background weight (model4, variable)")
    lr: float = Field(2e-4, gt=0.0, description="Adam learning rate of both networks")
    beta_1: float = Field(0.5, ge=0.0, lt=1.0, description="Adam beta_1 of both networks")
    decay_epochs: int = Field(0, ge=0, description="decay the learning rates linearly to 0 over the "
                              "last N epochs (0 = constant)")

    @model_validator(mode="after")
    def _widths(self):
        if self.max_filters < self.filters:
            raise ValueError(f"max_filters {self.max_filters} is smaller than filters {self.filters}")
        if self.dropout_at_generation and self.dropout == 0:
            raise ValueError("dropout_at_generation: true needs dropout > 0 (dropout is the only "
                             "noise source)")
        if self.batch_stats_at_generation and self.norm != "batch":
            raise ValueError("batch_stats_at_generation: true needs norm: batch (instance "
                             "normalisation uses each image's statistics anyway)")
        if self.d_image_mask != "none" and self.variant != "model4":
            raise ValueError(f"d_image_mask applies to variant model4 only, got variant {self.variant}")
        return self


@register("generator", "pix2pix", config=Pix2PixConfig)
class Pix2Pix:
    """pix2pix (Isola et al. 2017): a U-Net image-to-image generator with a PatchGAN discriminator; the thesis variants (Models 1-4) choose its inputs and losses."""

    def __init__(self, config: Pix2PixConfig | None = None) -> None:
        self.config = config or Pix2PixConfig()

    @property
    def pairing(self) -> str:
        """``random_target`` for model4 (unlabelled target camera), else ``camera_pairs``."""
        return "random_target" if self.config.variant == "model4" else "camera_pairs"

    @property
    def needs(self) -> frozenset:
        """The batch keys ``train_step`` reads (see ``keras_reid.interfaces.GENERATOR_KEYS``)."""
        return frozenset(_NEEDS[self.config.variant][0])

    @property
    def generation_needs(self) -> frozenset:
        """The batch keys ``generate`` reads."""
        return frozenset(_NEEDS[self.config.variant][1])

    def build(self, image_size: tuple[int, int]):
        """Returns the built ``Pix2PixGAN`` for images of ``image_size`` (call in strategy.scope())."""
        from keras_reid_plugins.generators._pix2pix_model import build_gan  # deferred: Keras, keeps plugin discovery light

        unet_depth(image_size, self.config.depth)
        return build_gan(self.config.model_dump(), tuple(image_size))

    def load(self, path: str):
        """Returns the ``Pix2PixGAN`` saved at ``path`` (``.keras``), without optimizers."""
        import keras  # deferred: Keras, keeps plugin discovery light

        import keras_reid_plugins.generators._pix2pix_model  # noqa: F401  # deferred: Keras; importing registers the classes

        return keras.saving.load_model(path, compile=False)

    def optimizers(self, steps_per_epoch: int, epochs: int) -> dict:
        """Returns ``{"d_optimizer", "g_optimizer"}``: two ``keras.optimizers.Adam(lr, beta_1)``,
        whose rate decays linearly to 0 over the last ``decay_epochs`` of ``epochs`` when set
        (a ``keras_reid.training.gan.LinearDecay``; over all epochs if ``decay_epochs > epochs``)."""
        import keras  # deferred: Keras, keeps plugin discovery light

        from keras_reid.training.gan import LinearDecay  # deferred: Keras, keeps plugin discovery light

        c = self.config
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"pix2pix optimizers need steps_per_epoch >= 1 and epochs >= 1, got "
                             f"{steps_per_epoch} and {epochs}")

        def lr():
            if not c.decay_epochs:
                return c.lr
            return LinearDecay(c.lr, total_steps=steps_per_epoch * epochs,
                               decay_steps=steps_per_epoch * min(c.decay_epochs, epochs))

        return {"d_optimizer": keras.optimizers.Adam(lr(), beta_1=c.beta_1),
                "g_optimizer": keras.optimizers.Adam(lr(), beta_1=c.beta_1)}
