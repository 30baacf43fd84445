"""The activation table: a chain layer's activation is stored by name, `ACTIVATIONS[name]` is its `Activation`
(the function, its derivative σ'(z), a Lipschitz constant).

Activations are recognised by *what they are*, never by their values: the known function objects
(`jnp.tanh` = `jax.nn.tanh` = `nnx.tanh`, `jax.nn.sigmoid`, `jax.nn.relu`, `jax.nn.leaky_relu`,
`jax.nn.softplus`, `jax.nn.silu` = `jax.nn.swish`, `jax.nn.gelu` (its default tanh form: `"gelu_tanh"`),
`jax.nn.elu`, `jax.nn.celu`, `jax.nn.selu`, `jax.lax.tanh`, `jax.lax.logistic`; flax.nnx's are these objects),
`eqx.nn.Identity()` and Equinox's own default identity, `eqx.nn.Lambda` wrappers of these, the partials
`functools.partial(jax.nn.leaky_relu, negative_slope=s)` (finite s), `functools.partial(jax.nn.gelu,
approximate=False)` (the exact erf form, `"gelu"`) or `approximate=True`, `functools.partial(jax.nn.elu, alpha=a)`
and `functools.partial(jax.nn.celu, alpha=a)` (finite a > 0), and `jaxlump.Activation` objects a user declares.
Anything else (`jax.nn.relu6`, `jax.nn.hard_tanh`, `lambda x: jnp.clip(x, -5, 5)`, `lambda x: x`) is refused with
a message saying how to declare it.
"""

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Activation:
    """An elementwise activation σ that jaxlump can encode, declared by the user or built in.

    Use a declared activation in a model exactly like a function (it is callable); jaxlump then recognises it
    by its `name`, which is also what `jaxlump.save` stores (declare it again before `jaxlump.load` in a new
    process). Declaring a name again replaces the earlier declaration; built-in names cannot be redeclared.

    The declaration is *confirmed* by probing (it cannot decide anything): `derivative` must match the
    automatic derivative of `fn`, and `lipschitz` must bound `|derivative|`, at 24 points in [−7.9, 7.9].

    **Arguments:**

    - `name`: an identifier (letters, digits, `_`), unique among activations.
    - `fn`: the elementwise function `σ(z)`.
    - `derivative`: `σ'(z)`, elementwise (what the dynamical ODE encoding integrates with).
    - `lipschitz`: an upper bound on `|σ'|` (the certificate's a-priori bound needs it).
    - `kinked`: `True` when σ' jumps (piecewise-linear activations such as relu): the ODE solver then
        locates each kink (Heun, more steps).
    - `degree`: the degree of σ' as a polynomial in `a = σ(z)` (tanh `1 − a²`: 2), or `None` when it is
        not one; documents the polynomial form of the encoding (`polynomial_degree`).

    **Raises:** `ValueError` for a bad name, a taken built-in name, a non-positive `lipschitz`, or a
    `derivative` / `lipschitz` contradicted by the probe.

    ```python
    import jax, jax.numpy as jnp, jaxlump
    import equinox as eqx, jax.random as jr

    relu6 = jaxlump.Activation(
        "relu6", jax.nn.relu6, lambda z: ((z > 0) & (z < 6)).astype(z.dtype), lipschitz=1.0, kinked=True
    )
    mlp = eqx.nn.MLP(2, 1, 4, 1, activation=relu6, key=jr.key(0))
    assert jaxlump.simulate(mlp, jnp.ones((1, 2))).activations[0].shape == (1, 1, 4)
    ```
    """

    name: str
    fn: Callable
    derivative: Callable
    lipschitz: float
    kinked: bool = False
    degree: int | None = None
    builtin: bool = dataclasses.field(default=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.name, str) or not (self.builtin or _IDENTIFIER.match(self.name)):
            raise ValueError(f"`name` must be an identifier such as 'relu6'; received {self.name!r}.")
        if not callable(self.fn) or not callable(self.derivative):
            raise TypeError(f"activation {self.name!r}: `fn` and `derivative` must be callables.")
        if not (isinstance(self.lipschitz, (int, float)) and math.isfinite(self.lipschitz) and self.lipschitz > 0):
            raise ValueError(
                f"activation {self.name!r}: `lipschitz` must be a finite number > 0; received {self.lipschitz!r}."
            )
        if not self.builtin:
            if _is_builtin_name(self.name):
                raise ValueError(f"activation name {self.name!r} is built in; choose another name.")
            _confirm(self)
        ACTIVATIONS.register(self)

    def __call__(self, z):
        return self.fn(z)

    @property
    def piecewise_linear(self) -> bool:
        """Whether σ' is piecewise constant: identity (`degree` 0), relu, leaky_relu and declared `kinked`
        activations (described as piecewise linear); not the kinked elu(alpha=a ≠ 1) and selu, exponential
        below 0. The ODE encoding integrates a piecewise-constant field with Heun (see `default_solver`)."""
        exponential = self.builtin and (self.name == "selu" or bool(_ELU_NAME.match(self.name)))
        return self.degree == 0 or (self.kinked and not exponential)

    @property
    def model_fn(self) -> Callable:
        """What to put in a rebuilt model: the known function object for built-ins, the declaration otherwise."""
        return self.fn if self.builtin else self


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Probe points avoid 0 (where kinked derivatives jump) and integers (relu6's kink at 6).
_PROBE = np.linspace(-7.9, 7.9, 24)


def _confirm(activation: Activation) -> None:
    """Probe a user declaration: `derivative` equals autodiff of `fn`, and `lipschitz` bounds it."""
    with jax.ensure_compile_time_eval():
        z = jnp.asarray(_PROBE, jnp.float32)
        try:
            declared = np.asarray(activation.derivative(z), np.float64)
            automatic = np.asarray(jax.vmap(jax.grad(lambda s: activation.fn(s)))(z), np.float64)
        except Exception as e:  # noqa: BLE001 — anything that cannot run elementwise is refused
            raise ValueError(
                f"activation {activation.name!r}: `fn`/`derivative` cannot be evaluated elementwise "
                f"on a float32 vector ({e})."
            ) from e
    if declared.shape != z.shape or not np.allclose(declared, automatic, rtol=1e-4, atol=1e-5):
        worst = int(np.argmax(np.abs(np.broadcast_to(declared, z.shape) - automatic)))
        raise ValueError(
            f"activation {activation.name!r}: the declared `derivative` is {declared.ravel()[worst]!r} at "
            f"z = {_PROBE[worst]:.3g}, where the derivative of `fn` is {automatic[worst]!r}."
        )
    if np.max(np.abs(declared)) > activation.lipschitz * (1 + 1e-6):
        raise ValueError(
            f"activation {activation.name!r}: `lipschitz` = {activation.lipschitz} is below max |σ'| = "
            f"{np.max(np.abs(declared)):.6g} on the probe; it must be an upper bound."
        )


class _Registry(Mapping):
    """Activations by name: the built-ins, the parametrised families (`leaky_relu(negative_slope=s)` for any finite
    s, `elu(alpha=a)` and `celu(alpha=a)` for finite a > 0), and user declarations."""

    def __init__(self):
        self._table: dict[str, Activation] = {}

    def register(self, activation: Activation) -> None:
        self._table[activation.name] = activation

    def __getitem__(self, name: str) -> Activation:
        if name in self._table:
            return self._table[name]
        for pattern, family, _ in _FAMILIES if isinstance(name, str) else ():
            match = pattern.match(name)
            if match is not None:
                return family(float(match.group(1)))
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter([name for name in self._table if not _parametrised_name(name)])

    def __len__(self) -> int:
        return len(list(iter(self)))


ACTIVATIONS = _Registry()
_NUMBER = r"([-+0-9.eE]+|inf|-inf|nan)"
_LEAKY_NAME = re.compile(rf"leaky_relu\(negative_slope={_NUMBER}\)\Z")
_ELU_NAME = re.compile(rf"elu\(alpha={_NUMBER}\)\Z")
_CELU_NAME = re.compile(rf"celu\(alpha={_NUMBER}\)\Z")
_DEFAULT_LEAKY_SLOPE = 0.01  # jax.nn.leaky_relu's default


def _parametrised_name(name: str) -> bool:
    return any(pattern.match(name) for pattern, _, _ in _FAMILIES)


def _is_builtin_name(name: str) -> bool:
    return _parametrised_name(name) or (name in ACTIVATIONS._table and ACTIVATIONS._table[name].builtin)


def _identity(z):
    return z


def _silu_derivative(z):
    s = jax.nn.sigmoid(z)
    return s * (1 + z * (1 - s))


@functools.cache
def _leaky_relu(slope: float) -> Activation:
    if not math.isfinite(slope):
        raise KeyError(f"leaky_relu(negative_slope={slope})")
    name = "leaky_relu" if slope == _DEFAULT_LEAKY_SLOPE else f"leaky_relu(negative_slope={slope!r})"
    fn = (
        jax.nn.leaky_relu
        if slope == _DEFAULT_LEAKY_SLOPE
        else functools.partial(jax.nn.leaky_relu, negative_slope=slope)
    )
    return Activation(
        name,
        fn,
        lambda z: jnp.where(z > 0, 1.0, slope).astype(z.dtype),
        max(1.0, abs(slope)),
        kinked=slope != 1.0,
        degree=0 if slope == 1.0 else None,
        builtin=True,
    )


@functools.cache
def _elu(alpha: float) -> Activation:
    if not (math.isfinite(alpha) and alpha > 0):
        raise KeyError(f"elu(alpha={alpha})")
    default = alpha == 1.0  # jax.nn.elu's default
    return Activation(
        "elu" if default else f"elu(alpha={alpha!r})",
        jax.nn.elu if default else functools.partial(jax.nn.elu, alpha=alpha),
        lambda z: jnp.where(z > 0, 1.0, alpha * jnp.exp(jnp.minimum(z, 0))).astype(z.dtype),
        max(1.0, alpha),
        kinked=not default,  # σ' jumps at 0 from α to 1
        builtin=True,
    )


@functools.cache
def _celu(alpha: float) -> Activation:
    if not (math.isfinite(alpha) and alpha > 0):
        raise KeyError(f"celu(alpha={alpha})")
    default = alpha == 1.0  # jax.nn.celu's default
    return Activation(
        "celu" if default else f"celu(alpha={alpha!r})",
        jax.nn.celu if default else functools.partial(jax.nn.celu, alpha=alpha),
        lambda z: jnp.where(z > 0, 1.0, jnp.exp(jnp.minimum(z, 0) / alpha)).astype(z.dtype),
        1.0,  # σ' = e^{z/α} ≤ 1 for z ≤ 0, continuous at 0 for every α
        builtin=True,
    )


# jax.nn.gelu's tanh form: σ(z) = z (1 + tanh(c (z + k z³))) / 2.
_GELU_C, _GELU_K = math.sqrt(2 / math.pi), 0.044715
_GELU = functools.partial(jax.nn.gelu, approximate=False)  # the exact form, z Φ(z) = z erfc(−z/√2) / 2
# jax.nn.selu's constants: selu = λ elu(·, α).
_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _gelu_tanh_derivative(z):
    # Beyond |z| = 10, tanh is ±1 exactly (argument > 43) and the second term 0; clipping keeps z³ finite in
    # every dtype (float16 included).
    zc = jnp.clip(z, -10.0, 10.0)
    t = jnp.tanh(_GELU_C * (zc + _GELU_K * zc**3))
    return 0.5 * (1 + t) + 0.5 * zc * (1 - t**2) * _GELU_C * (1 + 3 * _GELU_K * zc**2)


def _gelu_derivative(z):
    return 0.5 * jax.lax.erfc(-z * math.sqrt(0.5)) + z * jnp.exp(-0.5 * z**2) * (1 / math.sqrt(2 * math.pi))


def _selu_derivative(z):
    return (_SELU_SCALE * jnp.where(z > 0, 1.0, _SELU_ALPHA * jnp.exp(jnp.minimum(z, 0)))).astype(z.dtype)


_BUILTINS = (
    Activation("identity", _identity, jnp.ones_like, 1.0, degree=0, builtin=True),
    Activation("tanh", jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2, 1.0, degree=2, builtin=True),
    Activation(
        "sigmoid", jax.nn.sigmoid, lambda z: jax.nn.sigmoid(z) * (1 - jax.nn.sigmoid(z)), 0.25, degree=2, builtin=True
    ),
    Activation("relu", jax.nn.relu, lambda z: (z > 0).astype(z.dtype), 1.0, kinked=True, builtin=True),
    Activation("softplus", jax.nn.softplus, jax.nn.sigmoid, 1.0, builtin=True),
    # max |silu'| = 1.099839 (at z ≈ 2.3994); rounded up, the certificate needs an upper bound.
    Activation("silu", jax.nn.silu, _silu_derivative, 1.09984, builtin=True),
    # max |gelu_tanh'| = 1.1289931 (at z ≈ 1.4185), computed in float64; rounded up.
    Activation("gelu_tanh", jax.nn.gelu, _gelu_tanh_derivative, 1.129, builtin=True),
    # max |gelu'| = Φ(√2) + √2 φ(√2) = 1.1289041 (at z = √2); rounded up.
    Activation("gelu", _GELU, _gelu_derivative, 1.12891, builtin=True),
    # max |selu'| = λα = 1.7580993 (as z → 0⁻); rounded up. σ' jumps at 0 from λα to λ.
    Activation("selu", jax.nn.selu, _selu_derivative, 1.75810, kinked=True, builtin=True),
)
_BUILTINS += (_leaky_relu(_DEFAULT_LEAKY_SLOPE), _elu(1.0), _celu(1.0))


def _numpy_sigmoid(z):
    return 0.5 * (np.tanh(0.5 * z) + 1)  # = 1 / (1 + e^{-z}) without overflow in e^{-z}


def _numpy_gelu_tanh(z):
    zc = np.clip(z, -10.0, 10.0)  # tanh is ±1 exactly beyond; keeps z³ finite (see `_gelu_tanh_derivative`)
    return z * (0.5 * (1 + np.tanh(_GELU_C * (zc + _GELU_K * zc**3))))


def _numpy_gelu(z):
    from scipy.special import erfc  # SciPy is a dependency of JAX itself

    z = np.asarray(z)
    return 0.5 * z * erfc(-z * math.sqrt(0.5)).astype(z.dtype)  # SciPy computes float16 in float64


def _numpy_leaky_relu(z, slope):
    return np.where(z >= 0, z, slope * z)


def _numpy_elu(z, alpha):
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))


