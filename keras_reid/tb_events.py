"""TensorBoard event files without TensorFlow: read what a run wrote, write a text summary, and
drop the points an interrupted attempt of a stage left beyond the state it resumes from.

TensorBoard's summary writers only append, so a stage that is resumed from its epoch-5 checkpoint
after it was killed in epoch 7 would otherwise show epochs 6-7 twice. The training loggers call
:func:`purge_beyond` before they write; stages that write one picture per run call
:func:`clear_events` on their folder first. Files are rewritten under a temporary name and
renamed (a repeat's hard-linked copy of a shared stage's logs is never changed in place).
"""
from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from keras_reid.io import atomic_path

EVENT_GLOB = "events.out.tfevents.*"

EPOCH_SEGMENTS = ("/epoch/", "/eval/")
"""Tags with one of these parts count epochs in their step; every other tag counts steps."""


def event_files(logdir: str | Path) -> list[Path]:
    """The event files directly in ``logdir`` (not its sub-folders), oldest first."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return []
    return sorted(p for p in logdir.glob(EVENT_GLOB) if p.is_file())


def read_records(path: str | Path) -> Iterator[bytes]:
    """Yields the records of one TFRecord file (an event file); a record cut short by a writer
    that was killed ends the file. Pure Python: reading a run's logs does not import TensorFlow."""
    with open(path, "rb") as fh:
        while True:
            header = fh.read(12)            # uint64 length, uint32 masked CRC of the length
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = fh.read(length)
            if len(data) < length or len(fh.read(4)) < 4:   # the data, its masked CRC
                return
            yield data


def read_events(logdir: str | Path) -> Iterator:
    """Yields every ``Event`` proto of the event files directly in ``logdir``, file by file."""
    from tensorboard.compat.proto import event_pb2  # deferred: TensorBoard, the CLI imports this module

    for path in event_files(logdir):
        for raw in read_records(path):
            yield event_pb2.Event.FromString(raw)


def summary_values(logdir: str | Path, plugin: str | None = None) -> Iterator[tuple[int, object, float]]:
    """Yields ``(step, Summary.Value, wall_time)`` of every summary value in ``logdir``'s event
    files, optionally only those of one TensorBoard plugin (``"scalars"``, ``"images"``, ``"text"``)."""
    for event in read_events(logdir):
        if not event.HasField("summary"):
            continue
        for value in event.summary.value:
            name = value.metadata.plugin_data.plugin_name
            if value.HasField("simple_value") and not name:
                name = "scalars"
            if plugin is None or name == plugin:
                yield event.step, value, event.wall_time


def scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the scalars in ``logdir`` (last value per step)."""
    out: dict[str, dict[int, float]] = {}
    for step, value, _ in summary_values(logdir, "scalars"):
        v = value.simple_value if value.HasField("simple_value") else _tensor_scalar(value.tensor)
        if v is not None:
            out.setdefault(value.tag, {})[int(step)] = float(v)
    return {tag: sorted(points.items()) for tag, points in out.items()}


def _tensor_scalar(t) -> float | None:
    """The number in a scalar ``TensorProto`` (float, double, int), or None."""
    for field in ("float_val", "double_val", "int_val", "int64_val"):
        values = getattr(t, field)
        if len(values):
            return float(values[0])
    if t.tensor_content:
        dtype = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}.get(t.dtype)
        if dtype is not None:
            return float(np.frombuffer(t.tensor_content, dtype=dtype)[0])
    return None


def images(logdir: str | Path) -> dict[str, list[tuple[int, bytes]]]:
    """``{tag: [(step, encoded PNG/JPEG bytes), ...]}`` of the image summaries in ``logdir``
    (the first image of each summary; last one written per step)."""
    out: dict[str, dict[int, bytes]] = {}
    for step, value, _ in summary_values(logdir, "images"):
        if value.HasField("image"):
            data = value.image.encoded_image_string
        else:   # TF2: a string tensor [width, height, image, ...]
            data = value.tensor.string_val[2] if len(value.tensor.string_val) > 2 else b""
        if data:
            out.setdefault(value.tag, {})[int(step)] = bytes(data)
    return {tag: sorted(points.items()) for tag, points in out.items()}


def texts(logdir: str | Path) -> dict[str, list[tuple[int, str]]]:
    """``{tag: [(step, text), ...]}`` of the text summaries in ``logdir``."""
    out: dict[str, list[tuple[int, str]]] = {}
    for step, value, _ in summary_values(logdir, "text"):
        for s in value.tensor.string_val:
            out.setdefault(value.tag, []).append((int(step), s.decode("utf-8", "replace")))
    return out


def clear_events(logdir: str | Path) -> int:
    """Delete the event files directly in ``logdir`` (what an earlier, unfinished attempt of a
    non-resumable writer left there); returns how many were removed."""
    files = event_files(logdir)
    for path in files:
        path.unlink(missing_ok=True)
    return len(files)


def write_text(logdir: str | Path, tag: str, markdown: str, *, description: str = "") -> Path:
    """Replace the event files in ``logdir`` by one holding the text summary ``tag`` (Markdown,
    step 0), so writing it on every run never piles up copies; returns the folder."""
    from tensorboard.compat.proto import event_pb2  # deferred: TensorBoard, the CLI imports this module
    from tensorboard.plugins.text.summary_v2 import text_pb  # deferred: TensorBoard, the CLI imports this module

    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    old = event_files(logdir)
    now = time.time()
    name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.text"
    events = [event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
              event_pb2.Event(wall_time=now, step=0,
                              summary=text_pb(tag, markdown, description=description or None))]
    _write_records(logdir / name, [e.SerializeToString() for e in events])
    for path in old:
        if path.name != name:
            path.unlink(missing_ok=True)
    return logdir


def _write_records(path: Path, records: list[bytes]) -> None:
    """Atomically write ``records`` as a TFRecord file (an event file TensorBoard reads)."""
    from tensorboard.summary.writer.record_writer import RecordWriter  # deferred: TensorBoard, the CLI imports this module

    with atomic_path(path, suffix="") as tmp:
        with open(tmp, "wb") as fh:
            writer = RecordWriter(fh)
            for raw in records:
                writer.write(raw)
            fh.flush()
            os.fsync(fh.fileno())


def purge_beyond(logdir: str | Path, step: int, epoch: int) -> int:
    """Drop from ``logdir``'s event files the summaries a resumed stage will write again: those
    of epoch tags (see :data:`EPOCH_SEGMENTS`) with a step above ``epoch`` and of the other tags
    with a step above ``step``. A fresh start (``step == epoch == 0``) drops every summary.
    Returns the number of summaries dropped (0: no file was touched)."""
    fresh = step <= 0 and epoch <= 0

    def limit(tag: str) -> int:
        if fresh:
            return -1
        return epoch if any(s in f"/{tag}/" for s in EPOCH_SEGMENTS) else step

    return filter_events(logdir, lambda tag, s: s <= limit(tag))


def filter_events(logdir: str | Path, keep: Callable[[str, int], bool]) -> int:
    """Rewrite the event files in ``logdir`` without the summary events for which
    ``keep(tag, step)`` is False (other events, e.g. the file version, stay); files with nothing
    to drop are left alone. Returns the number of events dropped."""
    from tensorboard.compat.proto import event_pb2  # deferred: TensorBoard, the CLI imports this module

    dropped = 0
    for path in event_files(logdir):
        records = list(read_records(path))
        kept = []
        for raw in records:
            event = event_pb2.Event.FromString(raw)
            if event.HasField("summary") and any(not keep(v.tag, int(event.step))
                                                 for v in event.summary.value):
                continue
            kept.append(raw)
        if len(kept) == len(records):
            continue
        dropped += len(records) - len(kept)
        if len(kept) <= 1:  # only the file-version record left: the file said nothing
            path.unlink(missing_ok=True)
            continue
        _write_records(path, kept)
    return dropped
