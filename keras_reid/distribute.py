"""Distribution strategies from the recipe: one device, mirrored, multi-worker.

NOTE for editors: this module is imported by recipe validation (``StrategyConfig``),
so it must not import TensorFlow at module level; import it inside functions.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class StrategyConfig(BaseModel):
    """``strategy:`` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["one_device", "mirrored", "multi_worker"] = "one_device"
    devices: list[str] | None = None
    communication: Literal["auto", "ring", "nccl"] = "auto"
