"""Stage 2, sites: the units jaxlump compresses in any Equinox or Flax NNX model (see `site.py`)."""

from . import nnx_attention as nnx_attention  # registers flax.nnx.LinearGeneral and MultiHeadAttention (flax unloaded)
