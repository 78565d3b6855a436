"""Keras models of the ``dcgan`` plugin (imported only when a GAN is built or loaded)."""
from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from keras_reid.training.gan import GANModel, gan_initializer
from keras_reid_plugins.generators._shapes import start_shape


def build_generator(image_size: tuple[int, int], cfg: dict) -> keras.Model:
    """Returns G: noise float32 [B, z_dim] -> images [B, H, W, 3] in [-1, 1]."""
    h0, w0, k = start_shape(image_size)
    widths = [min(cfg["filters"] * 2 ** (k - 1 - i), cfg["max_filters"]) for i in range(k)]
    z = keras.Input((cfg["z_dim"],), name="noise")
    x = layers.Dense(h0 * w0 * widths[0], use_bias=False, kernel_initializer=gan_initializer(),
                     name="project")(z)
    x = layers.Reshape((h0, w0, widths[0]), name="reshape")(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="project_bn")(x)
    x = layers.ReLU(name="project_act")(x)
    for i in range(1, k):
        x = layers.Conv2DTranspose(widths[i], 5, strides=2, padding="same", use_bias=False,
                                   kernel_initializer=gan_initializer(), name=f"up{i}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"up{i}_bn")(x)
        x = layers.ReLU(name=f"up{i}_act")(x)
    x = layers.Conv2DTranspose(3, 5, strides=2, padding="same", kernel_initializer=gan_initializer(),
                               name="out_conv")(x)
    out = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(z, out, name="dcgan_generator")


def build_discriminator(image_size: tuple[int, int], cfg: dict) -> keras.Model:
    """Returns D: images [B, H, W, 3] in [-1, 1] -> logits [B, 1]."""
    _, _, k = start_shape(image_size)
    inputs = keras.Input((*image_size, 3), name="image")
    x = inputs
    for i in range(k):
        x = layers.Conv2D(min(cfg["filters"] * 2 ** i, cfg["max_filters"]), 5, strides=2, padding="same",
                          use_bias=(i == 0), kernel_initializer=gan_initializer(), name=f"d{i}_conv")(x)
        if i > 0:
            x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"d{i}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"d{i}_act")(x)
    x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(1, kernel_initializer=gan_initializer(), dtype="float32", name="logit")(x)
    return keras.Model(inputs, out, name="dcgan_discriminator")


def diff_augment(images, policy, seed_generator) -> tf.Tensor:
    """DiffAugment (Zhao et al. 2020) of images [B, H, W, 3] in [-1, 1]: for each kind in
    ``policy`` (``color``, ``translation``, ``cutout``, in that order) an independent random draw
    per image, differentiable in the images. ``color``: brightness + U(-0.5, 0.5), saturation x
    U(0, 2), contrast x U(0.5, 1.5); ``translation``: shift by up to 1/8 of each side, zero fill;
    ``cutout``: a zero rectangle of half each side at a random centre (clipped at the border)."""
    x = tf.cast(images, tf.float32)
    shape = tf.shape(x)
    b, h, w = shape[0], shape[1], shape[2]

    def uniform(dims):
        return keras.random.uniform(dims, seed=seed_generator)

    if "color" in policy:
        x = x + (uniform([b, 1, 1, 1]) - 0.5)
        mean = tf.reduce_mean(x, axis=3, keepdims=True)
        x = (x - mean) * (uniform([b, 1, 1, 1]) * 2.0) + mean
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * (uniform([b, 1, 1, 1]) + 0.5) + mean
    rows = tf.range(h)[None, :]  # [1, H]
    cols = tf.range(w)[None, :]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    if "translation" in policy:
        sh = tf.cast(hf * 0.125 + 0.5, tf.int32)
        sw = tf.cast(wf * 0.125 + 0.5, tf.int32)
        # shift in [-s, s], integer, per image
        dy = tf.cast(tf.floor(uniform([b, 1]) * tf.cast(2 * sh + 1, tf.float32)), tf.int32) - sh
        dx = tf.cast(tf.floor(uniform([b, 1]) * tf.cast(2 * sw + 1, tf.float32)), tf.int32) - sw
        src_r, src_c = rows - dy, cols - dx  # output pixel (r, c) reads input (r - dy, c - dx)
        valid = (((src_r >= 0) & (src_r < h))[:, :, None] & ((src_c >= 0) & (src_c < w))[:, None, :])
        x = tf.gather(x, tf.clip_by_value(src_r, 0, h - 1), axis=1, batch_dims=1)
        x = tf.gather(x, tf.clip_by_value(src_c, 0, w - 1), axis=2, batch_dims=1)
        x = x * tf.cast(valid, x.dtype)[..., None]
    if "cutout" in policy:
        ch, cw = tf.cast(hf * 0.5 + 0.5, tf.int32), tf.cast(wf * 0.5 + 0.5, tf.int32)
        cy = tf.cast(tf.floor(uniform([b, 1]) * hf), tf.int32)
        cx = tf.cast(tf.floor(uniform([b, 1]) * wf), tf.int32)
        inside = (((rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch))[:, :, None]
                  & ((cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw))[:, None, :])
        x = x * (1.0 - tf.cast(inside, x.dtype))[..., None]
    return x


def _bce(logits, target: float):
    """Per-example binary cross-entropy [B] of logits [B, 1] against a constant target."""
    logits = tf.cast(tf.reshape(logits, [-1]), tf.float32)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(logits), target), logits=logits)


