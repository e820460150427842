"""What every inference backend provides: load one model file, run float32 inputs, report its input shape."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np


class Backend(ABC):
    name: ClassVar[str]

    @abstractmethod
    def __init__(self, files: list[Path], threads: int) -> None:
        """files: the variant's verified files, the model to load first (sidecars such as weights follow)."""

    @property
    @abstractmethod
    def input_shape(self) -> list[int | None]:
        """The loaded model's input shape; None for a dynamic axis."""

    @property
    @abstractmethod
    def output_shape(self) -> list[int | None]:
        """The loaded model's output shape; None for a dynamic axis."""

    @abstractmethod
    def run(self, inputs: np.ndarray) -> np.ndarray:
        """float32 C-contiguous (N, C, H, W) -> float32 (N, classes) logits, an array the caller owns."""
