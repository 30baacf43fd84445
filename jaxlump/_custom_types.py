"""jaxtyping aliases shared across jaxlump.

Layers follow Equinox's `(out, in)` layout: `Weight` is `n_l × n_{l-1}`.
"""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int

Weight: TypeAlias = Float[Array, "out in"]
Bias: TypeAlias = Float[Array, " out"]
# Per-layer sequences: every layer has its own shape, so the dimensions are not bound across elements (a leading
# `_` tells jaxtyping not to check a name; `tuple[Weight, ...]` would force all layers to one shape).
Weights: TypeAlias = tuple[Float[Array, "_out _in"], ...]
Biases: TypeAlias = tuple[Float[Array, " _out"], ...]
Activations: TypeAlias = Float[Array, "batch width"]
Calibration: TypeAlias = Float[ArrayLike, "batch in"]
Inputs: TypeAlias = Float[ArrayLike, "batch in"]
Outputs: TypeAlias = Float[Array, "batch out"]
# For each original neuron of a layer, the index of the compressed neuron it maps to (-1: removed).
Partition: TypeAlias = Int[Array, " width"]
Partitions: TypeAlias = tuple[Int[Array, " _width"], ...]
NeuronMask: TypeAlias = Bool[Array, " width"]
WeightMask: TypeAlias = Bool[Array, "out in"]
WeightMasks: TypeAlias = tuple[Bool[Array, "_out _in"], ...]
Distances: TypeAlias = Float[Array, "width width"]
Scalar: TypeAlias = Float[ArrayLike, ""]
