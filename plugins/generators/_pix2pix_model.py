"""Keras models of the ``pix2pix`` plugin (imported only when a GAN is built or loaded)."""
from __future__ import annotations

import zlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from keras_reid.training.gan import GANModel, LinearDecay, gan_initializer  # noqa: F401
from keras_reid_plugins.generators._shapes import unet_depth

CHANNELS = {"model1": 3, "model2": 4, "model3": 5, "model4": 3, "variable": 5}


@keras.saving.register_keras_serializable(package="keras_reid")
class NoiseDropout(layers.Dropout):
    """Dropout that can also act outside training: while ``noise`` is True (set by
    ``Pix2PixGAN.generate`` for one call) it drops units in inference calls too. In training it
    is ordinary dropout. ``noise`` is runtime state, not part of the config.

    While ``item_seeds`` (int64 [B], also set by ``generate``) is set, each example's mask is a
    stateless draw keyed by its own seed and this layer's name: an image's noise then depends on
    nothing else (not the batch it is in, the process, or the layer's random-generator state,
    which a loaded ``.keras`` file starts afresh)."""

    def __init__(self, rate: float, **kwargs: Any) -> None:
        super().__init__(rate, **kwargs)
        self.noise = False
        self.item_seeds = None

    def call(self, inputs, training=None):
        if self.noise and self.item_seeds is not None and not training:
            return self._seeded(inputs)
        return super().call(inputs, training=bool(training) or self.noise)

    def _seeded(self, inputs):
        salt = tf.constant(zlib.crc32(self.name.encode()), tf.int64)
        keep = 1.0 - self.rate

        def mask(seed):
            u = tf.random.stateless_uniform(tf.shape(inputs)[1:], seed=tf.stack([seed, salt]))
            return tf.cast(u < keep, inputs.dtype)

        masks = tf.map_fn(mask, tf.cast(self.item_seeds, tf.int64), fn_output_signature=inputs.dtype)
        return inputs * masks / tf.cast(keep, inputs.dtype)


