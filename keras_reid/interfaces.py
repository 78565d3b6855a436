"""The contracts between the core and the components of each kind.

Every registered component is constructed as ``Component(config)`` where ``config``
is a validated instance of its pydantic config model (see ``keras_reid.registry``).
What it must then provide depends on its kind:

============  =====================================================================
kind          interface
============  =====================================================================
dataset       :class:`DatasetReader` - ``load() -> DatasetSplits``
filter        :class:`SemanticFilter` - uint8 ``[N, H, W, 3]`` -> float32 scores ``[N]`` in [0, 1]
masker        :class:`Masker` - uint8 ``[N, H, W, 3]`` -> float32 masks ``[N, H, W, 1]`` in [0, 1]
pose          :class:`PoseEstimator` - uint8 ``[N, H, W, 3]`` -> float32 ``[N, 18, 3]`` (y, x, score), COCO-18 order, -1 where missing
backbone      :class:`Backbone` - ``build(input_shape, num_classes) -> keras.Model``
loss          :class:`ReIDLoss` - ``(labels, outputs) -> per-example loss [B]``
generator     :class:`GeneratorFactory` - ``build(image_size) -> keras.Model`` GAN with ``train_step``/``generate``
stage         :class:`Stage` - ``run(context) -> dict`` (outputs recorded in the run folder)
============  =====================================================================
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from keras_reid.data.records import DatasetSplits
from keras_reid.registry import REGISTRY


@runtime_checkable
class DatasetReader(Protocol):
    """Reads one dataset layout. A reader class may also offer a classmethod
    ``layout_score(root) -> int`` (0 = not this layout, higher = surer; the built-ins give 10)
    so that ``keras-reid data``/``evaluate`` recognise a folder without ``--type``."""

    def load(self) -> DatasetSplits:
        """Read the dataset root and return its splits of records."""


@runtime_checkable
class SemanticFilter(Protocol):
    """Scores images for a property (e.g. a visible face). A filter may also offer
    ``detect(image) -> [(score, (y0, x0, y1, x1)), ...]`` for one uint8 image, to draw what it
    found, and ``close()`` to release native resources (MediaPipe Tasks objects)."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, 3] (RGB) -> float32 scores [N] in [0, 1]."""


@runtime_checkable
class Masker(Protocol):
    """Person masks (1 = person). Every masker also offers ``masks_for(paths, size) -> float32
    [N, H, W, 1]`` in [0, 1] for image files at ``size`` (height, width): what the stages call.
    Image-based maskers (``mediapipe_selfie``) read and resize the images and call themselves;
    maskers that read mask files named like the images (``reads_files = True``: ``synthetic``,
    ``precomputed``) resize those files by nearest-neighbour sampling and threshold them to 0/1,
    raise ``DatasetError`` naming the image when its mask file is missing, and raise
    ``UserError`` when called on bare images (they cannot know which image they see). Maskers
    holding native resources offer ``close()`` and work as context managers."""

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, 3] (RGB) -> float32 person masks [N, H, W, 1] in [0, 1]."""


@runtime_checkable
class PoseEstimator(Protocol):
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W, 3] (RGB) -> float32 keypoints [N, 18, 3] as (y, x, score)."""


@runtime_checkable
class Backbone(Protocol):
    """A backbone may also offer ``configure_training(total_steps) -> str | None``, which
    ``train_reid`` calls before ``build`` with the run's length (epochs x steps per epoch) for
    schedules that live in the model (CondenseNet's condensation); the string is logged.
    It may offer ``trunk_layers(model) -> list[keras.layers.Layer]``: the layers of the model it
    built that form its (pretrained) trunk, which ``train_reid``'s ``freeze_backbone_epochs``
    freezes while the layers the head adds train alone.
    It may offer a deploy form, ``convert(model) -> keras.Model``: given a model it built (or the
    one-output inference model ``train_reid`` cuts from it), a model for inference with the same
    outputs in inference mode (within ``keras_reid.deploy.TOLERANCE``), e.g. CondenseNet's compact
    converted model. ``train_reid`` then saves it as ``model_converted.keras`` (option
    ``convert``), the ``evaluate`` stage ranks it next to the trained model and reports both
    forms' size and latency, and ``keras-reid export`` exports it; its ``load(path)`` must load
    both forms."""

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> Any:
        """Return a keras.Model mapping float32 images [B, H, W, 3] in [0, 255] to
        ``{"features": [B, D], "logits": [B, num_classes], "embedding": [B, D']}``
        (``embedding`` is the pre-BN-neck feature used by metric losses)."""