def _numpy_celu(z, alpha):
    return np.maximum(z, 0) + alpha * np.expm1(np.minimum(z, 0) / alpha)


_NUMPY_FUNCTIONS = {
    "identity": _identity,
    "tanh": np.tanh,
    "sigmoid": _numpy_sigmoid,
    "relu": lambda z: np.maximum(z, 0),
    "softplus": lambda z: np.logaddexp(z, 0),
    "silu": lambda z: z * _numpy_sigmoid(z),
    "gelu_tanh": _numpy_gelu_tanh,
    "gelu": _numpy_gelu,
    "selu": lambda z: _SELU_SCALE * _numpy_elu(z, _SELU_ALPHA),
    "leaky_relu": lambda z: _numpy_leaky_relu(z, _DEFAULT_LEAKY_SLOPE),
    "elu": lambda z: _numpy_elu(z, 1.0),
    "celu": lambda z: _numpy_celu(z, 1.0),
}
# The parametrised families: name pattern, `Activation` for a parameter value, NumPy function of (z, value).
_FAMILIES = (
    (_LEAKY_NAME, _leaky_relu, _numpy_leaky_relu),
    (_ELU_NAME, _elu, _numpy_elu),
    (_CELU_NAME, _celu, _numpy_celu),
)


def numpy_activation(name: str, z: np.ndarray) -> np.ndarray:
    """`σ(z)` for the activation `name` on a concrete NumPy array, on the host: the built-ins in NumPy (eager JAX
    would compile each primitive anew for every shape), a user declaration through its own `fn`."""
    if name in _NUMPY_FUNCTIONS:
        return _NUMPY_FUNCTIONS[name](z)
    for pattern, _, numpy_family in _FAMILIES:
        match = pattern.match(name)
        if match is not None:
            return numpy_family(z, float(match.group(1)))
    return np.asarray(ACTIVATIONS[name].fn(jnp.asarray(z)))


