"""The record every supported model kind provides to the adapter registry (`jaxlump._model.KINDS`)."""

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """One supported model kind: how to recognise, read, rebuild, call, describe and re-create it.

    - `name`: the kind's name, also stored in files (`"eqx.nn.MLP"`).
    - `matches(model)`: whether `model` is of this kind.
    - `to_chain(model)`: the canonical chain (parameters as stored, activations by name).
    - `from_chain(chain, like)`: a model of the kind's result type holding `chain`.
    - `apply(model, x)`: `model` applied to a batch `(batch, n_0)`, as the user's model computes it.
    - `describe(model, chain)`: JSON-able options, beyond the chain, that `build` needs (for `save`).
    - `build(options, chain)`: a model of exactly this kind with `chain`'s parameters (for `load`).
    - `sequential(chain)`: a model of the kind's family holding a chain of any depth, as a plain sequence of
      layers (a method that adds layers, such as `lowrank`, returns it whatever the widths).
    """

    name: str
    matches: Callable
    to_chain: Callable
    from_chain: Callable
    apply: Callable
    describe: Callable
    build: Callable
    sequential: Callable
