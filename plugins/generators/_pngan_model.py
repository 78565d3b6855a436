"""Keras models of the ``pngan`` plugin (imported only when a GAN is built or loaded)."""
from __future__ import annotations

import random
from typing import Any

import keras
import tensorflow as tf
from keras import layers, ops

from keras_reid.training.gan import GANModel, LinearDecay, gan_initializer  # noqa: F401

CONDITION_CHANNELS = {"none": 0, "pose": 3, "source_pose": 6}
"""Channels the discriminator sees besides the image, by ``d_condition``."""


@keras.saving.register_keras_serializable(package="keras_reid")
class ReflectPad2D(layers.Layer):
    """Pads height and width by ``padding`` pixels on each side with their mirror image (the
    edge pixel not repeated, as ``numpy.pad(mode="reflect")``). ``[B, H, W, C]`` ->
    ``[B, H + 2p, W + 2p, C]``; needs ``p < H`` and ``p < W``."""

    def __init__(self, padding: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.padding = int(padding)

    def call(self, inputs):
        p = self.padding
        return ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        p = 2 * self.padding
        return (b, None if h is None else h + p, None if w is None else w + p, c)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(padding=self.padding)
        return config


def _instance_norm(name: str) -> layers.Layer:
    return layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)


def _conv(filters: int, kernel: int, name: str, strides: int = 1, padding: str = "valid",
          use_bias: bool = False, **kwargs: Any) -> layers.Layer:
    return layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=use_bias,
                         kernel_initializer=gan_initializer(), name=name, **kwargs)


def build_generator(image_size: tuple[int, int], cfg: dict) -> keras.Model:
    """Returns the ResNet encoder-decoder: concat(source, target skeleton) float32 [B, H, W, 6]
    in [-1, 1] -> image [B, H, W, 3] in [-1, 1] (float32 under mixed precision too)."""
    h, w = image_size
    width, blocks = cfg["width"], cfg["res_blocks"]
    inputs = keras.Input((h, w, 6), name="generator_input")
    x = ReflectPad2D(3, name="in_pad")(inputs)
    x = _conv(width, 7, "in_conv")(x)  # no bias: InstanceNorm's beta replaces it
    x = _instance_norm("in_norm")(x)
    x = layers.ReLU(name="in_act")(x)
    for i, mult in enumerate((2, 4)):
        x = _conv(width * mult, 3, f"down{i}_conv", strides=2, padding="same")(x)
        x = _instance_norm(f"down{i}_norm")(x)
        x = layers.ReLU(name=f"down{i}_act")(x)
    for i in range(blocks):
        y = ReflectPad2D(1, name=f"res{i}_pad_a")(x)
        y = _conv(width * 4, 3, f"res{i}_conv_a")(y)
        y = _instance_norm(f"res{i}_norm_a")(y)
        y = layers.ReLU(name=f"res{i}_act")(y)
        y = ReflectPad2D(1, name=f"res{i}_pad_b")(y)
        y = _conv(width * 4, 3, f"res{i}_conv_b")(y)
        y = _instance_norm(f"res{i}_norm_b")(y)
        x = layers.Add(name=f"res{i}_add")([x, y])
    for i, mult in enumerate((2, 1)):
        x = layers.Conv2DTranspose(width * mult, 3, strides=2, padding="same", use_bias=False,
                                   kernel_initializer=gan_initializer(), name=f"up{i}_conv")(x)
        x = _instance_norm(f"up{i}_norm")(x)
        x = layers.ReLU(name=f"up{i}_act")(x)
    x = ReflectPad2D(3, name="out_pad")(x)
    x = _conv(3, 7, "out_conv", use_bias=True)(x)
    outputs = layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(inputs, outputs, name="resnet_generator")


def build_discriminator(image_size: tuple[int, int], channels: int, cfg: dict) -> keras.Model:
    """Returns the patch discriminator: [B, H, W, channels] -> float32 patch scores
    [B, ceil(H/8), ceil(W/8), 1] (no activation: least-squares targets 1 = real, 0 = fake)."""
    h, w = image_size
    width = cfg["width"]
    inputs = keras.Input((h, w, channels), name="discriminator_input")
    x = inputs
    for i, (mult, stride) in enumerate(((1, 2), (2, 2), (4, 2), (8, 1))):  # 64-128-256-512
        x = _conv(width * mult, 4, f"d{i}_conv", strides=stride, padding="same", use_bias=(i == 0))(x)
        if i > 0:
            x = _instance_norm(f"d{i}_norm")(x)
        x = layers.LeakyReLU(0.2, name=f"d{i}_act")(x)
    outputs = _conv(1, 4, "patch_scores", padding="same", use_bias=True, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="patch_discriminator")


GAN_LOSSES = ("lsgan", "log")


def _squared_error(scores, target: float):
    """Per-example mean of ``(scores - target)^2`` over the patches [B, h, w, 1] -> [B] float32."""
    return tf.reduce_mean(tf.square(tf.cast(scores, tf.float32) - target), axis=[1, 2, 3])


