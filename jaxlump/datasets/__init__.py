"""Data sets: simulated dynamical systems (regress the vector field from the state) and four UCI regression sets.

Every loader returns a `Dataset` with a fixed, seeded train/test split, standardised by default.
"""

from ._dataset import Dataset as Dataset
from ._glycolytic import glycolytic as glycolytic
from ._polymerization import polymerization as polymerization
from ._reaction_network import reaction_network as reaction_network
from ._rlc import rlc_network as rlc_network
from ._simulate import simulate_system as simulate_system
from ._uci import abalone as abalone
from ._uci import household_power as household_power
from ._uci import metro_traffic as metro_traffic
from ._uci import protein as protein
