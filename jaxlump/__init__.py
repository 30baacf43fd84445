"""jaxlump: compress trained JAX networks by lumping neurons (AFDE), plus the baselines it competes with.

The public surface, in pipeline order: models and adapters, the ODE encodings, discrepancies, lumping,
fixed-shape lumping and sweeps, reconstruction, accounting, serialisation.
"""

from ._adapters.eqx_nn import LumpedMLP as LumpedMLP
from ._encoding import (
    check_encoding as check_encoding,
    EncodingCheck as EncodingCheck,
    simulate as simulate,
    to_erode as to_erode,
    Trajectory as Trajectory,
)
from ._discrepancy import Dynamical as Dynamical, Structural as Structural
from ._lump import lump as lump, lump_masked as lump_masked
from ._reduction.masked import shrink as shrink
from ._reconstruct import reconstruct as reconstruct
from ._lump_then_prune import lump_then_prune as lump_then_prune
from ._info import Certificate as Certificate, CompressionInfo as CompressionInfo
from ._accounting import Cost as Cost, cost as cost, measure_latency as measure_latency
from ._serialisation import load as load, save as save
from ._skip_mlp import SkipMLP as SkipMLP
from ._errors import RESULTS as RESULTS

__version__ = "0.1.0"
