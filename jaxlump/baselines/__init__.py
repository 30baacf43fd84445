"""The compressors jaxlump is compared against, with `lump`'s call shape `(model, x_calib, knob) -> (model, info)`.

Unstructured (same-shape, masked): `magnitude`, `random`, `wanda`, `elimination_compensation`.
Structured (physically smaller): `structured_prune`, `linearity_merge` / `linearity_to_size` (a `SkipMLP`),
`proportional_lump`, `exact_lump`; the strong structured ones, each choosing which neurons to keep or merge and
sharing `jaxlump.reconstruct`'s least squares: `obs_prune` (ZipLM), `osscar_prune`, `id_prune`, `flap_prune`,
`fold`, `zipit_merge`, `neuron_merge`, and the whitened low-rank `lowrank`. Their knob is the `sparsity`, the
fraction of hidden neurons removed (as `structured_prune`). The oracle: `rank_bounds`, `best_subset`,
`layer_errors`. `compress_to` reaches a requested size with any of them.
"""

from .._methods.base import AbstractScope as AbstractScope
from .._methods.base import Global as Global
from .._methods.base import PerLayer as PerLayer
from .._methods.base import PerRow as PerRow
from .._methods.targets import compress_to as compress_to
from .._methods.targets import realised_size as realised_size
from ._elimination import elimination_compensation as elimination_compensation
from ._exact import exact_lump as exact_lump
from ._flap import flap_prune as flap_prune
from ._folding import fold as fold
from ._folding import neuron_merge as neuron_merge
from ._folding import zipit_merge as zipit_merge
from ._interpolative import id_prune as id_prune
from ._linearity import AbstractLayerRule as AbstractLayerRule
from ._linearity import LinearFractionAbove as LinearFractionAbove
from ._linearity import MoreLinearThan as MoreLinearThan
from ._linearity import SavesParameters as SavesParameters
from ._linearity import (
    activation_rates as activation_rates,
)
from ._linearity import (
    linearity_merge as linearity_merge,
)
from ._linearity import (
    linearity_to_size as linearity_to_size,
)
from ._lowrank import lowrank as lowrank
from ._magnitude import magnitude as magnitude
from ._obs import obs_prune as obs_prune
from ._oracle import best_subset as best_subset
from ._oracle import layer_errors as layer_errors
from ._oracle import rank_bounds as rank_bounds
from ._osscar import osscar_prune as osscar_prune
from ._proportional import proportional_lump as proportional_lump
from ._random import random as random
from ._structured import AbstractNeuronScore as AbstractNeuronScore
from ._structured import ActivationRate as ActivationRate
from ._structured import IncomingNorm as IncomingNorm
from ._structured import MeanActivation as MeanActivation
from ._structured import WandaScore as WandaScore
from ._structured import structured_prune as structured_prune
from ._wanda import wanda as wanda
