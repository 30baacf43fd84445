"""Stage 3, criteria: which hidden units are alike or expendable.

Discrepancies, the ODE encodings behind them, refinements, refit-aware merge costs.
"""