@keras.saving.register_keras_serializable(package="keras_reid")
class GenerationBatchNorm(layers.BatchNormalization):
    """BatchNormalization that can normalise each example with its own statistics outside
    training: while ``per_image`` is True (set by ``Pix2PixGAN.generate`` for one call) an
    inference call uses the mean and (biased) variance of every example over its spatial axes,
    then the layer's ``gamma`` and ``beta``, and leaves the moving statistics alone. That is what
    a training-mode forward pass of one image at a time computes (the authors' pix2pix test
    script: training mode, batch size 1). Otherwise it is ordinary BatchNormalization.
    ``per_image`` is runtime state, not part of the config."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_image = False

    def call(self, inputs, training=None, mask=None):
        """Returns the normalised ``inputs`` (per-example statistics while ``per_image`` and not training)."""
        if training or not self.per_image:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        rank = len(x.shape)
        channel_axis = self.axis % rank
        axes = [a for a in range(1, rank) if a != channel_axis]
        mean, variance = ops.moments(x, axes=axes, keepdims=True)
        y = (x - mean) * ops.rsqrt(variance + self.epsilon)
        shape = [1] * rank
        shape[channel_axis] = x.shape[channel_axis]
        if self.scale:
            y = y * ops.reshape(ops.cast(self.gamma, y.dtype), shape)
        if self.center:
            y = y + ops.reshape(ops.cast(self.beta, y.dtype), shape)
        return ops.cast(y, self.compute_dtype)


def _norm(kind: str, name: str, generator: bool = False) -> layers.Layer:
    if kind == "instance":
        return layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)
    if generator:  # can switch to per-image statistics at generation
        return GenerationBatchNorm(momentum=0.9, epsilon=1e-5, name=name)
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def build_unet(image_size: tuple[int, int], in_channels: int, cfg: dict) -> keras.Model:
    """Returns the U-Net generator: float32 [B, H, W, in_channels] in [-1, 1] -> [B, H, W, 3]."""
    h, w = image_size
    depth = unet_depth(image_size, cfg.get("depth"))
    width = [min(cfg["filters"] * 2 ** i, cfg["max_filters"]) for i in range(depth)]
    inputs = keras.Input((h, w, in_channels), name="generator_input")
    x = inputs
    skips = []
    for i in range(depth):
        if i > 0:
            x = layers.LeakyReLU(0.2, name=f"down{i}_act")(x)
        x = layers.Conv2D(width[i], 4, strides=2, padding="same", use_bias=(i == 0 or i == depth - 1),
                          kernel_initializer=gan_initializer(), name=f"down{i}_conv")(x)
        if 0 < i < depth - 1:  # no norm on the outermost and the innermost (1-pixel) level
            x = _norm(cfg["norm"], f"down{i}_norm", generator=True)(x)
        skips.append(x)
    for i in range(depth - 2, -1, -1):
        x = layers.ReLU(name=f"up{i}_act")(x)
        x = layers.Conv2DTranspose(width[i], 4, strides=2, padding="same", use_bias=False,
                                   kernel_initializer=gan_initializer(), name=f"up{i}_conv")(x)
        x = _norm(cfg["norm"], f"up{i}_norm", generator=True)(x)
        if depth - 2 - i < 3 and cfg["dropout"] > 0:  # the three innermost decoder blocks
            x = NoiseDropout(cfg["dropout"], name=f"up{i}_dropout")(x)
        x = layers.Concatenate(name=f"up{i}_skip")([x, skips[i]])
    x = layers.ReLU(name="out_act")(x)
    x = layers.Conv2DTranspose(3, 4, strides=2, padding="same", kernel_initializer=gan_initializer(),
                               name="out_conv")(x)
    outputs = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(inputs, outputs, name="unet_generator")


def build_patchgan(image_size: tuple[int, int], cond_channels: int, cfg: dict) -> keras.Model:
    """Returns the 70x70 PatchGAN: concat(condition, image) -> patch logits [B, h', w', 1]."""
    h, w = image_size
    inputs = keras.Input((h, w, cond_channels + 3), name="discriminator_input")
    x = inputs
    for i, stride in enumerate((2, 2, 2, 1)):  # 64-128-256-512 at the default width
        filters = min(cfg["filters"] * 2 ** i, cfg["max_filters"])
        x = layers.Conv2D(filters, 4, strides=stride, padding="same", use_bias=(i == 0),
                          kernel_initializer=gan_initializer(), name=f"d{i}_conv")(x)
        if i > 0:
            x = _norm(cfg["norm"], f"d{i}_norm")(x)
        x = layers.LeakyReLU(0.2, name=f"d{i}_act")(x)
    outputs = layers.Conv2D(1, 4, strides=1, padding="same", kernel_initializer=gan_initializer(), dtype="float32",
                            name="patch_logits")(x)
    return keras.Model(inputs, outputs, name="patchgan_discriminator")


def _bce(logits, target: float):
    """Per-example mean binary cross-entropy of patch logits [B, h, w, 1] against a constant."""
    labels = tf.fill(tf.shape(logits), tf.constant(target, logits.dtype))
    per_patch = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(tf.cast(per_patch, tf.float32), axis=[1, 2, 3])


def _mean_abs(diff, mask=None):
    """Per-example mean over pixels and channels of ``|diff| * mask`` (mask broadcast over channels)."""
    a = tf.abs(tf.cast(diff, tf.float32))
    if mask is not None:
        a = a * tf.cast(mask, tf.float32)
    return tf.reduce_mean(a, axis=[1, 2, 3])


def reconstruction_terms(variant: str, fake, batch: dict, lambdas: dict) -> dict:
    """Returns the per-example [B] reconstruction terms of the generator loss (already weighted):
    ``{"g_l1"}`` for models 1-3, ``{"g_fg", "g_bg"}`` for model4 and variable."""
    x = batch["source"]
    y = batch["target"]
    if variant == "model4":
        m_in, m_out = batch["source_mask"], batch["target_mask"]
        return {"g_fg": lambdas["fg"] * _mean_abs(fake - x, m_in),
                "g_bg": lambdas["bg"] * _mean_abs(fake - y, (1.0 - m_in) * (1.0 - m_out))}
    if variant == "variable":
        m_out = batch["target_mask"]
        return {"g_fg": lambdas["fg"] * _mean_abs(fake - y, m_out),
                "g_bg": lambdas["bg"] * _mean_abs(fake - y, 1.0 - m_out)}
    return {"g_l1": lambdas["l1"] * _mean_abs(fake - y)}


@keras.saving.register_keras_serializable(package="keras_reid")
class Pix2PixGAN(GANModel):
    """pix2pix conditional GAN of one thesis variant (see ``keras_reid_plugins.generators.pix2pix``)."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model, variant: str = "model4",
                 lambda_l1: float = 100.0, lambda_fg: float = 70.0, lambda_bg: float = 30.0,
                 dropout_at_generation: bool = False, batch_stats_at_generation: bool = False,
                 d_image_mask: str = "none", **kwargs: Any) -> None:
        recon = ("g_fg", "g_bg") if variant in ("model4", "variable") else ("g_l1",)
        super().__init__(generator, discriminator,
                         log_names=("d_loss", "d_real", "d_fake", "g_loss", "g_gan", *recon), **kwargs)
        self.variant = variant
        self.lambdas = {"l1": float(lambda_l1), "fg": float(lambda_fg), "bg": float(lambda_bg)}
        self.dropout_at_generation = bool(dropout_at_generation)
        self.batch_stats_at_generation = bool(batch_stats_at_generation)
        if d_image_mask not in ("none", "background"):
            raise ValueError(f"d_image_mask must be none or background, got {d_image_mask!r}")
        self.d_image_mask = d_image_mask

    # ------------------------------------------------------------------ inputs
    def generator_input(self, batch: dict):
        """The generator's input tensor for ``batch``: source image (+ masks, by variant)."""
        parts = [batch["source"]]
        if self.variant in ("model2", "model3", "variable"):
            parts.append(batch["source_mask"])
        if self.variant in ("model3", "variable"):
            parts.append(batch["target_mask"])
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)

    def discriminator_pair(self, batch: dict, image):
        """Returns the discriminator's input for ``image`` (real or generated) under ``batch``'s
        condition: ``concat(condition, image)``. Model 4's condition is the source's background
        ``x (1 - m_in)(1 - m_out)`` and the image is whole (thesis Eq. 6), or masked the same
        way with ``d_image_mask == "background"``."""
        if self.variant == "model4":
            keep = (1.0 - batch["source_mask"]) * (1.0 - batch["target_mask"])
            shown = image * keep if self.d_image_mask == "background" else image
            return tf.concat([batch["source"] * keep, shown], axis=-1)
        return tf.concat([self.generator_input(batch), image], axis=-1)

    def call(self, batch: dict, training: bool | None = None):
        """Returns the generated images; also runs the discriminator (so every sub-model is built)."""
        # Model.__call__ casts the inputs to the compute dtype (float16 under mixed precision);
        # the sub-models take float32 and cast themselves
        batch = {k: tf.cast(v, tf.float32) for k, v in batch.items()}
        fake = self.generator(self.generator_input(batch), training=training)
        self.discriminator(self.discriminator_pair(batch, fake), training=training)
        return fake

    def generate(self, batch: dict, noise: bool | None = None, batch_stats: bool | None = None,
                 seeds=None):
        """Returns generated images float32 [B, H, W, 3] in [-1, 1] for ``batch`` (the keys in
        the factory's ``generation_needs``). Dropout is on iff ``noise`` (None = the
        ``dropout_at_generation`` setting). BatchNorm uses each image's own statistics iff
        ``batch_stats`` (None = the ``batch_stats_at_generation`` setting), else its running
        statistics; either way no statistic is updated and the result of an image does not
        depend on the other images of the batch. ``seeds`` (ints [B], one per image): dropout's
        masks are drawn from each image's seed, so with noise an image depends on its seed only;
        without them they come from the layers' random generators (process history)."""
        noise = self.dropout_at_generation if noise is None else bool(noise)
        batch_stats = self.batch_stats_at_generation if batch_stats is None else bool(batch_stats)
        batch = {k: tf.convert_to_tensor(v, tf.float32) for k, v in batch.items()}
        norms = [layer for layer in self.generator.layers if isinstance(layer, GenerationBatchNorm)]
        if batch_stats and not norms:
            raise ValueError("this generator has no BatchNorm layers that can use per-image "
                             "statistics (norm: instance, or saved by an older version); generate "
                             "with batch_stats=False")
        item_seeds = None if seeds is None else tf.constant(np.asarray(seeds, np.int64))
        return self.as_graph(self._generate_graph)(batch, item_seeds, noise, batch_stats)

    def _generate_graph(self, batch: dict, item_seeds, noise: bool, batch_stats: bool):
        """The generator's inference pass with the runtime flags set on its layers while it is
        traced (one graph per flag combination and per seeded/unseeded; see ``generate``)."""
        noisy = [layer for layer in self.generator.layers if isinstance(layer, NoiseDropout)]
        norms = [layer for layer in self.generator.layers if isinstance(layer, GenerationBatchNorm)]
        for layer in noisy:
            layer.noise = noise
            layer.item_seeds = item_seeds
        for layer in norms:
            layer.per_image = batch_stats
        try:
            return self.generator(self.generator_input(batch), training=False)
        finally:
            for layer in noisy:
                layer.noise = False
                layer.item_seeds = None
            for layer in norms:
                layer.per_image = False

    # ------------------------------------------------------------------ training
    def train_step(self, batch: dict) -> dict:
        """One discriminator update, then one generator update on the same generated images (one
        generator forward pass, as in pix2pix; the generator's loss uses the updated
        discriminator). Returns ``{"d_loss", "d_real", "d_fake", "g_loss", "g_gan"}`` plus
        ``"g_l1"`` (models 1-3) or ``"g_fg"``, ``"g_bg"`` (model4, variable): float32 scalars,
        this replica's share of the global-batch mean (the loop sums them across replicas).
        ``d_loss = (d_real + d_fake) / 2``; ``g_loss = g_gan + g_l1`` or ``g_gan + g_fg + g_bg``
        (the reconstruction terms are logged with their weights applied)."""
        batch = {k: tf.cast(v, tf.float32) for k, v in batch.items()}
        avg = tf.nn.compute_average_loss
        with tf.GradientTape() as g_tape:
            fake = self.generator(self.generator_input(batch), training=True)
            with g_tape.stop_recording():
                with tf.GradientTape() as d_tape:
                    real_logits = self.discriminator(self.discriminator_pair(batch, batch["target"]),
                                                     training=True)
                    fake_logits = self.discriminator(
                        self.discriminator_pair(batch, tf.stop_gradient(fake)), training=True)
                    d_real = avg(_bce(real_logits, 1.0))
                    d_fake = avg(_bce(fake_logits, 0.0))
                    d_loss = 0.5 * (d_real + d_fake)
                self.apply_gradients(d_tape, d_loss, self.d_optimizer,
                                     self.discriminator.trainable_variables)
            fake_logits = self.discriminator(self.discriminator_pair(batch, fake), training=True)
            g_gan = avg(_bce(fake_logits, 1.0))
            terms = {k: avg(v) for k, v in reconstruction_terms(self.variant, fake, batch,
                                                                 self.lambdas).items()}
            g_loss = g_gan + tf.add_n(list(terms.values()))
        self.apply_gradients(g_tape, g_loss, self.g_optimizer, self.generator.trainable_variables)
        return self.track({"d_loss": d_loss, "d_real": d_real, "d_fake": d_fake, "g_loss": g_loss,
                           "g_gan": g_gan, **terms})

    def get_config(self) -> dict:
        """Returns the base config plus the variant, the loss weights, the generation settings
        and Model 4's ``d_image_mask``."""
        config = super().get_config()
        config.update(variant=self.variant, lambda_l1=self.lambdas["l1"], lambda_fg=self.lambdas["fg"],
                      lambda_bg=self.lambdas["bg"], dropout_at_generation=self.dropout_at_generation,
                      batch_stats_at_generation=self.batch_stats_at_generation,
                      d_image_mask=self.d_image_mask)
        return config


def build_gan(cfg: dict, image_size: tuple[int, int]) -> Pix2PixGAN:
    """Returns a built ``Pix2PixGAN`` (variables created) for the plugin config ``cfg``."""
    variant = cfg["variant"]
    channels = CHANNELS[variant]
    generator = build_unet(image_size, channels, cfg)
    cond = 3 if variant == "model4" else channels
    discriminator = build_patchgan(image_size, cond, cfg)
    gan = Pix2PixGAN(generator, discriminator, variant=variant, lambda_l1=cfg["lambda_l1"],
                     lambda_fg=cfg["lambda_fg"], lambda_bg=cfg["lambda_bg"],
                     dropout_at_generation=cfg["dropout_at_generation"],
                     batch_stats_at_generation=cfg.get("batch_stats_at_generation", False),
                     d_image_mask=cfg.get("d_image_mask", "none"), name=f"pix2pix_{variant}")
    h, w = image_size
    dummy = {"source": tf.zeros((1, h, w, 3)), "target": tf.zeros((1, h, w, 3)),
             "source_mask": tf.zeros((1, h, w, 1)), "target_mask": tf.zeros((1, h, w, 1))}
    gan(dummy, training=False)
    return gan
