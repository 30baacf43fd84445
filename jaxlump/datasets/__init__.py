"""Data sets: simulated dynamical systems (regress the vector field) and four UCI regression sets."""

from ._dataset import Dataset as Dataset
from ._simulate import simulate_system as simulate_system
from ._glycolytic import glycolytic as glycolytic
