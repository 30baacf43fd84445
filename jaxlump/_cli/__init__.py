"""Beside the pipeline: the `jaxlump` console command."""
