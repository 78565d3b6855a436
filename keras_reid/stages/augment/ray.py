"""The augment stage on Ray (optional extra ``keras-reid[ray]``): Ray Data over the work items,
with actors that load the generator, masker and filters once and write their images.

Every actor writes into the same stage folder (a shared file system on a cluster, as for the
rest of the run folder); the driver collects the manifest rows as they stream back and appends
them to ``manifest-ray.jsonl``, so an interrupted Ray run resumes like a local one.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np

from keras_reid.errors import UserError
from keras_reid.stages.augment.worker import Worker


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class GeneratorActor:
    """A Ray Data actor: one :class:`~keras_reid.stages.augment.worker.Worker` per actor."""

    def __init__(self, worker_kwargs: dict) -> None:
        self.worker = Worker(**worker_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = list(batch)
        items = [{k: _plain(v) for k, v in zip(keys, values)} for values in zip(*batch.values())]
        rows = self.worker.process(items)
        return {"row": np.array([json.dumps(r, sort_keys=True) for r in rows], dtype=object)}

    def __del__(self) -> None:  # pragma: no cover - runs in the actor process
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()


def run(items: list[dict], worker_kwargs: dict, cfg: Any) -> Iterable[list[dict]]:
    """Yield lists of manifest rows as Ray Data produces them (starting or joining Ray)."""
    try:
        import ray  # deferred: Ray, an optional extra; missing, it is a one-line error
    except ImportError:
        raise UserError("engine: ray needs Ray; install it with: pip install 'keras-reid[ray]' "
                        "(or use engine: local with --shard i/N)") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if cfg.ray_address:
            kwargs["address"] = cfg.ray_address
        ray.init(**kwargs)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        # blocks of batch_size items: one block feeds one actor call
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // cfg.batch_size)))
        resources = {"num_cpus": cfg.ray_cpus_per_actor}
        if cfg.ray_gpus_per_actor:
            resources["num_gpus"] = cfg.ray_gpus_per_actor
        out = ds.map_batches(GeneratorActor, fn_constructor_kwargs={"worker_kwargs": worker_kwargs},
                             batch_size=cfg.batch_size, batch_format="numpy",
                             concurrency=cfg.ray_actors, **resources)
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            yield [json.loads(s) for s in batch["row"]]
    finally:
        if started:
            ray.shutdown()