# Equinox's default `final_activation` of `eqx.nn.MLP` (a private identity function), when present.
_EQX_IDENTITY = getattr(getattr(eqx.nn, "_mlp", None), "_identity", None)
_ALIASES = {jax.lax.tanh: "tanh", jax.lax.logistic: "sigmoid"}


@functools.cache
def _known_functions() -> dict:
    known = {act.fn: name for name, act in ACTIVATIONS._table.items() if act.builtin}
    known.update(_ALIASES)
    if _EQX_IDENTITY is not None:
        known[_EQX_IDENTITY] = "identity"
    return known


def _supported() -> str:
    return (
        "tanh (jnp.tanh, jax.nn.tanh), sigmoid (jax.nn.sigmoid), relu (jax.nn.relu), leaky_relu (jax.nn.leaky_relu "
        "or functools.partial(jax.nn.leaky_relu, negative_slope=s)), softplus, silu (jax.nn.softplus, jax.nn.silu), "
        "gelu_tanh (jax.nn.gelu), gelu (functools.partial(jax.nn.gelu, approximate=False)), elu, celu (jax.nn.elu, "
        "jax.nn.celu or functools.partial of either with alpha=a, a > 0), selu (jax.nn.selu), "
        "identity (eqx.nn.Identity()), as functions, eqx.nn.Lambda wrappers or their flax.nnx aliases"
    )