def patch_gan_loss(scores, target: float, form: str = "lsgan"):
    """Returns the per-example GAN loss [B] float32 of patch scores [B, h, w, 1] (logits) against
    ``target`` (1 = real, 0 = fake), averaged over the patches.

    ``lsgan``: ``(s - target)^2``. ``log`` (the paper's Eq. 3): the cross-entropy of
    ``D = sigmoid(s)``, i.e. ``-log D`` for target 1 and ``-log(1 - D)`` for target 0, computed
    stably from the logits as ``softplus(s) - target * s``."""
    if form == "lsgan":
        return _squared_error(scores, target)
    if form == "log":
        s = tf.cast(scores, tf.float32)
        return tf.reduce_mean(tf.nn.softplus(s) - target * s, axis=[1, 2, 3])
    raise ValueError(f"gan_loss must be one of {', '.join(GAN_LOSSES)}, got {form!r}")


def _mean_abs(diff):
    """Per-example mean of ``|diff|`` over pixels and channels -> [B] float32."""
    return tf.reduce_mean(tf.abs(tf.cast(diff, tf.float32)), axis=[1, 2, 3])


@keras.saving.register_keras_serializable(package="keras_reid")
class PNGANModel(GANModel):
    """PN-GAN: re-draws a source image in a target pose (see ``keras_reid_plugins.generators.pngan``)."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model, d_condition: str = "none",
                 l1_weight: float = 10.0, pool_size: int = 0, pool_seed: int = 0,
                 gan_loss: str = "lsgan", **kwargs: Any) -> None:
        super().__init__(generator, discriminator,
                         log_names=("d_loss", "d_real", "d_fake", "g_loss", "g_gan", "g_l1"), **kwargs)
        if d_condition not in CONDITION_CHANNELS:
            raise ValueError(f"d_condition must be one of {sorted(CONDITION_CHANNELS)}, got "
                             f"{d_condition!r}")
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {', '.join(GAN_LOSSES)}, got {gan_loss!r}")
        self.d_condition = d_condition
        self.gan_loss = gan_loss
        self.l1_weight = float(l1_weight)
        self.pool_size = int(pool_size)
        self.pool_seed = int(pool_seed)
        if self.pool_size:
            # one pool per replica (synchronised on read): each replica keeps its own past fakes;
            # saved and checkpointed with the model (the first replica's), so training resumes
            # with it
            shape = (self.pool_size, *discriminator.input_shape[1:])
            self.pool = keras.Variable(keras.initializers.Zeros(), shape=shape, dtype="float32",
                                       trainable=False, synchronization="on_read",
                                       aggregation="only_first_replica", name="fake_pool")
            self.pool_seen = keras.Variable(0, shape=(), dtype="int64", trainable=False,
                                            synchronization="on_read",
                                            aggregation="only_first_replica", name="fake_pool_seen")

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def generator_input(batch: dict):
        """The generator's input: concat(source image, target skeleton image) [B, H, W, 6]."""
        return tf.concat([batch["source"], batch["target_pose"]], axis=-1)

    def discriminator_input(self, batch: dict, image):
        """The discriminator's input for ``image``: the image alone (``d_condition`` none) or
        concat(target skeleton, image) (pose) or concat(source, target skeleton, image)
        (source_pose)."""
        if self.d_condition == "pose":
            return tf.concat([batch["target_pose"], image], axis=-1)
        if self.d_condition == "source_pose":
            return tf.concat([batch["source"], batch["target_pose"], image], axis=-1)
        return image

    def call(self, batch: dict, training: bool | None = None):
        """Returns the generated images; also runs the discriminator (so every sub-model is built)."""
        batch = {k: tf.cast(v, tf.float32) for k, v in batch.items()}
        fake = self.generator(self.generator_input(batch), training=training)
        self.discriminator(self.discriminator_input(batch, fake), training=training)
        return fake

    def generate(self, batch: dict, noise: bool | None = None):
        """Returns images float32 [B, H, W, 3] in [-1, 1]: ``batch["source"]`` re-drawn in the pose
        of ``batch["target_pose"]`` (inference mode). ``noise`` is unused: PN-GAN has no noise
        source, so generation is deterministic."""
        batch = {k: tf.convert_to_tensor(batch[k], tf.float32) for k in ("source", "target_pose")}
        return self.as_graph(self._generate_graph)(batch)

    def _generate_graph(self, batch: dict):
        """G's inference pass (compiled once per model by ``generate``)."""
        return self.generator(self.generator_input(batch), training=False)

    # ------------------------------------------------------------------ image pool
    def query_pool(self, images):
        """Returns the discriminator's fake inputs for this step and updates the pool (CycleGAN's
        image pool, Shrivastava et al.). Per image, in batch order: while the pool is not full the
        image is stored and returned; once full, with probability 1/2 a random stored image is
        returned and replaced by the new one, else the new image is returned. The slots drawn in
        one step are distinct (only the first ``pool_size`` images of a batch can swap); the
        draws are stateless, keyed by the pool's seed, the replica and the images seen so far.
        Returns ``images`` itself when ``pool_size`` is 0."""
        if not self.pool_size:
            return images
        size = self.pool_size
        images = tf.cast(images, tf.float32)
        n = tf.shape(images, out_type=tf.int64)[0]
        seen = tf.convert_to_tensor(self.pool_seen.value)
        context = tf.distribute.get_replica_context()
        replica = tf.cast(context.replica_id_in_sync_group if context is not None else 0, tf.int64)
        seed = tf.stack([tf.constant(self.pool_seed, tf.int64) + 7919 * replica, seen])
        draws = tf.random.stateless_uniform(tf.reshape(n + size, [1]), seed=seed)
        use_stored = draws[:n] < 0.5
        slot_order = tf.cast(tf.argsort(draws[n:]), tf.int64)
        index = tf.range(n, dtype=tf.int64)
        position = seen + index
        fills = position < size
        slots = tf.gather(slot_order, tf.math.floormod(index, size))
        swaps = tf.logical_not(fills) & use_stored & (index < size)
        trash = tf.constant(size, tf.int64)  # one extra row takes the writes of the other images
        stored = tf.convert_to_tensor(self.pool.value)
        padded = tf.concat([stored, tf.zeros_like(stored[:1])], axis=0)
        padded = tf.tensor_scatter_nd_update(padded, tf.where(fills, position, trash)[:, None], images)
        out = tf.where(swaps[:, None, None, None], tf.gather(padded, slots), images)
        padded = tf.tensor_scatter_nd_update(padded, tf.where(swaps, slots, trash)[:, None], images)
        self.pool.assign(padded[:size])
        self.pool_seen.assign_add(n)
        return out

    # ------------------------------------------------------------------ training
    def train_step(self, batch: dict) -> dict:
        """One discriminator update, then one generator update on the same generated images (one
        generator forward pass; the generator's loss uses the updated discriminator). The
        discriminator's fake half comes through :meth:`query_pool` when ``pool_size`` > 0.
        Returns ``{"d_loss", "d_real", "d_fake", "g_loss", "g_gan", "g_l1"}``: float32 scalars,
        this replica's share of the global-batch mean (the loop sums them across replicas).
        ``d_loss = (d_real + d_fake) / 2``; ``g_loss = g_gan + g_l1`` (``g_l1`` weighted); the
        GAN terms are :func:`patch_gan_loss` of the model's ``gan_loss`` form."""
        batch = {k: tf.cast(v, tf.float32) for k, v in batch.items()}
        avg = tf.nn.compute_average_loss
        with tf.GradientTape() as g_tape:
            fake = self.generator(self.generator_input(batch), training=True)
            with g_tape.stop_recording():
                fakes_for_d = self.query_pool(self.discriminator_input(batch, tf.stop_gradient(fake)))
                with tf.GradientTape() as d_tape:
                    real_scores = self.discriminator(self.discriminator_input(batch, batch["target"]),
                                                     training=True)
                    fake_scores = self.discriminator(fakes_for_d, training=True)
                    d_real = avg(patch_gan_loss(real_scores, 1.0, self.gan_loss))
                    d_fake = avg(patch_gan_loss(fake_scores, 0.0, self.gan_loss))
                    d_loss = 0.5 * (d_real + d_fake)
                self.apply_gradients(d_tape, d_loss, self.d_optimizer,
                                     self.discriminator.trainable_variables)
            fake_scores = self.discriminator(self.discriminator_input(batch, fake), training=True)
            g_gan = avg(patch_gan_loss(fake_scores, 1.0, self.gan_loss))
            g_l1 = avg(self.l1_weight * _mean_abs(fake - batch["target"]))
            g_loss = g_gan + g_l1
        self.apply_gradients(g_tape, g_loss, self.g_optimizer, self.generator.trainable_variables)
        return self.track({"d_loss": d_loss, "d_real": d_real, "d_fake": d_fake, "g_loss": g_loss,
                           "g_gan": g_gan, "g_l1": g_l1})

    def get_config(self) -> dict:
        """Returns the base config plus the discriminator's condition, the GAN loss form, the L1
        weight and the pool."""
        config = super().get_config()
        config.update(d_condition=self.d_condition, gan_loss=self.gan_loss, l1_weight=self.l1_weight,
                      pool_size=self.pool_size, pool_seed=self.pool_seed)
        return config


def build_gan(cfg: dict, image_size: tuple[int, int]) -> PNGANModel:
    """Returns a built ``PNGANModel`` (variables created) for the plugin config ``cfg``. The
    pool's seed is drawn from Python's global generator (``keras.utils.set_random_seed`` sets it)."""
    h, w = image_size
    generator = build_generator(image_size, cfg)
    discriminator = build_discriminator(image_size, 3 + CONDITION_CHANNELS[cfg["d_condition"]], cfg)
    pool_seed = random.randrange(2 ** 31 - 1) if cfg["pool_size"] else 0
    gan = PNGANModel(generator, discriminator, d_condition=cfg["d_condition"],
                     l1_weight=cfg["l1_weight"], pool_size=cfg["pool_size"], pool_seed=pool_seed,
                     gan_loss=cfg.get("gan_loss", "lsgan"),
                     name="pngan")
    dummy = {k: tf.zeros((1, h, w, 3)) for k in ("source", "target", "target_pose")}
    gan(dummy, training=False)
    return gan
