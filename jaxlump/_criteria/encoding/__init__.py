"""The two ODE views of a network: structural (the lumping criterion) and dynamical (diffrax)."""

from .dynamical import Trajectory as Trajectory
from .dynamical import VectorField as VectorField
from .dynamical import polynomial_degree as polynomial_degree
from .dynamical import simulate as simulate
from .fidelity import EncodingCheck as EncodingCheck
from .fidelity import check_encoding as check_encoding
from .structural import affine_system as affine_system
from .structural import aggregated_coefficients as aggregated_coefficients
from .structural import augmented_matrices as augmented_matrices
from .structural import to_erode as to_erode
