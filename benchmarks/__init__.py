"""Benchmarks: the engine against hand-written NumPy, TensorFlow and PyTorch (`python -m benchmarks.train_speed`)."""
