"""Stage 2, sites: the units jaxlump compresses in any Equinox or Flax NNX model (see `site.py`)."""
