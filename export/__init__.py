"""Export a trained checkpoint for the runtime: ONNX and OpenVINO, FP32 and INT8, each proven against PyTorch.

    python -m export --checkpoint models/default/best.pt --out runtime/models/default

One shared preparation step (`prepare`), one function per format (`formats`), then parity and accuracy
gates (`gates`) run through the runtime's own loader; the manifest is written last (`pipeline`).
"""
