"""The compressors jaxlump is compared against, with `lump`'s call shape `(model, x_calib, knob) -> (model, info)`.

Unstructured (same-shape, masked): `magnitude`, `random`, `wanda`, `elimination_compensation`.
Structured (physically smaller): `structured_prune`, `linearity_merge` / `linearity_to_size` (a `SkipMLP`),
`proportional_lump`, `exact_lump`. `compress_to` reaches a requested size with any of them.
"""

from ._elimination import elimination_compensation as elimination_compensation
from ._exact import exact_lump as exact_lump
from ._linearity import (
    activation_rates as activation_rates,
)
from ._linearity import (
    linearity_merge as linearity_merge,
)
from ._linearity import (
    linearity_to_size as linearity_to_size,
)
from ._magnitude import magnitude as magnitude
from ._proportional import proportional_lump as proportional_lump
from ._random import random as random
from ._structured import structured_prune as structured_prune
from ._targets import compress_to as compress_to
from ._targets import realised_size as realised_size
from ._wanda import wanda as wanda
