"""jaxtyping aliases shared across jaxlump.

Layers follow Equinox's `(out, in)` layout: `Weight` is `n_l × n_{l-1}`.
"""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int

Weight: TypeAlias = Float[Array, "out in"]
Bias: TypeAlias = Float[Array, " out"]
Activations: TypeAlias = Float[Array, "batch width"]
Calibration: TypeAlias = Float[ArrayLike, "batch in"]
Inputs: TypeAlias = Float[ArrayLike, "batch in"]
Outputs: TypeAlias = Float[Array, "batch out"]
# For each original neuron of a layer, the index of the compressed neuron it maps to (-1: removed).
Partition: TypeAlias = Int[Array, " width"]
NeuronMask: TypeAlias = Bool[Array, " width"]
WeightMask: TypeAlias = Bool[Array, "out in"]
Distances: TypeAlias = Float[Array, "width width"]
Scalar: TypeAlias = Float[ArrayLike, ""]
