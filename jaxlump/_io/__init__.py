"""Beside the pipeline: save and load any compressed model, with a JSON header."""
