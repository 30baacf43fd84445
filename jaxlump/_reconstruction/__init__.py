"""Stage 5, reconstruction: from groups of units to a reduced network.

The one least-squares reconstruction every method shares, the quotient (any shape), the fixed-shape masked form with
`shrink`, and the linear algebra they use.
"""
