"""One function per format. Each writes its files and returns their paths (the model file first)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from export.prepare import Prepared

OPSET = 20  # what torch's ONNX exporter emits natively; onnxruntime and OpenVINO both run it
INPUT, OUTPUT = "input", "logits"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters and quantizers print progress and advice of their own; our log lines say what matters."""
    loggers = [logging.getLogger(n) for n in ("", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "nncf")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def metadata(prep: Prepared, precision: str) -> dict[str, str]:
    """Written into the model files themselves, so a model found alone still says what it expects."""
    return {
        "model_id": prep.model_id,
        "precision": precision,
        "labels": json.dumps(list(prep.ckpt["labels"])),
        "preprocess": json.dumps(prep.spec.to_dict()),
        "tta_flip": json.dumps(prep.tta_flip),
        "producer": "emotiond export",
    }


def _set_onnx_metadata(path: Path, prep: Prepared, precision: str) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata(prep, precision).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_onnx(prep: Prepared, path: Path) -> list[Path]:
    """FP32 ONNX through torch's dynamo exporter, dynamic batch axis, simplified with onnxslim."""
    import onnx
    import onnxslim

    example = (torch.from_numpy(prep.calib[:2]),)  # batch 2: a batch of 1 would be specialised as a constant
    with quiet():
        program = torch.onnx.export(
            prep.model,
            example,
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
        model = onnxslim.slim(program.model_proto)
    onnx.save(model, str(path))
    _set_onnx_metadata(path, prep, "fp32")
    return [path]


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over the prepared training images.

    Batches of one: the percentile calibrator stacks every batch's activations into one array, so all batches
    must have the same size whatever the calibration size.
    """

    def __init__(self, inputs: np.ndarray, batch: int = 1) -> None:
        self.inputs, self.batch, self.pos = inputs, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.inputs):
            return None
        chunk = self.inputs[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {INPUT: chunk}

    def rewind(self) -> None:
        self.pos = 0


def quantize_onnx_int8(prep: Prepared, fp32: Path, path: Path) -> list[Path]:
    """Static INT8: QDQ, per-channel S8 weights with 7-bit range, U8 activations calibrated on training images.

    QDQ with U8 activations runs as fused integer kernels in onnxruntime's CPU provider (VNNI where the CPU has
    it); S8 activations in QOperator format would fall back to slow paths on x86. U8 activations with S8 weights
    are onnxruntime's fast x86 kernels, but on CPUs without VNNI (AVX2 only) they sum pairs of products in int16
    and saturate, so weights keep 7 bits (reduce_range, as onnxruntime's quantization docs advise). Activation
    ranges are the 99.999th percentile, not min-max: a few outliers otherwise cost the resolution every face
    needs. The first conv stays FP32, as in the OpenVINO INT8 model: it reads the standardized face directly.
    Measured on PublicTest with flip (AVX2, onnxruntime 1.32, one thread), agreement with FP32 top-1 and time for
    one face and its mirror: U8U8 97.5%, 0.24 ms; U8S8 with 8-bit weights 80.7%; U8S8 7-bit 97.1%, 0.18 ms;
    U8S8 7-bit with the first conv FP32 98.1%, 0.19 ms, and the FP32 model's accuracy. The teacher checkpoint,
    exported the same way, agrees on 98.5% (U8U8: 97.2%). These times predate the runtime's session keeping the
    first max pool in FP32 (runtime/backends/onnxruntime_backend.py), which takes a fifth to a third off.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="emotiond-quant-") as tmp, quiet():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        first_conv = next(node.name for node in onnx.load(str(pre)).graph.node if node.op_type == "Conv")
        quantize_static(
            str(pre),
            str(path),
            _CalibrationReader(prep.calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[first_conv],
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.999},
        )
    _set_onnx_metadata(path, prep, "int8")
    return [path]


def _save_openvino(model, prep: Prepared, precision: str, xml: Path) -> list[Path]:
    import openvino as ov

    for key, value in metadata(prep, precision).items():
        model.set_rt_info(value, ["emotiond", key])
    ov.save_model(model, str(xml), compress_to_fp16=False)  # FP32 stays FP32: parity is checked at 1e-4
    return [xml, xml.with_suffix(".bin")]


def export_openvino(prep: Prepared, onnx_fp32: Path, xml: Path) -> list[Path]:
    """FP32 OpenVINO IR converted from the FP32 ONNX model (the same graph the ONNX variants run)."""
    import openvino as ov

    with quiet():
        model = ov.convert_model(str(onnx_fp32))
    return _save_openvino(model, prep, "fp32", xml)


def quantize_openvino_int8(prep: Prepared, fp32_xml: Path, xml: Path) -> list[Path]:
    """INT8 OpenVINO IR: NNCF post-training quantization calibrated on the same training images.

    Two settings differ from NNCF's defaults, both measured on FER2013 PublicTest (top-1 agreement with FP32):
    activation ranges from the global min/max instead of the mean of per-image extremes (which clips what some
    faces reach: 95.1% -> 97.5%), and the full bias correction instead of the fast one (-> 98.9%). The first
    conv stays FP32: it reads the standardized face directly, and on the stride-2 student quantizing it cost the
    most agreement (96.7% -> 98.4%, for 2% of the multiply-adds).
    """
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    nncf.set_log_level(logging.ERROR)
    model = ov.Core().read_model(str(fp32_xml))
    first_conv = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution")
    samples = [prep.calib[i : i + 1] for i in range(len(prep.calib))]
    with quiet():
        quantized = nncf.quantize(
            model,
            nncf.Dataset(samples),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(samples),
            fast_bias_correction=False,
            ignored_scope=nncf.IgnoredScope(names=[first_conv.get_friendly_name()]),
            advanced_parameters=AdvancedQuantizationParameters(
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
            ),
        )
    return _save_openvino(quantized, prep, "int8", xml)