def _number(value) -> float | None:
    """`value` as a float when it is a finite Python or NumPy real scalar (not a bool, not an array), else None."""
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        if math.isfinite(float(value)):
            return float(value)
    return None


def _leaky_relu_partial(keywords: dict) -> str | None:
    slope = _number(keywords.get("negative_slope", _DEFAULT_LEAKY_SLOPE))
    return None if slope is None else _leaky_relu(slope).name


def _alpha_partial(family: Callable) -> Callable[[dict], str | None]:
    def name(keywords: dict) -> str | None:
        alpha = _number(keywords.get("alpha", 1.0))
        return None if alpha is None or alpha <= 0 else family(alpha).name

    return name


def _gelu_partial(keywords: dict) -> str | None:
    approximate = keywords.get("approximate", True)
    if isinstance(approximate, (bool, np.bool_)):
        return "gelu_tanh" if approximate else "gelu"
    return None


# The recognised `functools.partial`s: function, its one keyword, the name for the keyword's value (None when the
# value is refused), and what the refusal says is accepted.
_PARTIALS = (
    (jax.nn.leaky_relu, "negative_slope", _leaky_relu_partial, "a finite Python number"),
    (jax.nn.elu, "alpha", _alpha_partial(_elu), "a finite Python number > 0"),
    (jax.nn.celu, "alpha", _alpha_partial(_celu), "a finite Python number > 0"),
    (jax.nn.gelu, "approximate", _gelu_partial, "True or False"),
)
_PARTIAL_FORMS = ", ".join(f"functools.partial(jax.nn.{fn.__name__}, {keyword}=...)" for fn, keyword, _, _ in _PARTIALS)


