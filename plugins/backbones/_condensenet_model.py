"""Keras side of the ``condensenet`` backbone: learned group convolutions, the network, convert.

Imports Keras and TensorFlow: import it inside ``build``, never at module top level. Importing
it registers its layers for ``keras.saving.load_model`` (package ``keras_reid_condensenet``);
a process that loads a saved CondenseNet model must import this module first.

Learned group convolution (:class:`LearnedGroupConv`)
-----------------------------------------------------
A 1x1 convolution ``in -> out`` whose kernel is multiplied by a non-trainable 0/1 ``mask``
[in, out]. The ``out`` channels form ``G`` groups by **output channel o belongs to group
o mod G** (interleaved, as the CondenseNet paper's "group o = output o mod G"); every output of
a group shares one set of input channels. One *condensation* (:meth:`LearnedGroupConv.condense`)
makes every group drop ``in // C`` more of the input channels it still uses: those with the
smallest L1 norm of the group's masked weights (sum over the group's outputs of
``|kernel * mask|``; ties broken by the lower channel index). After ``C - 1`` condensations each
group keeps ``in - (C - 1) * (in // C)`` inputs (``in / C`` when C divides ``in``).

Schedule (self-driven, no callback or stage change): each learned layer has a non-trainable
step counter incremented by every ``call(training=True)``. With ``condense_steps = T > 0`` (the
total number of training steps, e.g. epochs x steps per epoch), the first half of training is
split into ``C - 1`` equal parts; the layer is in stage ``s = min(floor(2 (C-1) step / T), C-1)``
and condenses (inside the training step, a ``tf.cond``) whenever ``s`` exceeds the number of
condensations done so far (a non-trainable counter ``condensed``). The second half of training
(stage ``C - 1``) only fine-tunes the condensed network. ``condense_steps = 0`` disables the
automatic schedule: call :func:`condense_all` (or ``condense()`` on each layer) yourself. The
counters are saved with the weights, so a resumed run continues the schedule; ``step`` counts
forward passes in training mode (one per ``train_step``).

Group lasso: while ``condensed == C - 2`` (the stage before the last condensation) a training
call adds ``group_lasso * sum_{g, i} sqrt(sum_{o in g} (kernel[i, o] * mask[i, o])^2)`` with
``add_loss`` (``ReIDModel`` adds ``self.losses`` to the objective); in other stages the added
loss is 0.

The classifier (:class:`CondensingDense`) is condensed the same way: at the last condensation
(step >= T / 2, or a manual ``condense()``) it keeps the ``classifier_keep`` fraction of its
inputs with the largest L1 norm of their weight rows, so the converted model computes the same
logits as the trained one.

Convert (:func:`convert_model`): a new functional model computing the trained model's outputs in
inference mode, with one *layout* per dense block for its learned group convs and 3x3 group
convs (:data:`LAYOUTS`):

* ``dense``: the learned 1x1 conv as one plain ``Conv2D`` whose kernel is the masked kernel
  (zeros where a group dropped an input: the index gather and the channel shuffle are folded into
  the weights) with the following BatchNorm folded in (bias + ReLU), and the 3x3 group conv as
  one plain ``Conv2D`` with a block-diagonal kernel: G times the multiply-adds of the compact
  form, but single oneDNN convolutions with no gather, shuffle or XLA call.
* ``native``: the learned 1x1 conv as in ``dense`` and the 3x3 group conv as one
  :class:`NativeGroupConv2D` with the trained kernel (TensorFlow's own grouped convolution, one
  grouped ``CONV_2D`` in TFLite): compact 3x3 multiply-adds, no gather, shuffle or XLA call.
* ``split_native``: the learned 1x1 conv as in ``split`` (compact weights) and the 3x3 group conv
  as in ``native``.
* ``split``: :class:`CondensedPointwise` (the compact 1x1 with the channels as rows: one gather
  of the groups' kept input rows, one batched matmul, the transpose back doing the shuffle; the
  BatchNorm folded + ReLU) and :class:`SplitGroupConv` (the 3x3 group conv as G plain convs on
  channel slices): compact weights and multiply-adds.
* ``grouped``: ``ChannelGather`` (the kept inputs of group 0, then group 1, ...) +
  ``GroupConv2D(out, 1, groups=G)`` + ``ChannelShuffle(G)`` + BatchNorm, and the trained 3x3
  ``GroupConv2D``: the first converted form (then with Keras's ``Conv2D(groups=G)``, which runs
  through one XLA-compiled call per layer on CPU), kept for comparison.

The trained form's 3x3 group convs are :class:`GroupConv2D` too (``Conv2D(groups=G)``'s weights,
G plain convolutions on channel slices; see its docstring for why).

The default (``layout=None``) is ``dense`` for the first :data:`DEFAULT_DENSE_BLOCKS` blocks
(large feature maps, few channels: TensorFlow's and XNNPACK's grouped convolutions are slower
there than the block-diagonal dense one), ``split_native`` for the last
:data:`DEFAULT_COMPACT_BLOCKS` (small maps, many input channels: the compact 1x1 as a row gather
+ batched matmul beats the dense one with 4x the multiply-adds, and these blocks hold most of
the weights: CondenseNet-74 stores 10.7M weights with all of them ``native``, 4.8M like this)
and ``native`` between, chosen by measurement (``tools/bench_condensenet_layout.py``,
``tools/bench_backbones.py``). Every dense layer's BatchNorm + ReLU on its concatenated input
(and the final one) is one :class:`BatchNormReLU`. The classifier is ``ChannelGather`` +
``Dense``; every other layer keeps its weights.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_reid_plugins.backbones._head import global_pool

PACKAGE = "keras_reid_condensenet"


class _GroupedConvRetracingFilter(logging.Filter):
    """Drops TensorFlow's 'triggered tf.function retracing' warnings about Keras's ``_conv_xla``:
    on CPU Keras runs grouped convolutions through one XLA-compiled function that traces once per
    layer shape when the model is called eagerly (building, a first call), which is expected here
    and harmless (training and evaluation run inside tf.function)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("_conv_xla" in message and "retracing" in message)


