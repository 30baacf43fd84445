"""Run in a fresh process by tests/test_linalg.py: the compressors whose compiled programs hold decompositions
(`sweep` with refit, `merge_or_remove`, a `wrap_optax` round with refit, `reconstruct` of a pruned model, `lump`),
then print one JSON line: the sweep's partitions and certificate values, for comparing runs.

With `JAX_DUMP_IR_TO=DIR` every program JAX compiles lands in DIR as StableHLO, where the test reads the LAPACK
calls' operand shapes. Arguments: `all` or `sweep` (the sweep alone), the hidden width, the number of ε.
"""

import json
import sys
from dataclasses import fields

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import jaxlump


def main(what: str, width: int, n_eps: int) -> None:
    jax.config.update("jax_enable_x64", True)
    model = eqx.nn.MLP(3, 2, width, 2, activation=jnp.tanh, key=jr.key(0))
    x = jr.normal(jr.key(1), (4 * width, 3))
    grid = jaxlump.sweep(model, x, np.linspace(0.0, 1.5, n_eps), reconstruct=True)
    record = {
        "widths": np.asarray(grid.widths).tolist(),
        "partitions": [np.asarray(p).tolist() for p in grid.infos.partitions],
        "certificate": {
            f.name: np.asarray(getattr(grid.certificate, f.name)).tolist() for f in fields(grid.certificate)
        },
    }
    if what == "all":
        jaxlump.baselines.compress_to(model, "merge_or_remove", 0.5, x)
        pruned, info = jaxlump.baselines.wanda(model, x, 0.5)
        jaxlump.reconstruct(model, pruned, x, info)
        jaxlump.lump(model, x, 0.3)
        params = eqx.filter(model, eqx.is_array)
        tx = jaxlump.wrap_optax(optax.sgd(1e-3), model, x, 0.3, every=1, reconstruct=True)
        state = tx.init(params)
        jax.block_until_ready(tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, params))
    print(json.dumps(record))


if __name__ == "__main__":
    what, width, n_eps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    main(what, width, n_eps)
