"""jaxlump: compress trained JAX networks by lumping neurons (AFDE), plus the baselines it competes with."""

from ._adapters.eqx_nn import LumpedMLP as LumpedMLP

__version__ = "0.1.0"
