"""The compressors jaxlump is compared against, with `lump`'s call shape `(model, x_calib, knob) -> (model, info)`.

Unstructured (same-shape, masked): `magnitude`, `random`, `wanda`, `elimination_compensation`.
Structured (physically smaller): `structured_prune`, `linearity_merge` / `linearity_to_size` (a `SkipMLP`),
`proportional_lump`, `exact_lump`. `compress_to` reaches a requested size with any of them.
"""

from ._magnitude import magnitude as magnitude
from ._random import random as random
from ._wanda import wanda as wanda
from ._elimination import elimination_compensation as elimination_compensation
from ._structured import structured_prune as structured_prune
from ._linearity import (
    activation_rates as activation_rates,
    linearity_merge as linearity_merge,
    linearity_to_size as linearity_to_size,
)
from ._proportional import proportional_lump as proportional_lump
from ._exact import exact_lump as exact_lump
from ._targets import compress_to as compress_to, realised_size as realised_size