if not any(isinstance(f, _GroupedConvRetracingFilter) for f in tf.get_logger().filters):
    tf.get_logger().addFilter(_GroupedConvRetracingFilter())


def _stage_of(step: Any, total: int, factor: int) -> Any:
    """Stage (0..C-1) reached after ``step`` training steps of ``total`` (float32 tensor)."""
    s = ops.floor(ops.cast(step, "float32") * (2.0 * (factor - 1)) / float(total))
    return ops.minimum(s, float(factor - 1))


@keras.saving.register_keras_serializable(package=PACKAGE)
class LearnedGroupConv(keras.layers.Layer):
    """1x1 convolution with a learned group structure (see the module docstring).

    Args: ``filters`` (divisible by ``groups``), ``groups`` G, ``condense_factor`` C,
    ``condense_steps`` (total training steps driving the schedule; 0 = manual ``condense()``),
    ``group_lasso`` (weight of the group-lasso loss in stage C-2).
    """

    def __init__(self, filters: int, groups: int = 4, condense_factor: int = 4,
                 condense_steps: int = 0, group_lasso: float = 0.0,
                 kernel_initializer: Any = "he_normal", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if filters % groups:
            raise ValueError(f"LearnedGroupConv: filters {filters} not divisible by groups {groups}")
        self.filters = int(filters)
        self.groups = int(groups)
        self.condense_factor = int(condense_factor)
        self.condense_steps = int(condense_steps)
        self.group_lasso = float(group_lasso)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape: Sequence[int]) -> None:
        cin = int(input_shape[-1])
        self.in_channels = cin
        self.kernel = self.add_weight(name="kernel", shape=(1, 1, cin, self.filters),
                                      initializer=self.kernel_initializer)
        self.mask = self.add_weight(name="mask", shape=(cin, self.filters), initializer="ones",
                                    trainable=False, autocast=False,
                                    aggregation="only_first_replica")
        self.step = self.add_weight(name="step", shape=(), initializer="zeros", dtype="float32",
                                    trainable=False, autocast=False,
                                    aggregation="only_first_replica")
        self.condensed = self.add_weight(name="condensed", shape=(), initializer="zeros",
                                         dtype="float32", trainable=False, autocast=False,
                                         aggregation="only_first_replica")

    @property
    def delta(self) -> int:
        """Input channels every group drops per condensation."""
        return self.in_channels // self.condense_factor

    # ------------------------------------------------------------------ condensation
    def _group_view(self, values: Any) -> Any:
        """[in, out] -> [in, out / G, G] (last axis = group o mod G)."""
        return ops.reshape(values, (self.in_channels, self.filters // self.groups, self.groups))

    def group_scores(self) -> Any:
        """L1 norm of each group's masked weights per input channel, [in, G]; -1 where dropped."""
        w = ops.abs(ops.convert_to_tensor(self.kernel)[0, 0] * self.mask)
        scores = ops.sum(self._group_view(w), axis=1)
        alive = self._group_view(self.mask)[:, 0, :]
        return ops.where(alive > 0, scores, -ops.ones_like(scores))

    def _next_mask(self) -> Any:
        """The mask after one more condensation (every group drops ``in // C`` more inputs)."""
        done = tf.cast(self.condensed, tf.int32)
        k = (done + 1) * self.delta  # inputs each group has dropped after this condensation
        order = tf.argsort(self.group_scores(), axis=0, stable=True)
        rank = tf.argsort(order, axis=0, stable=True)  # rank of each channel, 0 = smallest
        keep = tf.cast(rank >= k, tf.float32)  # [in, G]
        new = tf.broadcast_to(keep[:, None, :], (self.in_channels, self.filters // self.groups,
                                                 self.groups))
        return tf.reshape(new, (self.in_channels, self.filters))

    def condense(self, when: Any = True) -> None:
        """One condensation if ``when`` (a bool or scalar tensor) and fewer than C - 1 were done.

        Written as unconditional assignments of selected values, not ``tf.cond``: the mask and
        counter are ``only_first_replica`` variables, whose assignment is a cross-replica sync
        point that MirroredStrategy does not allow inside a conditional branch.
        """
        if self.delta <= 0:
            return
        do = tf.logical_and(tf.convert_to_tensor(when, tf.bool),
                            self.condensed < float(self.condense_factor - 1))
        new = self._next_mask()
        self.mask.assign(tf.where(do, new, tf.convert_to_tensor(self.mask)))
        self.condensed.assign_add(tf.cast(do, tf.float32))

    def kept_inputs(self) -> list[np.ndarray]:
        """Sorted input channel indices each group still uses (list of G int arrays)."""
        mask = np.asarray(self.mask).reshape(self.in_channels, self.filters // self.groups,
                                             self.groups)[:, 0, :]
        return [np.flatnonzero(mask[:, g] > 0) for g in range(self.groups)]

    def lasso(self) -> Any:
        """The group-lasso penalty (unweighted) of the masked weights."""
        w = ops.convert_to_tensor(self.kernel)[0, 0]
        w = ops.cast(w, "float32") * self.mask
        return ops.sum(ops.sqrt(ops.sum(ops.square(self._group_view(w)), axis=1) + 1e-12)
                       * ops.cast(self._group_view(self.mask)[:, 0, :], "float32"))

    # ------------------------------------------------------------------ forward
    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if training:
            if self.condense_steps > 0:
                self.step.assign_add(1.0)
                stage = _stage_of(self.step, self.condense_steps, self.condense_factor)
                self.condense(when=stage > self.condensed)
            if self.group_lasso > 0:
                active = ops.cast(ops.equal(self.condensed, float(self.condense_factor - 2)),
                                  "float32")
                self.add_loss(self.group_lasso * active * self.lasso())
        kernel = self.kernel * ops.cast(self.mask, self.kernel.dtype)[None, None]
        return ops.conv(inputs, kernel, strides=1, padding="valid")

    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple:
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, groups=self.groups,
                      condense_factor=self.condense_factor, condense_steps=self.condense_steps,
                      group_lasso=self.group_lasso,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class CondensingDense(keras.layers.Layer):
    """Bias-free Dense classifier with an input mask: one condensation keeps the ``keep``
    fraction of inputs with the largest L1 norm of their weight rows. With ``condense_steps``
    T > 0 it condenses at training step T / 2 (the end of the condensing half)."""

    def __init__(self, units: int, keep: float = 0.5, condense_steps: int = 0,
                 kernel_initializer: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.keep = float(keep)
        self.condense_steps = int(condense_steps)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.RandomNormal(stddev=0.001))

    def build(self, input_shape: Sequence[int]) -> None:
        cin = int(input_shape[-1])
        self.in_features = cin
        self.kernel = self.add_weight(name="kernel", shape=(cin, self.units),
                                      initializer=self.kernel_initializer)
        self.mask = self.add_weight(name="mask", shape=(cin,), initializer="ones", trainable=False,
                                    autocast=False, aggregation="only_first_replica")
        self.step = self.add_weight(name="step", shape=(), initializer="zeros", trainable=False,
                                    autocast=False, aggregation="only_first_replica")
        self.condensed = self.add_weight(name="condensed", shape=(), initializer="zeros",
                                         trainable=False, autocast=False,
                                         aggregation="only_first_replica")

    @property
    def kept_count(self) -> int:
        return max(1, int(round(self.keep * self.in_features)))

    def condense(self, when: Any = True) -> None:
        """Keep the ``keep`` fraction of inputs (largest L1 norm of weight rows) if ``when``;
        once only (unconditional assignments of selected values, as in LearnedGroupConv)."""
        if self.keep >= 1.0:
            return
        do = tf.logical_and(tf.convert_to_tensor(when, tf.bool), self.condensed < 1.0)
        norms = tf.reduce_sum(tf.abs(tf.convert_to_tensor(self.kernel)), axis=1)
        order = tf.argsort(-tf.cast(norms, tf.float32), stable=True)
        kept = order[: self.kept_count]
        new = tf.scatter_nd(kept[:, None], tf.ones_like(kept, tf.float32), (self.in_features,))
        self.mask.assign(tf.where(do, new, tf.convert_to_tensor(self.mask)))
        self.condensed.assign(tf.where(do, 1.0, tf.convert_to_tensor(self.condensed)))

    def kept_inputs(self) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.mask) > 0)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if training and self.condense_steps > 0 and self.keep < 1.0:
            self.step.assign_add(1.0)
            self.condense(when=self.step * 2.0 >= float(self.condense_steps))
        x = inputs * ops.cast(self.mask, inputs.dtype)
        return ops.matmul(x, self.kernel)

    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(units=self.units, keep=self.keep, condense_steps=self.condense_steps,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelGather(keras.layers.Layer):
    """Selects channels ``indices`` of the last axis (an index layer of the converted model)."""

    def __init__(self, indices: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.indices = [int(i) for i in indices]

    def call(self, inputs: Any) -> Any:
        return ops.take(inputs, np.asarray(self.indices, np.int32), axis=-1)

    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple:
        return (*input_shape[:-1], len(self.indices))

    def get_config(self) -> dict:
        return {**super().get_config(), "indices": self.indices}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelShuffle(keras.layers.Layer):
    """Channel shuffle with ``groups`` G: contiguous channel g * (C / G) + j -> j * G + g."""

    def __init__(self, groups: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = int(groups)

    def call(self, inputs: Any) -> Any:
        shape = ops.shape(inputs)
        c = inputs.shape[-1]
        x = ops.reshape(inputs, (*shape[:-1], self.groups, c // self.groups))
        x = ops.swapaxes(x, -1, -2)
        return ops.reshape(x, (*shape[:-1], c))

    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple:
        return tuple(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "groups": self.groups}


def rows_pointwise(inputs: Any, indices: np.ndarray, kernel: Any) -> Any:
    """A condensed 1x1 conv with the channels as rows: ``inputs`` [..., in] channels-last,
    ``indices`` the G groups' kept input channels concatenated (G x n), ``kernel`` [G, n, per].
    One transpose, one gather of whole rows, one batched matmul, and the transpose back to
    channels-last, which puts output j of group g at channel j * G + g (the channel shuffle).
    What :class:`CondensedPointwise` runs (``tools/bench_condensenet_layout.py`` times it as
    ``lgc_rows``)."""
    groups, n, per = (int(v) for v in kernel.shape)
    shape = tf.shape(inputs)
    rows = tf.transpose(tf.reshape(inputs, (-1, int(inputs.shape[-1]))))
    picked = tf.reshape(tf.gather(rows, indices), (groups, n, -1))  # [G, n, pixels]
    y = tf.matmul(picked, kernel, transpose_a=True)  # [G, pixels, per]
    return tf.reshape(tf.transpose(y, (1, 2, 0)), tf.concat([shape[:-1], [groups * per]], 0))


@keras.saving.register_keras_serializable(package=PACKAGE)
class CondensedPointwise(keras.layers.Layer):
    """A condensed learned group conv (``split`` layout): ``activation(conv1x1 + bias)`` where
    output channel o belongs to group o mod G and group g sees only input channels ``indices[g]``.

    Compact kernel [G, 1, 1, n, out / G] (column j of group g = output j * G + g), computed with
    the channels as rows: one gather of the G groups' kept input rows, one batched matmul, and a
    transpose back to channels-last that leaves the outputs in the o mod G order. (Per group a
    channel gather and a 1x1 conv, concatenated and put back in order by a second channel
    gather, computes the same 1.3-2.3x slower: a gather along the last axis copies single
    floats.) ``bias`` holds a folded BatchNorm.
    """

    def __init__(self, filters: int, indices: Sequence[Sequence[int]],
                 activation: str | None = "relu", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.indices = [[int(i) for i in group] for group in indices]
        self.groups = len(self.indices)
        if not self.groups or self.filters % self.groups or len({len(g) for g in self.indices}) != 1:
            raise ValueError(f"CondensedPointwise: {self.groups} groups of unequal size or filters "
                             f"{self.filters} not divisible by them")
        self.activation = keras.activations.get(activation)
        self._flat = np.concatenate(self.indices).astype(np.int32)

    def build(self, input_shape: Sequence[int]) -> None:
        self.kernel = self.add_weight(name="kernel", shape=(self.groups, 1, 1, len(self.indices[0]),
                                                            self.filters // self.groups),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs: Any) -> Any:
        kernel = tf.reshape(self.kernel, (self.groups, len(self.indices[0]), self.filters // self.groups))
        return self.activation(rows_pointwise(inputs, self._flat, kernel) + self.bias)

    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple:
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "indices": self.indices,
                "activation": keras.activations.serialize(self.activation)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SplitGroupConv(keras.layers.Layer):
    """A bias-free group convolution ('same' padding, stride 1) computed as G plain convolutions
    on contiguous channel slices, concatenated (group g: the g-th slice of inputs and of outputs,
    as ``Conv2D(groups=G)``). Kernel [G, kh, kw, in / G, filters / G]."""

    def __init__(self, filters: int, kernel_size: int, groups: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.groups = int(filters), int(kernel_size), int(groups)

    def build(self, input_shape: Sequence[int]) -> None:
        cin = int(input_shape[-1])
        if cin % self.groups or self.filters % self.groups:
            raise ValueError(f"SplitGroupConv: channels {cin} -> {self.filters} not divisible by "
                             f"groups {self.groups}")
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(self.groups, k, k, cin // self.groups,
                                                            self.filters // self.groups),
                                      initializer="he_normal")

    def call(self, inputs: Any) -> Any:
        return _conv_per_group(inputs, [self.kernel[g] for g in range(self.groups)], padding="same")

    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple:
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "groups": self.groups}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupConv2D(keras.layers.Conv2D):
    """``Conv2D(groups=G)`` with the same weights and outputs, computed as G plain convolutions on
    contiguous channel slices (group g: the g-th slice of inputs, kernel outputs and outputs),
    concatenated.

    Keras's TensorFlow backend runs every grouped convolution through an XLA-compiled call, whose
    CPU kernel (and gradient) is far slower than oneDNN's plain convolutions: a CondenseNet
    ``small`` training step at 64x32, batch 32, took ~600-860 ms with ``Conv2D(groups=4)`` and
    ~80 ms with this layer (``tools/bench_condensenet_layout.py``, part 3). The kernel keeps
    ``Conv2D``'s shape ``[kh, kw, in / G, filters]``, so weights move between the two freely."""

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        cout = self.filters // self.groups
        return _conv_per_group(inputs, [kernel[..., g * cout:(g + 1) * cout] for g in range(self.groups)],
                               strides=list(self.strides), padding=self.padding,
                               dilation_rate=self.dilation_rate, data_format=self.data_format)


@keras.saving.register_keras_serializable(package=PACKAGE)
class NativeGroupConv2D(keras.layers.Conv2D):
    """``Conv2D(groups=G)`` (same kernel shape, config and outputs) run as one TensorFlow grouped
    convolution, ``tf.nn.convolution`` with a kernel of ``in / G`` input channels, instead of
    Keras's XLA-compiled call. TensorFlow runs that op on CPU (forward only: there is no CPU
    gradient for the kernel, so the trained form uses :class:`GroupConv2D`), and the TFLite
    converter makes it one grouped ``CONV_2D`` that XNNPACK runs natively: the converted model's
    ``native`` layout (``tools/bench_condensenet_layout.py``).

    Bias-free and without activation: TensorFlow's graph optimizer fuses a convolution with a
    following bias add (and ReLU) into a kernel that has no grouped form on CPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.use_bias or self.activation is not keras.activations.linear:
            raise ValueError(f"NativeGroupConv2D {self.name}: use_bias=False and no activation "
                             "(TensorFlow cannot fuse a bias or activation into a grouped "
                             "convolution on CPU); add them as separate layers")

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        return tf.nn.convolution(inputs, kernel, strides=list(self.strides),
                                 padding=self.padding.upper(), dilations=list(self.dilation_rate),
                                 data_format="NCHW" if self.data_format == "channels_first"
                                 else "NHWC")


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormReLU(keras.layers.BatchNormalization):
    """Inference-only ``relu(BatchNormalization(x))`` (same weights and config, channels-last
    4-D inputs) as TensorFlow's fused batch norm followed by a ReLU, which TensorFlow's graph
    optimizer runs as one pass over the tensor instead of Keras's three (scale, shift, ReLU) and
    the per-call arithmetic on the moving statistics. The converted model uses it for the BatchNorm +
    ReLU on each dense layer's concatenated input and the final one: ~6% of its time at batch 32
    (``tools/bench_backbones.py``)."""

    def build(self, input_shape: Sequence[int]) -> None:
        if len(input_shape) != 4 or self.axis not in (-1, 3) or not (self.scale and self.center):
            raise ValueError(f"BatchNormReLU {self.name}: needs 4-D channels-last inputs, "
                             f"scale and center (got shape {input_shape}, axis {self.axis})")
        super().build(input_shape)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if training:
            raise ValueError(f"BatchNormReLU {self.name} is inference-only (a converted model); "
                             "train the model it was converted from")
        y = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32"),
            mean=tf.cast(self.moving_mean, "float32"),
            variance=tf.cast(self.moving_variance, "float32"),
            epsilon=self.epsilon, is_training=False)[0]
        return tf.nn.relu(y)


def _conv_per_group(inputs: Any, kernels: Sequence[Any], data_format: str | None = None,
                    **conv: Any) -> Any:
    """A group convolution as one plain ``ops.conv`` per group: group g convolves the g-th of
    ``len(kernels)`` contiguous channel slices of ``inputs`` with ``kernels[g]``; the outputs
    are concatenated in group order."""
    axis = 1 if data_format == "channels_first" else -1
    size = inputs.shape[axis] // len(kernels)
    parts = []
    for g, kernel in enumerate(kernels):
        x = inputs[:, g * size:(g + 1) * size] if axis == 1 else inputs[..., g * size:(g + 1) * size]
        parts.append(ops.conv(x, kernel, data_format=data_format, **conv))
    return ops.concatenate(parts, axis=axis)


#: layouts of the converted model's dense blocks (see the module docstring)
LAYOUTS = ("dense", "native", "split_native", "split", "grouped")
#: the default converted layout: ``dense`` for this many first blocks, ``split_native`` for the
#: last :data:`DEFAULT_COMPACT_BLOCKS` after them, ``native`` between (see the module docstring)
DEFAULT_DENSE_BLOCKS = 2
DEFAULT_COMPACT_BLOCKS = 2


def block_layouts(layout: str | Sequence[str] | None, blocks: int) -> list[str]:
    """One layout per dense block: ``None`` = the default, a name = every block, or a list."""
    if layout is None:
        dense = min(DEFAULT_DENSE_BLOCKS, blocks)
        compact = min(DEFAULT_COMPACT_BLOCKS, blocks - dense)
        chosen = ["dense"] * dense + ["native"] * (blocks - dense - compact) + ["split_native"] * compact
    elif isinstance(layout, str):
        chosen = [layout] * blocks
    else:
        chosen = list(layout)
    if len(chosen) != blocks or any(v not in LAYOUTS for v in chosen):
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)} or a list of {blocks} "
                         f"of them (one per dense block), got {layout!r}")
    return chosen


# ---------------------------------------------------------------------- network
def build_condensenet(cfg: Any, input_shape: Sequence[int], num_classes: int | None, *,
                      stages: Sequence[int], growth: Sequence[int],
                      trained: keras.Model | None = None, name: str = "condensenet_reid",
                      layout: str | Sequence[str] | None = None) -> keras.Model:
    """The CondenseNet re-ID model for ``cfg`` (a ``CondenseNetConfig``). With ``trained`` (a model
    this function built), returns its converted compact form with the trained weights;
    ``num_classes`` None (converting a features-only model) leaves out the classifier."""
    src = {layer.name: layer for layer in trained.layers} if trained is not None else {}
    layouts = block_layouts(layout, len(stages)) if trained is not None else []

    inputs = keras.Input(tuple(int(v) for v in input_shape), name="images")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(2 * growth[0], 3, strides=2, padding="same", use_bias=False,
                                  name="stem_conv")(x)
    for b, (layers, k) in enumerate(zip(stages, growth)):
        for i in range(layers):
            x = _dense_layer(cfg, x, f"block{b + 1}_layer{i + 1}", k, src,
                             layouts[b] if trained is not None else None)
        if b < len(stages) - 1:
            x = keras.layers.AveragePooling2D(2, padding="same", name=f"transition{b + 1}_pool")(x)
    x = _bn_relu(x, "final_bn", "final_relu", converted=trained is not None)
    outputs = _head(cfg, global_pool(x, cfg.pooling), num_classes, src if trained is not None else None)
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        outputs = {k: keras.layers.Activation("linear", dtype="float32", name=f"{k}_float32")(v)
                   for k, v in outputs.items()}
    model = keras.Model(inputs, outputs, name=name if trained is None else f"{name}_converted")
    for layer in model.layers:  # converted form: every unchanged layer keeps its trained weights
        old = src.get(layer.name)
        # isinstance: train_reid's sync_batchnorm turns trained BatchNormalization layers into a
        # subclass (SyncBatchNormalization) with the same weights
        # (or the other way round: a model trained with Conv2D(groups) before GroupConv2D existed)
        if old is not None and _same_kind(old, layer) and layer.weights:
            layer.set_weights(old.get_weights())
    return model


def _dense_layer(cfg: Any, x: Any, p: str, k: int, src: dict, layout: str | None) -> Any:
    """Dense layer ``p`` (growth ``k``): BN, ReLU, learned group conv, BN, ReLU, 3x3 group conv,
    concatenated to its input. ``layout`` None: the trainable form; else the converted form of
    the trained layers ``src`` (``grouped``: condensed convs; ``dense``/``split``: folded)."""
    g = cfg.groups
    y = _bn_relu(x, f"{p}_bn1", f"{p}_relu1", converted=layout is not None)
    lgc_name = f"{p}_lgc"
    if layout is None or layout == "grouped":
        if layout is None:
            y = LearnedGroupConv(cfg.bottleneck * k, groups=g, condense_factor=cfg.condense_factor,
                                 condense_steps=cfg.condense_steps or 0,
                                 group_lasso=cfg.group_lasso, name=lgc_name)(y)
        else:
            y = _condensed_conv(src[lgc_name], y, lgc_name)
        y = keras.layers.BatchNormalization(name=f"{p}_bn2")(y)
        y = keras.layers.ReLU(name=f"{p}_relu2")(y)
        y = GroupConv2D(k, 3, padding="same", groups=g, use_bias=False, name=f"{p}_conv2")(y)
    else:
        y = _converted_layer(src, p, y, layout)
    return keras.layers.Concatenate(name=f"{p}_concat")([x, y])


def _same_kind(a: keras.layers.Layer, b: keras.layers.Layer) -> bool:
    """Whether ``b`` takes ``a``'s weights: one's class is the other's or a subclass of it, or
    both are BatchNormalization (a trained SyncBatchNormalization, a converted BatchNormReLU)."""
    bn = keras.layers.BatchNormalization
    return isinstance(a, type(b)) or isinstance(b, type(a)) or (isinstance(a, bn) and isinstance(b, bn))


def _bn_relu(x: Any, bn: str, relu: str, *, converted: bool) -> Any:
    """BatchNormalization ``bn`` + ReLU ``relu``; one :class:`BatchNormReLU` (named ``bn``, the
    trained layer's weights) in a converted model."""
    if converted:
        return BatchNormReLU(name=bn)(x)
    return keras.layers.ReLU(name=relu)(keras.layers.BatchNormalization(name=bn)(x))


def _head(cfg: Any, pooled: Any, num_classes: int | None, src: dict | None) -> dict:
    """The head of ``_head.reid_head`` with a condensing classifier (``src``: the trained
    model's layers when converting, its classifier then gathers the inputs it kept). Returns
    the outputs ``{"embedding", "features", "logits"?}``."""
    e = pooled
    if cfg.embedding_dim:
        e = keras.layers.Dense(cfg.embedding_dim, name="reduction")(e)
    embedding = e
    if cfg.bn_neck:
        features = keras.layers.BatchNormalization(center=False, name="bn_neck")(embedding)
    else:
        features = embedding
    y = keras.layers.Dropout(cfg.dropout, name="dropout")(features) if cfg.dropout > 0 else features
    if num_classes is None:   # converting a features-only model: there is no classifier to keep
        return {"embedding": embedding, "features": features}
    if src is None:
        logits = CondensingDense(num_classes, keep=cfg.classifier_keep,
                                 condense_steps=cfg.condense_steps or 0, name="classifier")(y)
    else:
        clf = src["classifier"]
        kept = clf.kept_inputs()
        y = ChannelGather(kept, name="classifier_gather")(y)
        dense = keras.layers.Dense(num_classes, use_bias=False, name="classifier")
        logits = dense(y)
        dense.set_weights([np.asarray(clf.kernel)[kept]])
    return {"embedding": embedding, "features": features, "logits": logits}


def _condensed_conv(lgc: LearnedGroupConv, x: Any, name: str) -> Any:
    """Gather + grouped 1x1 Conv2D + channel shuffle computing what ``lgc`` computes."""
    g, out = lgc.groups, lgc.filters
    kept = lgc.kept_inputs()
    counts = {len(k) for k in kept}
    if len(counts) != 1:  # pragma: no cover - condense() drops the same number in every group
        raise ValueError(f"{name}: groups keep different numbers of inputs {sorted(counts)}")
    n = counts.pop()
    kernel = np.asarray(lgc.kernel)[0, 0]  # [in, out]
    per = out // g
    grouped = np.zeros((1, 1, n, out), kernel.dtype)
    for gi in range(g):
        cols = np.arange(per) * g + gi  # the group's outputs o = j * G + g
        grouped[0, 0, :, gi * per:(gi + 1) * per] = kernel[np.ix_(kept[gi], cols)]
    x = ChannelGather(np.concatenate(kept), name=f"{name}_gather")(x)
    conv = GroupConv2D(out, 1, groups=g, use_bias=False, name=f"{name}_gconv")
    x = conv(x)
    conv.set_weights([grouped])
    return ChannelShuffle(g, name=f"{name}_shuffle")(x)


def _folded_bn(bn: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) float64 of an inference-mode BatchNormalization: bn(z) = z * scale + shift."""
    mean = np.asarray(bn.moving_mean, np.float64)
    var = np.asarray(bn.moving_variance, np.float64)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def _converted_layer(src: dict, p: str, x: Any, layout: str) -> Any:
    """Learned group conv + BatchNorm + ReLU + 3x3 group conv of layer ``p`` of the trained model
    (``src``: its layers by name) in the ``dense``, ``native``, ``split_native`` or ``split``
    layout (module docstring)."""
    lgc, conv2 = src[f"{p}_lgc"], src[f"{p}_conv2"]
    scale, shift = _folded_bn(src[f"{p}_bn2"])
    kernel = np.asarray(lgc.kernel, np.float64)[0, 0] * np.asarray(lgc.mask)  # [in, out]
    kernel = (kernel * scale[None, :]).astype(np.float32)
    bias = shift.astype(np.float32)
    g, out = lgc.groups, lgc.filters
    k3 = np.asarray(conv2.kernel)  # [kh, kw, out / G, k]
    k = k3.shape[-1]
    cin_g, cout_g = out // g, k // g
    if layout in ("dense", "native"):  # 1x1: the masked kernel, gather and shuffle folded in
        pointwise = keras.layers.Conv2D(out, 1, activation="relu", name=f"{p}_lgc_dense")
        x = pointwise(x)
        pointwise.set_weights([kernel[None, None], bias])
    else:  # 1x1: compact, per group a gather of its kept inputs
        kept = lgc.kept_inputs()
        per = out // g
        pointwise = CondensedPointwise(out, kept, name=f"{p}_lgc_split")
        x = pointwise(x)
        compact = np.stack([kernel[np.ix_(kept[gi], np.arange(per) * g + gi)] for gi in range(g)])
        pointwise.set_weights([compact[:, None, None], bias])
    if layout == "dense":  # 3x3: block-diagonal plain conv
        full = np.zeros((*k3.shape[:2], out, k), k3.dtype)
        for gi in range(g):
            full[:, :, gi * cin_g:(gi + 1) * cin_g, gi * cout_g:(gi + 1) * cout_g] = \
                k3[..., gi * cout_g:(gi + 1) * cout_g]
        conv = keras.layers.Conv2D(k, k3.shape[0], padding="same", use_bias=False,
                                   name=f"{p}_conv2_dense")
        weights = full
    elif layout == "split":  # 3x3: G plain convs on channel slices
        conv = SplitGroupConv(k, k3.shape[0], g, name=f"{p}_conv2_split")
        weights = np.stack([k3[..., gi * cout_g:(gi + 1) * cout_g] for gi in range(g)])
    else:  # native, split_native - 3x3: one TensorFlow grouped conv with the trained kernel
        conv = NativeGroupConv2D(k, k3.shape[0], padding="same", groups=g, use_bias=False,
                                 name=f"{p}_conv2_native")
        weights = k3
    x = conv(x)
    conv.set_weights([weights])
    return x


def learned_layers(model: keras.Model) -> list:
    """The ``LearnedGroupConv`` and ``CondensingDense`` layers of ``model``."""
    return [l for l in model.layers if isinstance(l, (LearnedGroupConv, CondensingDense))]


def condense_all(model: keras.Model, classifier: bool | None = None) -> int:
    """One manual condensation of every learned group conv of ``model``; the classifier too once
    the convs have had their last one (``classifier`` None) or when ``classifier`` is True.
    Returns the number of condensations the convs have had."""
    convs = [l for l in learned_layers(model) if isinstance(l, LearnedGroupConv)]
    for layer in convs:
        layer.condense()
    done = int(np.asarray(convs[0].condensed)) if convs else 0
    last = bool(convs) and done >= convs[0].condense_factor - 1
    for layer in learned_layers(model):
        if isinstance(layer, CondensingDense) and (classifier or (classifier is None and last)):
            layer.condense()
    return done


def convert_model(cfg: Any, model: keras.Model, *, stages: Sequence[int],
                  growth: Sequence[int], layout: str | Sequence[str] | None = None) -> keras.Model:
    """The compact inference model of a trained CondenseNet ``model`` (see the module docstring).

    ``model`` is what :func:`build_condensenet` built (outputs ``{"embedding", "features",
    "logits"}``) or a one-output inference model cut from it (``train_reid``'s ``model.keras``:
    the features; ``classifier.keras``: the logits); the converted model has the same outputs."""
    shape = tuple(model.inputs[0].shape[1:])
    names = {layer.name for layer in model.layers}
    num_classes = int(model.get_layer("classifier").units) if "classifier" in names else None
    converted = build_condensenet(cfg, shape, num_classes, stages=stages, growth=growth,
                                  trained=model, name=model.name, layout=layout)
    if isinstance(model.output, dict):
        return converted
    # one output: the logits when the classifier was kept for it, else the features
    output = "logits" if num_classes is not None else "features"
    return keras.Model(converted.inputs, converted.output[output], name=converted.name)
