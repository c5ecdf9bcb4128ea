"""Policy runtime: ONNX inference, chunk scheduling, export and quantization."""
