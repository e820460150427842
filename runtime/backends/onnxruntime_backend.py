"""onnxruntime on the CPU: a fixed number of intra-op threads, sequential execution, full graph optimization
except one pass.

QDQPropagationTransformer is off. It moves each QuantizeLinear as early as it can, so in our INT8 models (first
conv kept FP32, then ReLU and a 2x2 max pool) it quantizes before the pool, and onnxruntime then pools uint8 in
NCHW through its slow generic kernel. Left alone, the pool runs in FP32 inside the first conv's fast NCHWc block
and quantization follows it. Outputs are bit-identical (max commutes with a monotonic quantization). With the
pass on, the shipped student's INT8 network takes 1.26x the time at batch 1, 1.3x at batch 2 and 1.46-1.49x at
8-16 (`benchmarks.classifier`, side by side); the teacher's, whose first conv is not followed by a pool, was
within noise in an ad-hoc comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.backends.base import Backend

DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]  # see above


def _dims(shape: list) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def make_session(
    model: Path, threads: int, save_optimized: Path | None = None, all_passes: bool = False
) -> ort.InferenceSession:
    """The session the daemon runs. save_optimized writes the graph as onnxruntime rewrote it (for inspection);
    all_passes keeps every onnxruntime pass on (DISABLED_OPTIMIZERS too), for comparisons."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1  # one small graph per call: nothing to run in parallel between nodes
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: a daemon's stderr is for its own messages
    if save_optimized is not None:
        so.optimized_model_filepath = str(save_optimized)
    return ort.InferenceSession(
        str(model),
        so,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=[] if all_passes else DISABLED_OPTIMIZERS,
    )


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, files: list[Path], threads: int) -> None:
        self.session = make_session(files[0], threads)
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
