"""Training and export, with torch: ACT and Diffusion models, batches, training, ONNX export and INT8, benchmarks."""
