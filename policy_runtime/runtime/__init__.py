"""The torch-free runtime that runs on the robot: manifest, onnxruntime inference, chunk scheduling, thread count."""
