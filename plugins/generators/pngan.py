"""Generator plugin ``pngan``: PN-GAN's pose-normalisation GAN (Qian et al., ECCV 2018).

Architecture (SPECS "PN-GAN"; a CycleGAN-style ResNet encoder-decoder): the generator takes
the source image concatenated with the 3-channel skeleton image of the TARGET pose (6
channels) and runs reflect-pad 3 + 7x7 conv ``width`` -> InstanceNorm -> ReLU; two 3x3
stride-2 convs (``2 width``, ``4 width``; IN, ReLU); ``res_blocks`` residual blocks at
``4 width`` (reflect-pad 1, 3x3 conv, IN, ReLU, reflect-pad 1, 3x3 conv, IN, plus the
block's input); two 3x3 stride-2 transposed convs (``2 width``, ``width``; IN, ReLU); reflect-
pad 3 + 7x7 conv to 3 channels, tanh. InstanceNorm is ``GroupNormalization(groups=-1)``. The
network is fully convolutional: it runs at the native 256x128 (or any size whose sides divide
by 4, at least 8) instead of a square. The patch discriminator is 4x4 convs ``width`` (s2) ->
``2 width`` (s2) -> ``4 width`` (s2) -> ``8 width`` (s1) -> 1 (s1), InstanceNorm except on the
first, LeakyReLU 0.2 (64-128-256-512-1 at the default width). All weights start N(0, 0.02).

Discriminator input (``d_condition``): the paper's Eq. (3) writes ``D_P(I_j)`` and
``D_P(G_P(I_i, I_Pj))``: the discriminator judges the image alone, so that is the default
(``none``). ``pose`` also shows it the target skeleton and ``source_pose`` the source image and
the target skeleton (pix2pix-style conditional discriminator), concatenated before the image.

Losses (``gan_loss``): least squares (``lsgan``, the default, as in the CycleGAN code PN-GAN's
public code builds on) or the paper's log form of Eq. (3) (``log``: cross-entropy of
``D = sigmoid(score)``; the generator takes the non-saturating ``-log D(G)``, Goodfellow et al.'s
practical form of minimising ``log(1 - D(G))``), plus ``l1_weight`` (10, the paper's lambda_1)
times the per-pixel mean absolute difference to the target image::

    lsgan: d_real = mean (D(real) - 1)^2     d_fake = mean D(fake)^2     g_gan = mean (D(fake) - 1)^2
    log:   d_real = mean -log D(real)        d_fake = mean -log(1 - D(fake))   g_gan = mean -log D(fake)
    d_loss = (d_real + d_fake) / 2     g_l1 = l1_weight * mean |fake - target|     g_loss = g_gan + g_l1

The discriminator's loss is halved (pix2pix/CycleGAN: D learns at half G's rate). Each term is
logged; ``g_l1`` with its weight applied. Adam(2e-4, 0.5, 0.999); the rate decays linearly to 0
over the last half of the epochs (``decay_epochs``). Optionally the discriminator's fake half
comes from a pool of past fakes (``pool_size``, CycleGAN's 50; 0 = off, the default; see
``PNGANModel.query_pool``). There is no dropout: generation is deterministic.

Training pairs are ordered pairs of images of one identity (``identity_pairs``); ``needs``
``source``, ``target`` and ``target_pose`` (the target image's skeleton); ``generate`` needs
``source`` and ``target_pose`` (e.g. one of the canonical poses).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.registry import register


class PNGANConfig(BaseModel):
    """Parameters of the ``pngan`` generator."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(64, gt=0, description="base width: generator 64-128-256 (res blocks at 4x), "
                       "discriminator 64-128-256-512 at the default")
    res_blocks: int = Field(9, ge=0, description="residual blocks at the generator's bottleneck")
    d_condition: Literal["none", "pose", "source_pose"] = Field(
        "none", description="what the discriminator sees besides the image: nothing (paper Eq. 3), "
        "the target skeleton, or the source image and the target skeleton")
    gan_loss: Literal["lsgan", "log"] = Field(
        "lsgan", description="lsgan: least squares (the public code); log: the paper's Eq. 3 "
        "(cross-entropy, non-saturating generator term)")
    l1_weight: float = Field(10.0, ge=0.0, description="weight of the L1 term to the target image")
    pool_size: int = Field(0, ge=0, description="past fakes shown to the discriminator (CycleGAN: "
                           "50; 0 = off)")
    lr: float = Field(2e-4, gt=0.0, description="Adam learning rate of both networks")
    beta_1: float = Field(0.5, ge=0.0, lt=1.0, description="Adam beta_1 of both networks")
    beta_2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam beta_2 of both networks")
    decay_epochs: int | None = Field(None, ge=0, description="decay the learning rates linearly to "
                                     "0 over the last N epochs; null = the last half (epochs // 2), "
                                     "0 = constant")


