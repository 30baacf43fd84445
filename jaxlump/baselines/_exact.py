"""Exact lumping (ε = 0) as a named baseline."""

import dataclasses

from .._lump import lump


def exact_lump(model, x_calib=None, knob=None):
    """Merge only exactly equivalent neurons: `lump` at ε = 0 with the pure quotient (no refit).

    The result computes the same function as `model` for every input and any activation (it
    coincides with the exact lumping of Ressi et al. 2024 with ρ = 1). `knob` is accepted for the
    common call shape and ignored; with `x_calib` the certificate is measured on it.

    **Returns:** `(model, info)` with `info.method == "exact_lump"`.

    ```python
    import equinox as eqx, jax.random as jr
    from jaxlump.baselines import exact_lump
    small, info = exact_lump(eqx.nn.MLP(3, 2, 8, 2, key=jr.key(0)))
    ```
    """
    del knob
    small, info = lump(model, x_calib, 0.0, refit=False)
    return small, dataclasses.replace(info, method="exact_lump")
