"""Exact lumping (ε = 0) as a named baseline."""

import dataclasses

import numpy as np

from .._methods.lump import lump
from .._methods.registry import Compressor, register_compressor
from .._sites.compress import over_sites


@over_sites
def exact_lump(model, x_calib, knob, *, throw: bool = True):
    """Merge only exactly equivalent neurons: `lump` at ε = 0 with the pure quotient (no refit).

    The result computes the same function as `model` for every input and any activation (it
    coincides with the exact lumping of Ressi et al. 2024 with ρ = 1).

    **Arguments:**

    - `model`: any model `jaxlump.lump` accepts.
    - `x_calib`: calibration inputs `(batch, n_in)` on which the certificate is measured, or `None`.
    - `knob`: the method has none (ε is 0); accepted for the common call shape, it must be `None` or `0`.
    - `throw`: as `jaxlump.lump`.

    **Returns:** `(model, info)` with `info.method == "exact_lump"`.

    **Raises:** as `jaxlump.lump`, and `ValueError` for a knob other than `None` or `0`.

    ```python
    import equinox as eqx, jax.random as jr
    from jaxlump.baselines import exact_lump
    small, info = exact_lump(eqx.nn.MLP(3, 2, 8, 2, key=jr.key(0)), None, None)
    assert info.widths_after.tolist() == [3, 8, 8, 2]  # random weights: no two neurons are equivalent
    ```
    """
    is_zero = isinstance(knob, (int, float, np.number)) and not isinstance(knob, bool) and knob == 0
    if knob is not None and not is_zero:
        raise ValueError(f"`exact_lump` has no knob (ε is 0): `knob` must be None or 0; received {knob!r}.")
    small, info = lump(model, x_calib, 0.0, reconstruct=False, throw=throw)
    return small, dataclasses.replace(info, method="exact_lump")


_NO_KNOB = "it has no knob: it merges exactly equivalent neurons only, so its widths are fixed by the model"

# fmt: off
register_compressor(Compressor("exact_lump", exact_lump, None, "no knob: merges exactly equivalent neurons only (ε = 0, no refit)", structured=True, needs_data=False, knob_range=None, no_widths=_NO_KNOB))  # noqa: E501
# fmt: on
