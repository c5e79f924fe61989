"""FastAST to static-shape ONNX: the exporter, backend parity checks and the TensorRT lint."""
