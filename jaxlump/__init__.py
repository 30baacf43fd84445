"""jaxlump: compress trained JAX networks by lumping neurons (AFDE), plus the baselines it competes with.

The public surface, in pipeline order: model kinds, sites (the units compressed in any model), criteria (the ODE
encodings, discrepancies, refinements, merge costs), methods (lumping, merge_or_remove, the registry and size
targets), reconstruction, results; then sweeps, training and io beside them. `jaxlump.baselines` holds the methods
jaxlump is compared with (importing jaxlump registers them), `jaxlump.datasets` the systems and data sets.
"""

# ruff: noqa: I001 (pipeline order, not alphabetical)
from ._model.eqx_nn import LumpedMLP as LumpedMLP
from ._model.skip_mlp import SkipMLP as SkipMLP
from ._model.activations import Activation as Activation
from ._model.network import DenseChain as DenseChain
from ._sites.site import sites as sites
from ._sites.site import Sites as Sites
from ._sites.site import Site as Site
from ._sites.site import LeftOut as LeftOut
from ._sites.compress import site_chains as site_chains
from ._sites.compress import SiteChain as SiteChain
from ._sites.layers import Family as Family
from ._sites.layers import LayerType as LayerType
from ._sites.layers import register_family as register_family
from ._sites.layers import register_layer_type as register_layer_type
from ._sites.heads import AttentionType as AttentionType
from ._sites.heads import register_attention_type as register_attention_type
from ._sites.norms import NormType as NormType
from ._sites.norms import register_norm_type as register_norm_type

from ._criteria.encoding import simulate as simulate
from ._criteria.encoding import Trajectory as Trajectory
from ._criteria.encoding import check_encoding as check_encoding
from ._criteria.encoding import EncodingCheck as EncodingCheck
from ._criteria.encoding import to_erode as to_erode
from ._criteria.discrepancy import AbstractDiscrepancy as AbstractDiscrepancy
from ._criteria.discrepancy import LayerDistances as LayerDistances
from ._criteria.discrepancy import Structural as Structural
from ._criteria.discrepancy import Dynamical as Dynamical
from ._criteria.refinement import AbstractRefinement as AbstractRefinement
from ._criteria.refinement import Representative as Representative
from ._criteria.refinement import Components as Components
from ._criteria.merge_cost import RefitAware as RefitAware

from ._methods.lump import lump as lump
from ._methods.lump import lump_masked as lump_masked
from ._methods.lump_then_prune import lump_then_prune as lump_then_prune
from ._methods.select import merge_or_remove as merge_or_remove
from ._methods.allocation import allocate as allocate
from ._methods.greedy import AbstractPath as AbstractPath
from ._methods.greedy import Greedy as Greedy
from ._methods.rounds import Rounds as Rounds
from ._methods.select import lump_then_select as lump_then_select
from ._methods.registry import Compressor as Compressor
from ._methods.registry import compressors as compressors
from ._methods.registry import register_compressor as register_compressor
from ._methods.targets import Target as Target
from ._methods.targets import TargetInfo as TargetInfo

from ._reconstruction.reconstruct import reconstruct as reconstruct
from ._reconstruction.masked import shrink as shrink

from ._results.info import CompressionInfo as CompressionInfo
from ._results.info import Certificate as Certificate
from ._sites.compress import SitesInfo as SitesInfo
from ._results.accounting import cost as cost
from ._results.accounting import Cost as Cost
from ._results.accounting import measure_latency as measure_latency
from ._errors import RESULTS as RESULTS
from ._errors import CompressionError as CompressionError
from ._errors import UnreachableTargetError as UnreachableTargetError

from ._sweep import sweep as sweep
from ._sweep import Sweep as Sweep
from ._training.train import finetune as finetune
from ._training.training_loop import wrap_optax as wrap_optax
from ._training.training_loop import LumpState as LumpState
from ._training.training_loop import TargetSize as TargetSize
from ._io.serialisation import save as save
from ._io.serialisation import load as load
from ._io.serialisation import load_info as load_info

from . import baselines as baselines

__version__ = "0.1.0"