@keras.saving.register_keras_serializable(package="keras_reid")
class DCGANModel(GANModel):
    """DCGAN with optional semantic weights (see ``keras_reid_plugins.generators.dcgan``)."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model, z_dim: int = 100,
                 d_steps: int = 1, g_steps: int = 1, guided: bool = False, lambda_real: float = 0.05,
                 lambda_fake: float = 0.025, diff_augment: tuple | list = (),
                 label_smoothing: float = 0.0, seed: int | None = None, **kwargs: Any) -> None:
        # fake_no_face (the share of samples the filter rejects) means something only when guided
        super().__init__(generator, discriminator,
                         log_names=("d_loss", "d_real", "d_fake", "g_loss")
                         + (("fake_no_face",) if guided else ()), **kwargs)
        self.z_dim = int(z_dim)
        self.d_steps = int(d_steps)
        self.g_steps = int(g_steps)
        self.guided = bool(guided)
        self.lambda_real = float(lambda_real)
        self.lambda_fake = float(lambda_fake)
        self.diff_augment = [str(p) for p in diff_augment]
        self.label_smoothing = float(label_smoothing)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._semantic_filter: Callable[[np.ndarray], np.ndarray] | None = None

    # ------------------------------------------------------------------ semantic filter
    def set_semantic_filter(self, scorer: Callable[[np.ndarray], np.ndarray] | None,
                            min_score: float = 0.5) -> None:
        """Use ``scorer`` (uint8 images [N, H, W, 3] -> scores [N]) for Delta(G(z)) = score < min_score
        in guided training; None turns it off (Delta(G(z)) = 0)."""
        self._semantic_filter = None if scorer is None else (scorer, float(min_score))

    def fake_no_face(self, fake) -> tf.Tensor:
        """Delta(G(z)) float32 [B]: 1 where the semantic filter rejects a sample, 0 otherwise (and
        0 everywhere without a filter). Constant for the gradients."""
        if self._semantic_filter is None:
            return tf.zeros([tf.shape(fake)[0]], tf.float32)
        scorer, min_score = self._semantic_filter

        def score(images):
            uint8 = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
            return (np.asarray(scorer(uint8), np.float32) < min_score).astype(np.float32)

        delta = tf.numpy_function(score, [tf.stop_gradient(tf.cast(fake, tf.float32))], tf.float32,
                                  stateful=False)
        return tf.reshape(delta, [tf.shape(fake)[0]])

    # ------------------------------------------------------------------ forward
    def noise(self, n) -> tf.Tensor:
        """Returns z ~ U(-1, 1) [n, z_dim] from the model's seed generator."""
        return keras.random.uniform((n, self.z_dim), -1.0, 1.0, seed=self.seed_generator)

    def call(self, batch: dict, training: bool | None = None):
        """Returns generated images for ``batch["noise"]`` (or fresh noise for ``batch["source"]``'s
        batch size); also runs the discriminator so every sub-model is built."""
        z = batch["noise"] if "noise" in batch else self.noise(tf.shape(batch["source"])[0])
        fake = self.generator(z, training=training)
        self.discriminator(fake, training=training)
        return fake

    def generate(self, batch: dict, noise: bool | None = None):
        """Returns images float32 [B, H, W, 3] in [-1, 1] for ``batch["noise"]`` [B, z_dim]
        (inference mode; ``noise`` is unused: a DCGAN's randomness is z)."""
        return self.as_graph(self._generate_graph)(tf.convert_to_tensor(batch["noise"], tf.float32))

    def _generate_graph(self, z):
        """G's inference pass on ``z`` (compiled once per model by ``generate``)."""
        return self.generator(z, training=False)

    def d_input(self, images) -> tf.Tensor:
        """What D sees of ``images``: the DiffAugment of each (``diff_augment`` policy), or the
        images unchanged without one."""
        if not self.diff_augment:
            return images
        return diff_augment(images, self.diff_augment, self.seed_generator)

    # ------------------------------------------------------------------ losses
    def loss_weights(self, batch: dict, fake_delta) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns per-example weights ``(w_real [B], w_fake [B])`` (module docstring formula)."""
        n = tf.shape(batch["source"])[0]
        w_real = tf.cast(batch["real_weight"], tf.float32) if "real_weight" in batch else tf.ones([n])
        w_fake = tf.ones_like(fake_delta)
        if self.guided:
            if "real_no_face" in batch:
                w_real = w_real * (1.0 - self.lambda_real * tf.cast(batch["real_no_face"], tf.float32))
            w_fake = w_fake + self.lambda_fake * fake_delta
        return tf.stop_gradient(w_real), tf.stop_gradient(w_fake)

    def discriminator_losses(self, batch: dict, fake, fake_delta) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns this replica's shares of the weighted real and fake discriminator losses."""
        w_real, w_fake = self.loss_weights(batch, fake_delta)
        real_logits = self.discriminator(self.d_input(batch["source"]), training=True)
        fake_logits = self.discriminator(self.d_input(fake), training=True)
        avg = tf.nn.compute_average_loss
        return (avg(w_real * _bce(real_logits, 1.0 - self.label_smoothing)),
                avg(w_fake * _bce(fake_logits, 0.0)))

    def train_step(self, batch: dict) -> dict:
        """``d_steps`` discriminator updates, then ``g_steps`` generator updates (fresh z each);
        returns ``{"d_loss", "d_real", "d_fake", "g_loss"}`` and, when guided, ``"fake_no_face"``
        (replica shares)."""
        batch = {k: tf.cast(v, tf.float32) for k, v in batch.items()}
        n = tf.shape(batch["source"])[0]
        avg = tf.nn.compute_average_loss
        for _ in range(self.d_steps):
            fake = self.generator(self.noise(n), training=True)
            delta = self.fake_no_face(fake) if self.guided else tf.zeros([n])
            with tf.GradientTape() as tape:
                d_real, d_fake = self.discriminator_losses(batch, tf.stop_gradient(fake), delta)
                d_loss = d_real + d_fake
            self.apply_gradients(tape, d_loss, self.d_optimizer, self.discriminator.trainable_variables)
        for _ in range(self.g_steps):
            with tf.GradientTape() as tape:
                fake = self.generator(self.noise(n), training=True)
                delta = self.fake_no_face(fake) if self.guided else tf.zeros([n])
                _, w_fake = self.loss_weights(batch, delta)
                g_loss = avg(w_fake * _bce(self.discriminator(self.d_input(fake), training=True), 1.0))
            self.apply_gradients(tape, g_loss, self.g_optimizer, self.generator.trainable_variables)
        logs = {"d_loss": d_loss, "d_real": d_real, "d_fake": d_fake, "g_loss": g_loss}
        if self.guided:
            logs["fake_no_face"] = avg(delta)
        return self.track(logs)

    def get_config(self) -> dict:
        """Returns the base config plus z size, update ratio, guided-mode weights and stabilisers."""
        config = super().get_config()
        config.update(z_dim=self.z_dim, d_steps=self.d_steps, g_steps=self.g_steps, guided=self.guided,
                      lambda_real=self.lambda_real, lambda_fake=self.lambda_fake,
                      diff_augment=list(self.diff_augment), label_smoothing=self.label_smoothing,
                      seed=self.seed)
        return config


def build_gan(cfg: dict, image_size: tuple[int, int]) -> DCGANModel:
    """Returns a built ``DCGANModel`` (variables created) for the plugin config ``cfg``."""
    gan = DCGANModel(build_generator(image_size, cfg), build_discriminator(image_size, cfg),
                     z_dim=cfg["z_dim"], d_steps=cfg["d_steps"], g_steps=cfg["g_steps"],
                     guided=cfg["guided"], lambda_real=cfg["lambda_real"],
                     lambda_fake=cfg["lambda_fake"], diff_augment=cfg.get("diff_augment", ()),
                     label_smoothing=cfg.get("label_smoothing", 0.0), name="dcgan")
    h, w = image_size
    gan({"noise": tf.zeros((1, cfg["z_dim"]))}, training=False)
    return gan
