"""Benchmarks: the engine against hand-written NumPy, TensorFlow and PyTorch, and against the BLAS
floor (`python -m benchmarks.train_speed`, `.time_to_accuracy`, `.floor`)."""
