"""From neuron groups to a reduced network: the quotient (any shape) and the fixed-shape masked form."""
