"""What people run outside the pipeline: the predict command, the HTTP API and its page. It runs
the exported ONNX model with ONNX Runtime and never imports TensorFlow (app/requirements.txt)."""
