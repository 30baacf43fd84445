"""The `Dataset` record every loader returns, and the shared split / standardisation / key helpers."""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


class Dataset(eqx.Module):
    """A regression data set with a fixed train/test split.

    Inputs and targets are standardised with the *training* set's statistics when `standardized` is
    true: `x = (x_raw − x_mean) / x_std`, `y = (y_raw − y_mean) / y_std` (a constant column keeps
    `std = 1`). The statistics are stored whether or not they were applied, so `to_raw_inputs` and
    `to_raw_targets` always recover the original units.

    **Fields:**

    - `x_train`, `y_train`, `x_test`, `y_test`: `(n, n_features)` and `(n, n_targets)` arrays of the
      default floating dtype (float64 when `jax_enable_x64` is on, else float32).
    - `x_mean`, `x_std`, `y_mean`, `y_std`: per-column training-set mean and standard deviation (ddof 0).
    - `name`, `feature_names`, `target_names`: what the columns are.
    - `standardized`: whether the statistics were applied to the arrays.

    **Example:**

    ```python
    import jax.random as jr
    from jaxlump.datasets import abalone

    data = abalone()
    x_calib = data.calibration(256, jr.key(0))  # 256 training inputs
    rings = data.to_raw_targets(data.y_test)      # back to years of growth rings
    ```
    """

    x_train: Float[Array, "n_train features"]
    y_train: Float[Array, "n_train targets"]
    x_test: Float[Array, "n_test features"]
    y_test: Float[Array, "n_test targets"]
    x_mean: Float[Array, " features"]
    x_std: Float[Array, " features"]
    y_mean: Float[Array, " targets"]
    y_std: Float[Array, " targets"]
    name: str = eqx.field(static=True)
    feature_names: tuple[str, ...] = eqx.field(static=True)
    target_names: tuple[str, ...] = eqx.field(static=True)
    standardized: bool = eqx.field(static=True)

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_targets(self) -> int:
        return self.y_train.shape[1]

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    def calibration(self, n: int, key: PRNGKeyArray | int) -> Float[Array, "n features"]:
        """`n` distinct training inputs drawn uniformly at random (the calibration set of a compressor).

        **Arguments:**

        - `n`: how many inputs, `1 ≤ n ≤ n_train`.
        - `key`: a `jax.random` key (or an integer seed).

        **Returns:** an `(n, n_features)` array of rows of `x_train`.

        **Raises:** `ValueError` when `n` is out of range, `TypeError` when it is not an integer.
        """
        n = check_count(n, "n", upper=self.n_train, upper_name="the number of training examples")
        rows = jr.choice(as_key(key), self.n_train, (n,), replace=False)
        return self.x_train[rows]

    def to_raw_inputs(self, x: Float[Array, "batch features"]) -> Float[Array, "batch features"]:
        """Undo the input standardisation (identity when `standardized` is false)."""
        return x * self.x_std + self.x_mean if self.standardized else x

    def to_raw_targets(self, y: Float[Array, "batch targets"]) -> Float[Array, "batch targets"]:
        """Undo the target standardisation: predictions back in the data's own units."""
        return y * self.y_std + self.y_mean if self.standardized else y


def check_count(value, name: str, *, lower: int = 1, upper: int | None = None, upper_name: str = "") -> int:
    """An integer count in `[lower, upper]`, with a message naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer; received {value!r}.")
    value = int(value)
    if value < lower or (upper is not None and value > upper):
        bound = f"between {lower} and {upper} ({upper_name})" if upper is not None else f">= {lower}"
        raise ValueError(f"`{name}` must be {bound}; received {value}.")
    return value


def as_key(key, name: str = "key") -> PRNGKeyArray:
    """A `jax.random` key from a key or a non-negative integer seed."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        if key < 0:
            raise ValueError(f"`{name}` as an integer seed must be >= 0; received {key}.")
        return jr.key(int(key))
    if isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    raise TypeError(f"`{name}` must be a jax.random key (jax.random.key(seed)) or an integer seed; received {key!r}.")


def numpy_rng(key: PRNGKeyArray) -> np.random.Generator:
    """A NumPy generator seeded by the key's bits: row shuffles without compiling a JAX permutation."""
    return np.random.default_rng(np.asarray(jr.key_data(key)).ravel().tolist())


def random_split(n_rows: int, test_fraction: float, key: PRNGKeyArray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices `(train, test)` of a seeded random split; `round(test_fraction · n_rows)` rows go to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must lie in (0, 1); received {test_fraction!r}.")
    n_test = int(round(test_fraction * n_rows))
    if not 0 < n_test < n_rows:
        raise ValueError(f"`test_fraction`={test_fraction} leaves an empty train or test set for {n_rows} rows.")
    order = numpy_rng(key).permutation(n_rows)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _column_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def make_dataset(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    feature_names: Sequence[str],
    target_names: Sequence[str],
    standardize: bool,
) -> Dataset:
    """Build a `Dataset` from float64 NumPy `(x, y)` pairs, standardising with the training statistics."""
    if not isinstance(standardize, (bool, np.bool_)):
        raise TypeError(f"`standardize` must be True or False; received {standardize!r}.")
    (x_train, y_train), (x_test, y_test) = [
        (np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y, np.float64).reshape(len(y), -1))
        for x, y in (train, test)
    ]
    if x_train.shape[1] != len(feature_names) or y_train.shape[1] != len(target_names):
        raise ValueError(
            f"{name}: {x_train.shape[1]} input / {y_train.shape[1]} target columns but "
            f"{len(feature_names)} feature / {len(target_names)} target names."
        )
    x_mean, x_std = _column_stats(x_train)
    y_mean, y_std = _column_stats(y_train)
    if standardize:
        x_train, x_test = (x_train - x_mean) / x_std, (x_test - x_mean) / x_std
        y_train, y_test = (y_train - y_mean) / y_std, (y_test - y_mean) / y_std
    dtype = jnp.result_type(float)
    arrays = [jnp.asarray(a, dtype) for a in (x_train, y_train, x_test, y_test, x_mean, x_std, y_mean, y_std)]
    return Dataset(
        *arrays,
        name=name,
        feature_names=tuple(feature_names),
        target_names=tuple(target_names),
        standardized=bool(standardize),
    )