def _refusal(fn, where: str, reason: str) -> TypeError:
    label = getattr(fn, "__name__", None) or repr(fn)
    return TypeError(
        f"{where}: activation {label!r} is not supported: {reason}. jaxlump recognises activations by what they "
        f"are, not by their values; supported: {_supported()}. To use another elementwise function, declare it "
        "with `jaxlump.Activation(name, fn, derivative, lipschitz)` and put that object in the model."
    )


def identify_activation(fn: Callable, where: str) -> str:
    """The name of the activation `fn` is, recognised by identity (see the module docs); refuses anything else.

    **Arguments:**

    - `fn`: the activation as found in the model (function, `eqx.nn.Lambda`, `functools.partial`, ...).
    - `where`: where it was found, for the message (`"eqx.nn.MLP.activation"`).

    **Returns:** a key of `ACTIVATIONS`.

    **Raises:** `TypeError` naming `where` for an unknown, look-alike or learnable activation.
    """
    if isinstance(fn, eqx.nn.Lambda):
        fn = fn.fn
    if isinstance(fn, Activation):
        if ACTIVATIONS.get(fn.name) != fn:
            raise _refusal(fn, where, f"it was declared again since under the same name {fn.name!r}")
        return fn.name
    if isinstance(fn, eqx.nn.Identity) or fn is _EQX_IDENTITY:
        return "identity"
    if isinstance(fn, functools.partial):
        keywords = dict(fn.keywords)
        for func, keyword, name_for, accepted in _PARTIALS:
            if fn.func is func and not fn.args and set(keywords) <= {keyword}:
                name = name_for(keywords)
                if name is None:
                    raise _refusal(fn, where, f"{keyword} must be {accepted}; received {keywords[keyword]!r}")
                return name
        if fn.args or fn.keywords:
            raise _refusal(fn, where, f"only {_PARTIAL_FORMS} are recognised")
        return identify_activation(fn.func, where)
    if isinstance(fn, eqx.Module) and jax.tree_util.tree_leaves(eqx.filter(fn, eqx.is_array)):
        raise TypeError(
            f"{where}: learnable activation {type(fn).__name__} is not supported; its per-neuron "
            f"parameters cannot be merged. Supported: {_supported()}."
        )
    try:
        name = _known_functions().get(fn)
    except TypeError:  # unhashable callables are not known functions
        name = None
    if name is None:
        raise _refusal(fn, where, "it is not one of the known functions")
    return name
