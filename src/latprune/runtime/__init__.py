"""Runtimes shared by the latency backends and the exporters: ONNX bytes, ONNX Runtime sessions,
TensorRT engines, and the device fingerprint."""
