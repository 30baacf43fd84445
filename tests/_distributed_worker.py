"""One process of `test_distributed.py`'s two-process run (`jax.distributed` on 127.0.0.1, CPU, gloo).

    python3 tests/_distributed_worker.py PROCESS_ID PROCESS_COUNT PORT OUT.json

Each process holds its own rows of the calibration set (a global `jax.Array`, rows split over the processes), runs
every registered compressor and `merge_or_remove` with `Rounds(devices=jax.devices())`, and writes the sums of each
result's arrays. `PROCESS_COUNT` 1 runs the same on the whole set in one process (the reference)."""

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
process, count, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if count > 1:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=process)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import jaxlump  # noqa: E402

mlp = eqx.nn.MLP(3, 2, 16, 2, activation=jnp.tanh, key=jr.key(0))
rows = np.asarray(jr.normal(jr.key(1), (256, 3)))
if count > 1:
    mesh = Mesh(np.asarray(jax.devices()), ("rows",))
    share = rows.shape[0] // count
    x = jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec("rows")), rows[process * share : (process + 1) * share]
    )
else:
    x = jnp.asarray(rows)
calls = {
    name: (lambda e=entry: e.function(mlp, x if e.needs_data else None, 0.5))
    for name, entry in jaxlump.compressors().items()
}
calls["merge_or_remove Rounds(devices)"] = lambda: jaxlump.baselines.compress_to(
    mlp, "merge_or_remove", (8, 8), x, path=jaxlump.Rounds(devices=jax.devices())
)
results = {}
for name, call in calls.items():
    try:
        small, _ = call()
        results[name] = [float(np.asarray(a).sum()) for a in jax.tree.leaves(eqx.filter(small, eqx.is_array))]
    except (TypeError, ValueError) as error:  # a refusal (a knob this method does not take) is compared as such
        results[name] = f"{type(error).__name__}: {error}"
with open(out, "w") as f:
    json.dump(results, f)
