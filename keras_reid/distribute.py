"""Distribution strategies from the recipe: one device, mirrored, multi-worker.

``make_strategy(config)`` turns the recipe's ``strategy:`` section into a
``tf.distribute.Strategy``; ``is_chief``/``worker_index``/``num_workers`` tell a process
where it stands in a multi-worker cluster (one process per machine, cluster from ``TF_CONFIG``).

Multi-worker: create the strategy at program start, before any other TensorFlow op runs
(no tensor, no variable, no ``tf.config`` query that initialises the runtime). TensorFlow
configures its collective ops when the runtime starts and refuses afterwards; ``make_strategy``
turns that refusal into a ``UserError`` saying so. Every worker must run the same program
(same model, same number of steps): the workers train in lockstep and a worker that stops
early leaves the others waiting in an all-reduce.

NOTE for editors: this module is imported by recipe validation (``StrategyConfig``),
so it must not import TensorFlow at module level; import it inside functions.
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from keras_reid.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf  # deferred: TensorFlow, recipe validation imports this module


class StrategyConfig(BaseModel):
    """``strategy:`` section of a recipe.

    ``type``: ``one_device`` (the first GPU, else the CPU, or ``devices[0]``), ``mirrored`` (all
    GPUs of this machine, or ``devices``), ``multi_worker`` (all local GPUs or the CPU of every
    worker in ``TF_CONFIG``). ``communication``: all-reduce implementation (``auto`` lets
    TensorFlow choose; ``nccl`` needs GPUs; ``ring`` is TensorFlow's ring collectives for
    ``multi_worker`` and the copy-based hierarchical all-reduce for ``mirrored``).
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["one_device", "mirrored", "multi_worker"] = "one_device"
    devices: list[str] | None = None
    communication: Literal["auto", "ring", "nccl"] = "auto"


def make_strategy(config: StrategyConfig | dict | None = None) -> "tf.distribute.Strategy":
    """Return the ``tf.distribute.Strategy`` that ``config`` describes.

    ``one_device``: ``OneDeviceStrategy`` on ``devices[0]``; without devices TensorFlow's default
    strategy (first GPU, else the CPU), which is much faster than OneDeviceStrategy on CPU.
    ``mirrored``: ``MirroredStrategy`` over ``devices``, else all GPUs of this machine, else all
    logical CPU devices if several were configured (tests do this), else the one CPU.
    ``multi_worker``: ``MultiWorkerMirroredStrategy`` with the cluster from ``TF_CONFIG``; must be
    called before any other TensorFlow op (see the module docstring).
    Raises ``UserError`` for an unknown device, a missing or malformed ``TF_CONFIG``, or NCCL
    without GPUs.
    """
    if config is None:
        config = StrategyConfig()
    elif isinstance(config, dict):
        config = StrategyConfig.model_validate(config)
    if config.type == "multi_worker":
        return _multi_worker(config)

    import tensorflow as tf  # deferred: TensorFlow, recipe validation imports this module

    if config.type == "one_device":
        if config.devices:
            return tf.distribute.OneDeviceStrategy(_check_devices(config.devices[:1])[0])
        # No device named: TensorFlow's default strategy, which places work on the first GPU
        # if there is one. OneDeviceStrategy would pin every op to the device explicitly, and
        # on CPU that makes a ResNet50 training step ~1.8x slower (3.4 vs 1.9 s at batch 32,
        # 64x32, 2 cores; measured with the training loop of keras_reid.training).
        return tf.distribute.get_strategy()

    # mirrored
    if config.devices:
        devices = _check_devices(config.devices)
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=_mirrored_ops(config, devices))


