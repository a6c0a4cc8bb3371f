"""onnxruntime side: ONNX export and files, sessions, latency timing, bench of any file, the environment,
quantization."""
