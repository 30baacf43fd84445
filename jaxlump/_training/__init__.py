"""Beside the pipeline: training, fine-tuning and compression inside an optax training loop."""