def is_chief(strategy: Any = None) -> bool:
    """Return True unless this process is a non-chief worker of a multi-worker strategy.

    The chief is the ``chief`` task if the cluster has one, else worker 0. Only the chief
    writes results (models, summaries, metrics); every worker still takes part in checkpoint saves.
    """
    task_type, task_id, cluster = _task(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def worker_index(strategy: Any = None) -> int:
    """Return this process's position among the training workers (0 = the chief).

    0 for single-machine strategies. With a ``chief`` task in the cluster, the chief is 0 and
    worker i is i + 1; otherwise worker i is i.
    """
    task_type, task_id, cluster = _task(strategy)
    if task_type is None or task_type == "chief":
        return 0
    return int(task_id) + (1 if "chief" in cluster else 0)


def num_workers(strategy: Any = None) -> int:
    """Return the number of training processes (chief + workers); 1 for single-machine strategies."""
    task_type, _, cluster = _task(strategy)
    if task_type is None:
        return 1
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def barrier(strategy: Any) -> None:
    """Return when every worker of a multi-worker ``strategy`` has called it (an all-reduce of
    one number); at once for any other strategy. A worker that died makes the others raise a
    ``tf.errors.OpError`` here (TensorFlow's peer health checks) instead of waiting for ever."""
    if num_workers(strategy) <= 1:
        return
    import tensorflow as tf  # deferred: TensorFlow, recipe validation imports this module

    if id(strategy) not in _BARRIERS:    # traced once per strategy

        @tf.function
        def _all_reduce():
            value = strategy.run(lambda: tf.constant(1.0))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

        _BARRIERS[id(strategy)] = _all_reduce
    _BARRIERS[id(strategy)]()


_BARRIERS: dict[int, Any] = {}


# ---------------------------------------------------------------------------- internals


def _task(strategy: Any) -> tuple[str | None, int | None, dict]:
    """(task_type, task_id, cluster dict) of a multi-worker strategy, else (None, None, {})."""
    import tensorflow as tf  # deferred: TensorFlow, recipe validation imports this module

    if strategy is None:
        strategy = tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None, None, {}
    cluster = resolver.cluster_spec().as_dict()
    if not cluster or resolver.task_type is None:
        return None, None, {}
    return resolver.task_type, resolver.task_id, cluster


def _check_devices(devices: list[str]) -> list[str]:
    """Canonical names of the requested devices; UserError naming the unknown one and the choices."""
    import tensorflow as tf  # deferred: TensorFlow, recipe validation imports this module

    available = {}
    for d in tf.config.list_logical_devices():
        spec = tf.DeviceSpec.from_string(d.name)
        available[(spec.device_type.upper(), spec.device_index)] = d.name
    out = []
    for name in devices:
        try:
            spec = tf.DeviceSpec.from_string(name if ":" in name else f"/{name}:0")
        except (ValueError, TypeError):
            spec = None
        key = (spec.device_type.upper(), spec.device_index or 0) if spec and spec.device_type else None
        if key not in available:
            raise UserError(
                f"strategy.devices: unknown device '{name}'; this machine has "
                f"{', '.join(sorted(available.values()))} (write e.g. '/gpu:0' or '/cpu:0')")
        out.append(available[key])
    return out


def _mirrored_ops(config: StrategyConfig, devices: list[str]) -> Any:
    """Cross-device ops for MirroredStrategy from ``communication`` (None = TensorFlow's choice)."""
    import tensorflow as tf  # deferred: TensorFlow, recipe validation imports this module

    if config.communication == "auto":
        if any("GPU" in d.upper() for d in devices):
            return None  # TensorFlow's choice (NCCL on Linux GPUs)
        # CPU replicas: TensorFlow would pick collective ops, whose instance keys restart at the
        # same value for every new strategy, so a second strategy in one process (tests, a
        # notebook) collides with the first. Reducing on one device has no such state.
        return tf.distribute.ReductionToOneDevice()
    if config.communication == "nccl":
        if not any("GPU" in d.upper() for d in devices):
            raise UserError("strategy.communication 'nccl' needs GPUs and this strategy has none; "
                            "use communication: auto")
        return tf.distribute.NcclAllReduce()
    return tf.distribute.HierarchicalCopyAllReduce()


def read_tf_config() -> dict:
    """Return the parsed ``TF_CONFIG`` (cluster and task), or raise a ``UserError`` saying what is wrong."""
    raw = os.environ.get("TF_CONFIG")
    hint = ('set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    if not raw:
        raise UserError(f"strategy multi_worker needs the cluster in the TF_CONFIG environment "
                        f"variable, which is not set; {hint}")
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON ({exc.msg} at char {exc.pos}); {hint}") from None
    if not isinstance(tf_config, dict):
        raise UserError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task'; {hint}")
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise UserError(f"TF_CONFIG has no 'cluster' mapping of job names to host:port lists; {hint}")
    for job, hosts in cluster.items():
        if not isinstance(hosts, list) or not hosts or not all(
                isinstance(h, str) and ":" in h for h in hosts):
            raise UserError(f"TF_CONFIG cluster job '{job}' must be a non-empty list of 'host:port' "
                            f"strings, got {hosts!r}; {hint}")
    if "worker" not in cluster and "chief" not in cluster:
        raise UserError(f"TF_CONFIG cluster has no 'worker' (or 'chief') job; {hint}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UserError(f"TF_CONFIG has no 'task' with 'type' and 'index' saying which worker this "
                        f"process is; {hint}")
    ttype, index = task["type"], task["index"]
    if ttype not in cluster:
        raise UserError(f"TF_CONFIG task type '{ttype}' is not a job of the cluster "
                        f"({', '.join(cluster)}); {hint}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[ttype]):
        raise UserError(f"TF_CONFIG task index {index!r} is out of range for job '{ttype}' "
                        f"({len(cluster[ttype])} hosts); {hint}")
    return tf_config


def _multi_worker(config: StrategyConfig) -> "tf.distribute.Strategy":
    """MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (validated first)."""
    if config.devices:
        raise UserError("strategy.devices cannot be used with multi_worker (each worker uses all "
                        "its GPUs, or its CPU); limit a worker's GPUs with CUDA_VISIBLE_DEVICES")
    read_tf_config()
    import tensorflow as tf  # deferred: TensorFlow, recipe validation imports this module

    impl = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }[config.communication]
    options = tf.distribute.experimental.CommunicationOptions(implementation=impl)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except RuntimeError as exc:
        raise UserError(
            "strategy multi_worker must be created at program start, before any other TensorFlow "
            f"operation ({exc}); create it first (keras-reid run does) and do not import code "
            "that runs TensorFlow ops before it") from None
    except ValueError as exc:
        raise UserError(f"TF_CONFIG could not be used for multi_worker: {exc}") from None