def check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """Returns ``(height, width)`` if the generator can run at ``image_size``: both sides divisible
    by 4 (two stride-2 convs and their transposes) and at least 8 (the bottleneck must be at
    least 2x2 for its reflect padding). Raises ValueError otherwise."""
    h, w = (int(v) for v in image_size)
    if h % 4 or w % 4 or h < 8 or w < 8:
        raise ValueError(f"image size {h}x{w} does not fit PN-GAN's generator: both sides must be "
                         "divisible by 4 and at least 8 (e.g. 64x32, 128x64, 256x128)")
    return h, w


@register("generator", "pngan", config=PNGANConfig)
class PNGAN:
    """PN-GAN (Qian et al. 2018): redraws a person image in a target pose given as a skeleton image, identity kept."""

    pairing = "identity_pairs"
    needs = frozenset({"source", "target", "target_pose"})
    generation_needs = frozenset({"source", "target_pose"})

    def __init__(self, config: PNGANConfig | None = None) -> None:
        self.config = config or PNGANConfig()

    def build(self, image_size: tuple[int, int]):
        """Returns the built ``PNGANModel`` for images of ``image_size`` (call in strategy.scope())."""
        from keras_reid_plugins.generators._pngan_model import build_gan  # deferred: Keras, keeps plugin discovery light

        return build_gan(self.config.model_dump(), check_image_size(image_size))

    def load(self, path: str):
        """Returns the ``PNGANModel`` saved at ``path`` (``.keras``), without optimizers."""
        import keras  # deferred: Keras, keeps plugin discovery light

        import keras_reid_plugins.generators._pngan_model  # noqa: F401  # deferred: Keras; importing registers the classes

        return keras.saving.load_model(path, compile=False)

    def decay_epochs(self, epochs: int) -> int:
        """Returns the number of final epochs over which the rates decay: ``decay_epochs`` (at
        most ``epochs``), or ``epochs // 2`` when it is null; 0 = constant rate."""
        d = self.config.decay_epochs
        return epochs // 2 if d is None else min(d, epochs)

    def optimizers(self, steps_per_epoch: int, epochs: int) -> dict:
        """Returns ``{"d_optimizer", "g_optimizer"}``: two ``keras.optimizers.Adam(lr, beta_1,
        beta_2)`` whose rate is constant, then decays linearly to 0 over the last
        :meth:`decay_epochs` epochs (a ``keras_reid.training.gan.LinearDecay``)."""
        import keras  # deferred: Keras, keeps plugin discovery light

        from keras_reid.training.gan import LinearDecay  # deferred: Keras, keeps plugin discovery light

        c = self.config
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"pngan optimizers need steps_per_epoch >= 1 and epochs >= 1, got "
                             f"{steps_per_epoch} and {epochs}")
        decay = self.decay_epochs(epochs)

        def lr():
            if not decay:
                return c.lr
            return LinearDecay(c.lr, total_steps=steps_per_epoch * epochs,
                               decay_steps=steps_per_epoch * decay)

        return {"d_optimizer": keras.optimizers.Adam(lr(), beta_1=c.beta_1, beta_2=c.beta_2),
                "g_optimizer": keras.optimizers.Adam(lr(), beta_1=c.beta_1, beta_2=c.beta_2)}
