"""onnxruntime on the CPU: a fixed number of intra-op threads, sequential execution, full graph optimization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.backends.base import Backend


def _dims(shape: list) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, files: list[Path], threads: int) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1  # one small graph per call: nothing to run in parallel between nodes
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: a daemon's stderr is for its own messages
        self.session = ort.InferenceSession(str(files[0]), so, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0]
        self._output = self.session.get_outputs()[0]
        self._output_names = [self._output.name]

    @property
    def input_shape(self) -> list[int | None]:
        return _dims(self._input.shape)

    @property
    def output_shape(self) -> list[int | None]:
        return _dims(self._output.shape)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run(self._output_names, {self._input.name: inputs})[0]


BACKEND = OnnxRuntimeBackend