@runtime_checkable
class ReIDLoss(Protocol):
    """A re-ID loss. It may also define ``terms(labels, outputs) -> {name: per-example [B]}``;
    then ``__call__`` is their sum and the training loop logs every term (e.g. ``softmax`` and
    ``triplet``) to the progress bar and TensorBoard."""

    def __call__(self, labels: Any, outputs: Mapping[str, Any]) -> Any:
        """int labels [B] and the backbone's outputs -> float32 per-example loss [B]."""


@runtime_checkable
class Stage(Protocol):
    def run(self, context: Any) -> Mapping[str, Any]:
        """Do the stage's work in ``context.stage_dir``; return a JSON-able summary."""


GENERATOR_KEYS = ("source", "target", "source_mask", "target_mask", "target_pose", "noise")
"""Keys of a generator's example dicts. Images are float32 [B, H, W, 3] in [-1, 1]; masks
float32 [B, H, W, 1] in [0, 1] (1 = person); ``target_pose`` float32 [B, H, W, 3] skeleton image
in [-1, 1]; ``noise`` float32 [B, z_dim] (unconditional generators such as DCGAN generate from
it; their model has a ``z_dim``). ``source`` is in every training batch; the others only if the
generator ``needs`` them."""
MASK_KEYS = ("source_mask", "target_mask")
"""The keys of :data:`GENERATOR_KEYS` that need a masker."""


@runtime_checkable
class GeneratorFactory(Protocol):
    """A registered generator component (e.g. ``Pix2Pix(config)``): declares its data and builds the GAN.

    * ``pairing``: how the ``train_generator`` stage pairs training examples:
      ``"camera_pairs"`` (camera-A image with a camera-B image of the same identity and
      sequence: the camera-pair split), ``"random_target"`` (camera-A image with N random,
      unlabelled camera-B images), ``"identity_pairs"`` (ordered pairs of images of one
      identity) or ``"unpaired"`` (single images, e.g. DCGAN).
    * ``needs``: the keys of :data:`GENERATOR_KEYS` its ``train_step`` reads;
      ``generation_needs``: those ``generate`` reads.
    * ``build(image_size)``: called inside ``strategy.scope()``; returns a ``keras.Model``
      subclass whose variables exist, with ``compile(d_optimizer=, g_optimizer=)``,
      ``build_optimizers()``, ``train_step(batch: dict) -> {name: scalar}`` (each replica's
      share of the global-batch value: ``step_logs_reduction = "sum"``; every loss term
      logged separately) and ``generate(batch: dict, noise: bool | None = None) -> float32
      [B, H, W, 3] in [-1, 1]`` (``noise`` None = the config's choice). A generator with random
      draws at generation should also take ``seeds`` (ints [B], one per image; augment passes
      each file's seed) and draw each image's randomness from its seed alone (stateless ops), so
      a file is the same whatever its batch, shard or process. Saved as ``.keras``.
    * ``optimizers(steps_per_epoch, epochs) -> {"d_optimizer": .., "g_optimizer": ..}``:
      called inside ``strategy.scope()``.
    * ``load(path) -> model``: the GAN saved at ``path`` (imports and registers its classes, so
      it works in a fresh process, e.g. a Ray actor).
    """

    pairing: str
    needs: frozenset
    generation_needs: frozenset

    def build(self, image_size: tuple[int, int]) -> Any:
        """Return the GAN ``keras.Model`` for images of ``image_size`` (height, width)."""

    def optimizers(self, steps_per_epoch: int, epochs: int) -> Mapping[str, Any]:
        """Return ``{"d_optimizer": .., "g_optimizer": ..}`` (learning-rate schedules included)."""

    def load(self, path: str) -> Any:
        """Return the GAN saved at ``path``."""


def generator_factory(spec: dict, registry: Any = None) -> GeneratorFactory:
    """The registered generator component for ``spec`` (cheap: no TensorFlow). ``registry``
    defaults to the process registry."""
    return (registry or REGISTRY).create("generator", spec)
