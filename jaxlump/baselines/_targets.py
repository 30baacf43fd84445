"""`compress_to`: reach a requested size with any compressor, by bisection on its one knob."""

from collections.abc import Callable

import numpy as np

from .._info import CompressionInfo


def realised_size(info: CompressionInfo) -> int:
    """The size a result is compared at: dense parameters if structured, non-zeros otherwise."""
    cost = info.cost_after
    return int(cost.dense_params if info.structured else cost.nonzeros)


def compress_to(
    model,
    method: Callable,
    target_params: int,
    x_calib=None,
    *,
    knob_range: tuple[float, float] = (0.0, 1.0 - 1e-9),
    grow_upper: bool = False,
    max_iter: int = 30,
    **options,
):
    """Compress `model` with `method` to at most `target_params`, as close to it as the knob allows.

    Bisects the method's knob (ε for `lump`, sparsity for pruning, τ ...) in `knob_range` (default: sparsities
    in [0, 1)), assuming the
    size decreases as the knob grows (pass `grow_upper=True` for an unbounded knob such as ε: the upper
    end is doubled until the target is reached). The returned result is the one with the largest size
    `≤ target_params` among those evaluated; its size is `realised_size(info)` (dense parameters for
    structured results, non-zeros for unstructured ones), so benchmarks compare at matched sizes.

    **Arguments:**

    - `model`: the model to compress.
    - `method`: a compressor with the call shape `method(model, x_calib, knob, **options)`.
    - `target_params`: the requested size (a positive integer).
    - `x_calib`: calibration data passed to `method`.
    - `knob_range`, `grow_upper`, `max_iter`: the bisection's bracket and budget.

    **Returns:** `(new_model, info)` of the chosen result.

    **Raises:** `ValueError` for a non-positive target or when no knob value in range reaches it.

    ```python
    import equinox as eqx, jax.random as jr, jaxlump
    from jaxlump.baselines import compress_to, magnitude
    mlp = eqx.nn.MLP(3, 2, 16, 2, key=jr.key(0))
    pruned, info = compress_to(mlp, magnitude, 200)
    assert int(info.cost_after.nonzeros) <= 200
    ```
    """
    target = int(target_params)
    if target <= 0:
        raise ValueError(f"`target_params` must be a positive integer; received {target_params!r}.")
    low, high = (float(v) for v in knob_range)
    if not low < high:
        raise ValueError(f"`knob_range` must be (low, high) with low < high; received {knob_range!r}.")
    best = None

    def evaluate(knob):
        nonlocal best
        result = method(model, x_calib, knob, **options)
        size = realised_size(result[1])
        if size <= target and (best is None or size > realised_size(best[1])):
            best = result
        return size

    if evaluate(low) <= target:
        return best
    while evaluate(high) > target:
        if not grow_upper:
            raise ValueError(
                f"`{getattr(method, '__name__', method)}` cannot reach {target} parameters "
                f"with its knob in {knob_range}."
            )
        low, high = high, 2 * high
        if high > 1e6:
            raise ValueError(f"`{getattr(method, '__name__', method)}` cannot reach {target} parameters.")
    for _ in range(max_iter):
        middle = (low + high) / 2
        if evaluate(middle) > target:
            low = middle
        else:
            high = middle
        if best is not None and realised_size(best[1]) == target or np.isclose(low, high, rtol=1e-6, atol=0):
            break
    return best
