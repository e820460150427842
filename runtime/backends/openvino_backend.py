"""OpenVINO on the CPU: latency hint, a fixed thread count, and FP32 kept FP32 (no silent bf16 on CPUs that have it)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import openvino as ov

from runtime.backends.base import Backend


@functools.cache
def _core() -> ov.Core:
    return ov.Core()  # creating a Core scans plugins: once per process is enough


def _dims(shape: ov.PartialShape) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in shape]


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, files: list[Path], threads: int) -> None:
        xml = files[0]
        weights = next((f for f in files[1:] if f.suffix == ".bin"), xml.with_suffix(".bin"))
        model = _core().read_model(str(xml), str(weights))
        self._input_shape = _dims(model.inputs[0].get_partial_shape())
        self._output_shape = _dims(model.outputs[0].get_partial_shape())
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            # FP32 models run in f32; INT8 models keep their quantized ops either way. Without this, CPUs with
            # bf16 support may run an FP32 IR in bf16 and break parity with PyTorch.
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = _core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    @property
    def input_shape(self) -> list[int | None]:
        return self._input_shape

    @property
    def output_shape(self) -> list[int | None]:
        return self._output_shape

    def run(self, inputs: np.ndarray) -> np.ndarray:
        # share_inputs: no copy of the batch into OpenVINO; the (N, 7) output is copied out (tiny) because the
        # request's buffer is reused by the next call.
        self.request.infer({0: inputs}, share_inputs=True)
        return self.request.get_output_tensor(0).data.copy()


BACKEND = OpenVinoBackend
