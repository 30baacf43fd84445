"""jaxlump: compress trained JAX networks by lumping neurons (AFDE), plus the baselines it competes with.

The public surface, in pipeline order: models and adapters, sites (the units compressed in any model), the ODE
encodings, discrepancies, lumping, fixed-shape lumping and sweeps, reconstruction, accounting, serialisation.
"""

from ._accounting import Cost as Cost
from ._accounting import cost as cost
from ._accounting import measure_latency as measure_latency
from ._adapters.eqx_nn import LumpedMLP as LumpedMLP
from ._discrepancy import Dynamical as Dynamical
from ._discrepancy import Structural as Structural
from ._encoding import (
    EncodingCheck as EncodingCheck,
)
from ._encoding import (
    Trajectory as Trajectory,
)
from ._encoding import (
    check_encoding as check_encoding,
)
from ._encoding import (
    simulate as simulate,
)
from ._encoding import (
    to_erode as to_erode,
)
from ._errors import RESULTS as RESULTS
from ._errors import CompressionError as CompressionError
from ._errors import UnreachableTargetError as UnreachableTargetError
from ._info import Certificate as Certificate
from ._info import CompressionInfo as CompressionInfo
from ._lump import lump as lump
from ._lump import lump_masked as lump_masked
from ._lump_then_prune import lump_then_prune as lump_then_prune
from ._merge_cost import RefitAware as RefitAware
from ._network import Activation as Activation
from ._reconstruct import reconstruct as reconstruct
from ._reduction.masked import shrink as shrink
from ._registry import Compressor as Compressor
from ._registry import compressors as compressors
from ._select import lump_then_select as lump_then_select
from ._select import merge_or_remove as merge_or_remove
from ._serialisation import load as load
from ._serialisation import save as save
from ._skip_mlp import SkipMLP as SkipMLP
from ._sites.compress import SitesInfo as SitesInfo
from ._sites.layers import Family as Family
from ._sites.layers import LayerType as LayerType
from ._sites.layers import register_family as register_family
from ._sites.layers import register_layer_type as register_layer_type
from ._sites.site import LeftOut as LeftOut
from ._sites.site import Site as Site
from ._sites.site import Sites as Sites
from ._sites.site import sites as sites
from ._sweep import Sweep as Sweep
from ._sweep import sweep as sweep
from ._train import finetune as finetune
from ._training_loop import LumpState as LumpState
from ._training_loop import TargetSize as TargetSize
from ._training_loop import wrap_optax as wrap_optax
from .baselines._targets import Target as Target
from .baselines._targets import TargetInfo as TargetInfo

__version__ = "0.1.0"
