"""Data sets: the shared sampler against closed forms, each system against hand-written NumPy equations,
the UCI loaders against independent parses of the shipped files."""

import csv
import gzip
import hashlib
import io
from importlib import resources

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxlump import datasets
from jaxlump.datasets import (
    Dataset,
    abalone,
    glycolytic,
    household_power,
    metro_traffic,
    polymerization,
    protein,
    reaction_network,
    rlc_network,
    simulate_system,
)
from jaxlump.datasets._dataset import make_dataset, random_split
from jaxlump.datasets._glycolytic import PARAMETERS
from jaxlump.datasets._glycolytic import vector_field as glycolytic_field
from jaxlump.datasets._polymerization import polymerization_network
from jaxlump.datasets._reaction_network import MassActionNetwork, phosphorylation_network
from jaxlump.datasets._rlc import RLC_PARAMETERS, LinearVectorField, rlc_matrix

# ---------------------------------------------------------------------------------------------- Dataset


def _toy(standardize=True):
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(3.0, 2.0, (50, 3)), rng.normal(3.0, 2.0, (20, 3))
    x_train[:, 2] = x_test[:, 2] = 7.0  # a constant column
    y_train, y_test = rng.normal(-1.0, 5.0, (50, 1)), rng.normal(-1.0, 5.0, (20, 1))
    data = make_dataset("toy", (x_train, y_train), (x_test, y_test), feature_names="abc", target_names="y",
                        standardize=standardize)  # fmt: skip
    return data, (x_train, y_train, x_test, y_test)


def test_standardisation_uses_training_statistics():
    data, (x_train, y_train, x_test, y_test) = _toy()
    mean, std = x_train.mean(0), x_train.std(0)
    std[2] = 1.0
    np.testing.assert_allclose(data.x_test, (x_test - mean) / std, atol=1e-12)
    np.testing.assert_allclose(data.y_test, (y_test - y_train.mean()) / y_train.std(), atol=1e-12)
    np.testing.assert_allclose(np.mean(data.x_train, 0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.std(data.x_train, 0), [1.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(data.to_raw_inputs(data.x_test), x_test, atol=1e-12)
    np.testing.assert_allclose(data.to_raw_targets(data.y_train), y_train, atol=1e-12)
    raw, _ = _toy(standardize=False)
    np.testing.assert_allclose(raw.x_train, x_train)
    np.testing.assert_allclose(raw.to_raw_targets(raw.y_test), y_test)
    np.testing.assert_allclose(raw.x_mean, mean)
    with pytest.raises(TypeError, match="standardize"):
        make_dataset("t", (x_train, y_train), (x_test, y_test), feature_names="abc", target_names="y", standardize=1)


@pytest.mark.user_errors
def test_calibration_draws_distinct_training_rows():
    data, _ = _toy()
    x = data.calibration(10, jr.key(3))
    assert x.shape == (10, 3)
    rows = {tuple(r) for r in np.asarray(data.x_train)}
    assert all(tuple(r) in rows for r in np.asarray(x)) and len({tuple(r) for r in np.asarray(x)}) == 10
    np.testing.assert_array_equal(x, data.calibration(10, jr.key(3)))
    assert not np.array_equal(x, data.calibration(10, jr.key(4)))
    with pytest.raises(ValueError, match="`n`"):
        data.calibration(51, jr.key(0))
    with pytest.raises(ValueError, match="`n`"):
        data.calibration(0, jr.key(0))
    with pytest.raises(TypeError, match="`n`"):
        data.calibration(2.5, jr.key(0))
    with pytest.raises(TypeError, match="`key`"):
        data.calibration(2, "seed")


def test_random_split_is_a_seeded_partition():
    train, test = random_split(101, 0.2, jr.key(7))
    assert len(test) == 20 and len(train) == 81
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(101))
    again, _ = random_split(101, 0.2, jr.key(7))
    other, _ = random_split(101, 0.2, jr.key(8))
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)
    with pytest.raises(ValueError, match="test_fraction"):
        random_split(10, 1.0, jr.key(0))


# ----------------------------------------------------------------------------------- simulate_system


def _planted_linear_system():
    """A = V diag(λ) V⁻¹ with known λ, V: exp(A t) = V diag(e^{λt}) V⁻¹ exactly."""
    v = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.2, 0.0, 1.0]])
    lam = np.array([-0.5, -1.0, 0.3])
    v_inv = np.linalg.inv(v)
    return v @ np.diag(lam) @ v_inv, lambda t: v @ np.diag(np.exp(lam * t)) @ v_inv


def test_simulate_system_matches_the_closed_form():
    a, flow = _planted_linear_system()
    lower, upper = np.array([-1.0, 0.0, 0.5]), np.array([1.0, 2.0, 0.6])
    save_times = np.linspace(0.0, 2.0, 5)
    burn_in = 0.5
    kwargs = dict(n_trajectories=6, save_times=save_times, key=jr.key(0), burn_in=burn_in, solver=diffrax.Tsit5(),
                  rtol=1e-10, atol=1e-12)  # fmt: skip
    states, derivatives = simulate_system(LinearVectorField(a), lower, upper, **kwargs)
    assert states.shape == derivatives.shape == (6, 5, 3)
    y0 = np.linalg.solve(flow(burn_in), np.asarray(states[:, 0]).T).T  # back to t = 0
    assert np.all((y0 >= lower - 1e-8) & (y0 <= upper + 1e-8))
    expected = np.stack([(flow(burn_in + t) @ y0.T).T for t in save_times], axis=1)
    np.testing.assert_allclose(states, expected, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(derivatives, states @ a.T, rtol=1e-12, atol=1e-12)
    again, _ = simulate_system(LinearVectorField(a), lower, upper, **kwargs)
    np.testing.assert_array_equal(states, again)


def test_simulate_system_bad_inputs():
    field = LinearVectorField(-np.eye(2))
    kwargs = dict(n_trajectories=2, save_times=[0.0, 1.0], key=0)
    with pytest.raises(ValueError, match="lower"):
        simulate_system(field, np.zeros(2), np.ones(3), **kwargs)
    with pytest.raises(ValueError, match="lower <= upper"):
        simulate_system(field, np.ones(2), np.zeros(2), **kwargs)
    with pytest.raises(ValueError, match="save_times"):
        simulate_system(field, np.zeros(2), np.ones(2), n_trajectories=2, save_times=[1.0, 0.0], key=0)
    with pytest.raises(ValueError, match="burn_in"):
        simulate_system(field, np.zeros(2), np.ones(2), burn_in=-1.0, **kwargs)
    with pytest.raises(ValueError, match="n_trajectories"):
        simulate_system(field, np.zeros(2), np.ones(2), n_trajectories=0, save_times=[0.0, 1.0], key=0)
    with pytest.raises(ValueError, match="rtol"):
        simulate_system(field, np.zeros(2), np.ones(2), rtol=0.0, **kwargs)
    with pytest.raises(TypeError, match="solver"):
        simulate_system(field, np.zeros(2), np.ones(2), solver="rk4", **kwargs)
    with pytest.raises(TypeError, match="vector_field"):
        simulate_system(None, np.zeros(2), np.ones(2), **kwargs)
    with pytest.raises(TypeError, match="key"):
        simulate_system(field, np.zeros(2), np.ones(2), n_trajectories=2, save_times=[0.0, 1.0], key=1.5)
    with pytest.raises(RuntimeError, match="failed"):
        simulate_system(field, np.zeros(2), np.ones(2), solver=diffrax.Tsit5(), max_steps=1, **kwargs)


# ----------------------------------------------------------------------------------------- glycolytic


def _glycolytic_numpy(s):
    """Ruoff et al. (2003) written out by hand with the DESIGN §6 constants."""
    s1, s2, s3, s4, s5, s6, s7 = s
    v1 = 100.0 * s1 * s6 / (1.0 + (s6 / 0.52) ** 4)
    return np.array(
        [
            2.5 - v1,
            2 * v1 - 6.0 * s2 * (1 - s5) - 12.0 * s2 * s5,
            6.0 * s2 * (1 - s5) - 16.0 * s3 * (4 - s6),
            16.0 * s3 * (4 - s6) - 100.0 * s4 * s5 - 13.0 * (s4 - s7),
            6.0 * s2 * (1 - s5) - 100.0 * s4 * s5 - 12.0 * s2 * s5,
            -2 * v1 + 2 * 16.0 * s3 * (4 - s6) - 1.28 * s6,
            0.1 * 13.0 * (s4 - s7) - 1.8 * s7,
        ]
    )


def _rk4(f, y, t_end, n_steps):
    h = t_end / n_steps
    for _ in range(n_steps):
        k1 = f(y)
        k2 = f(y + h / 2 * k1)
        k3 = f(y + h / 2 * k2)
        k4 = f(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


GLYCOLYTIC_PARAMS = {k: jnp.asarray(v) for k, v in PARAMETERS.items()}
GLYCOLYTIC_SMALL = dict(n_train=300, n_test=100, n_times=20)


@pytest.fixture(scope="module")
def glyco():
    return glycolytic(**GLYCOLYTIC_SMALL, standardize=False)


def test_glycolytic_field_at_a_hand_computed_state():
    s = np.array([1.0, 0.5, 0.1, 0.2, 0.15, 1.0, 0.07])
    # S6/K1 = 1/0.52, (1/0.52)⁴ = 13.676869, so v1 = 100 / 14.676869 = 6.813443.
    v1 = 100.0 / (1.0 + (1 / 0.52) ** 4)
    np.testing.assert_allclose(v1, 6.813443, rtol=1e-6)
    f = np.asarray(glycolytic_field(0.0, jnp.asarray(s), GLYCOLYTIC_PARAMS))
    np.testing.assert_allclose(f[0], 2.5 - v1, rtol=1e-12)
    np.testing.assert_allclose(f, _glycolytic_numpy(s), rtol=1e-12)


def test_glycolytic_trajectories_match_numpy_rk4_and_finite_differences():
    """Kvaerno5 (the stiff default) against a NumPy RK4 of the hand-written equations, and central
    differences of densely saved states against the field evaluated at them."""
    lower, upper = (0.15, 0.19, 0.04, 0.10, 0.08, 0.14, 0.05), (1.60, 2.16, 0.20, 0.35, 0.30, 2.67, 0.10)
    h = 1e-3
    centres = (0.3, 1.0)
    times = np.concatenate([[0.0], *(t + np.array([-h, 0.0, h]) for t in centres)])
    states, derivatives = simulate_system(
        glycolytic_field, lower, upper, n_trajectories=2, save_times=times, key=jr.key(5), args=GLYCOLYTIC_PARAMS,
        rtol=1e-10, atol=1e-12,
    )  # fmt: skip
    states, derivatives = np.asarray(states), np.asarray(derivatives)
    for y0, trajectory, field in zip(states[:, 0], states, derivatives):
        np.testing.assert_allclose(field, np.stack([_glycolytic_numpy(s) for s in trajectory]), rtol=1e-10)
        for k, t in enumerate(centres):
            np.testing.assert_allclose(trajectory[2 + 3 * k], _rk4(_glycolytic_numpy, y0, t, int(t * 5000)), rtol=1e-7)
    central = (states[:, 3::3] - states[:, 1::3]) / (2 * h)
    scale = np.abs(derivatives[:, 2::3]).max()
    np.testing.assert_allclose(central, derivatives[:, 2::3], atol=1e-4 * scale)


def test_glycolytic_dataset(glyco):
    assert isinstance(glyco, Dataset)
    assert glyco.x_train.shape == (300, 7) and glyco.y_train.shape == (300, 7)
    assert glyco.x_test.shape == (100, 7) and glyco.y_test.shape == (100, 7)
    assert glyco.x_train.dtype == jnp.float64
    assert glyco.feature_names == ("S1", "S2", "S3", "S4", "S5", "S6", "S7")
    assert glyco.target_names[0] == "dS1/dt"
    x, y = np.asarray(glyco.x_train), np.asarray(glyco.y_train)
    assert np.all(np.isfinite(x)) and np.all(x > 0)
    np.testing.assert_allclose(y, np.stack([_glycolytic_numpy(s) for s in x]), rtol=1e-10, atol=1e-10)
    # The default limit cycle spans the documented box (roughly): S6 over most of [0.14, 2.67].
    assert x[:, 5].min() < 0.5 and x[:, 5].max() > 2.0


def test_glycolytic_is_deterministic_and_standardised(glyco):
    same = glycolytic(**GLYCOLYTIC_SMALL, standardize=False)
    np.testing.assert_array_equal(glyco.x_train, same.x_train)
    np.testing.assert_array_equal(glyco.y_test, same.y_test)
    other = glycolytic(**GLYCOLYTIC_SMALL, key=jr.key(1), standardize=False)
    assert not np.allclose(glyco.x_test, other.x_test)
    std = glycolytic(**GLYCOLYTIC_SMALL)
    np.testing.assert_allclose(std.to_raw_inputs(std.x_train), glyco.x_train, rtol=1e-12)
    np.testing.assert_allclose(np.mean(std.y_train, 0), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.std(std.y_train, 0), 1.0, atol=1e-10)
    with jax.enable_x64(False):
        single = glycolytic(**GLYCOLYTIC_SMALL, standardize=False)
    assert single.x_train.dtype == jnp.float32
    np.testing.assert_allclose(single.x_train, glyco.x_train, rtol=1e-6)


def test_glycolytic_test_set_does_not_depend_on_n_train(glyco):
    fewer = glycolytic(n_train=100, n_test=100, n_times=20, standardize=False)
    np.testing.assert_array_equal(fewer.x_test, glyco.x_test)


def test_glycolytic_next_state_target():
    # 15 + 5 trajectories of 19 steps: the shapes of the `glyco` fixture, so no new compilation.
    data = glycolytic(n_train=285, n_test=95, n_times=20, t_end=1.9, target="next_state", standardize=False)
    assert data.target_names[0] == "S1(t+dt)" and data.x_train.shape == (285, 7)
    for x, y in zip(np.asarray(data.x_train[:3]), np.asarray(data.y_train[:3])):
        np.testing.assert_allclose(y, _rk4(_glycolytic_numpy, x, 0.1, 500), rtol=1e-7, atol=1e-9)


def test_glycolytic_bad_arguments():
    with pytest.raises(ValueError, match="parameters"):
        glycolytic(parameters={"J1": 2.0})
    with pytest.raises(ValueError, match="target"):
        glycolytic(target="flow")
    with pytest.raises(ValueError, match="n_times"):
        glycolytic(n_times=1)
    with pytest.raises(ValueError, match="t_end"):
        glycolytic(t_end=0.0)
    with pytest.raises(TypeError, match="n_train"):
        glycolytic(n_train=10.0)


# ---------------------------------------------------------------------- polymerization, reactions, RLC


@eqx.filter_jit
def _on_rows(field, x):
    return jax.vmap(lambda y: field(0.0, y))(x)


def test_mass_action_network():
    net = MassActionNetwork.from_reactions(["A", "B"], [({"A": 2}, {"B": 1}, 0.5), ({}, {"A": 1}, 2.0)])
    x = jnp.array([3.0, 1.0])
    # rates: 0.5·A² = 4.5 and 2; Ȧ = −2·4.5 + 2, Ḃ = 4.5.
    np.testing.assert_allclose(net(0.0, x), [-7.0, 4.5])
    jacobian_at_zero = jax.jit(jax.jacfwd(lambda y: net(0.0, y)))(jnp.zeros(2))
    np.testing.assert_allclose(jacobian_at_zero, np.zeros((2, 2)))  # smooth (no NaN) at x = 0
    with pytest.raises(ValueError, match="species"):
        MassActionNetwork.from_reactions(["A"], [({"C": 1}, {}, 1.0)])
    with pytest.raises(ValueError, match="bimolecular"):
        MassActionNetwork.from_reactions(["A"], [({"A": 3}, {}, 1.0)])


def test_polymerization_field_matches_hand_written_equations():
    rates = {"inflow": 1.3, "k_grow": 0.7, "k_shrink": 0.4, "k_out": 0.2}
    net = polymerization_network(5, rates)
    x = np.array([1.1, 0.3, 0.5, 0.2, 0.4])
    g = 0.7 * x[0] * x[:-1] - 0.4 * x[1:]  # g_i for i = 1..4 (0-based g[0] = g_1)
    expected = np.zeros(5)
    expected[0] = 1.3 - 2 * g[0] - g[1:].sum() - 0.2 * x[0]
    expected[1:] = g - np.append(g[1:], 0.0) - 0.2 * x[1:]
    np.testing.assert_allclose(net(0.0, jnp.asarray(x)), expected, rtol=1e-12)


def test_polymerization_closed_system_conserves_monomer_mass():
    net = polymerization_network(6, {"inflow": 0.0, "k_grow": 1.3, "k_shrink": 0.6, "k_out": 0.0})
    x = jr.uniform(jr.key(0), (20, 6))
    mass_rate = _on_rows(net, x) @ jnp.arange(1.0, 7.0)
    np.testing.assert_allclose(mass_rate, 0.0, atol=1e-12)


def test_polymerization_dataset():
    data = polymerization(n_train=100, n_test=50, n_times=10, max_length=4, standardize=False)
    assert data.x_train.shape == (100, 4) and data.y_test.shape == (50, 4)
    net = polymerization_network(4)
    np.testing.assert_allclose(data.y_train, _on_rows(net, data.x_train), rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(data.x_train) >= -1e-9)
    with pytest.raises(ValueError, match="rates"):
        polymerization(rates={"k_fast": 1.0})
    with pytest.raises(ValueError, match="max_length"):
        polymerization(max_length=1)


def test_phosphorylation_field_and_conservation():
    rates = {"kon_kinase": 5.0, "koff_kinase": 1.0, "kcat_kinase": 2.0,
             "kon_phosphatase": 4.0, "koff_phosphatase": 1.0, "kcat_phosphatase": 1.5}  # fmt: skip
    net = phosphorylation_network(1, rates)
    assert net.species == ("S0", "S1", "E", "F", "ES0", "FS1")
    s0, s1, e, f, es0, fs1 = x = np.array([0.6, 0.3, 0.2, 0.4, 0.05, 0.07])
    bind_e, bind_f = 5.0 * s0 * e - 1.0 * es0, 4.0 * s1 * f - 1.0 * fs1
    expected = [
        -bind_e + 1.5 * fs1,
        -bind_f + 2.0 * es0,
        -bind_e + 2.0 * es0,
        -bind_f + 1.5 * fs1,
        bind_e - 2.0 * es0,
        bind_f - 1.5 * fs1,
    ]
    np.testing.assert_allclose(net(0.0, jnp.asarray(x)), expected, rtol=1e-12)
    net3 = phosphorylation_network(3)
    x = jr.uniform(jr.key(1), (10, 12))
    dx = _on_rows(net3, x)
    names = net3.species
    enzyme = [names.index(n) for n in ("E", "ES0", "ES1", "ES2")]
    phosphatase = [names.index(n) for n in ("F", "FS1", "FS2", "FS3")]
    substrate = [i for i, n in enumerate(names) if n not in ("E", "F")]
    for group in (enzyme, phosphatase, substrate):
        np.testing.assert_allclose(dx[:, group].sum(1), 0.0, atol=1e-12)


def test_reaction_network_dataset():
    data = reaction_network(n_train=100, n_test=50, n_times=10, standardize=False)
    assert data.feature_names == ("S0", "S1", "S2", "E", "F", "ES0", "ES1", "FS1", "FS2")
    assert data.x_train.shape == (100, 9)
    x = np.asarray(data.x_train)
    total_enzyme = x[:, [3, 5, 6]].sum(1)  # conserved along each trajectory, within the sampled range
    assert np.all((total_enzyme >= 0.1 - 1e-9) & (total_enzyme <= 0.7 + 1e-9))
    net = phosphorylation_network(2)
    np.testing.assert_allclose(data.y_train, _on_rows(net, data.x_train), rtol=1e-10, atol=1e-12)


def test_rlc_matrix_of_a_two_level_tree():
    p = {"R": 0.3, "L": 2.0, "C": 0.5, "R_load": 4.0, "omega": 1.5}
    u, w, i1, i2, i3, v1, v2, v3 = y = np.array([0.7, -0.2, 0.4, -0.1, 0.3, 0.9, -0.5, 0.2])
    expected = [
        1.5 * w,
        -1.5 * u,
        (u - v1 - 0.3 * i1) / 2.0,
        (v1 - v2 - 0.3 * i2) / 2.0,
        (v1 - v3 - 0.3 * i3) / 2.0,
        (i1 - i2 - i3) / 0.5,
        (i2 - v2 / 4.0) / 0.5,
        (i3 - v3 / 4.0) / 0.5,
    ]
    np.testing.assert_allclose(rlc_matrix(2, p) @ y, expected, rtol=1e-12)


def test_rlc_energy_balance():
    """Tellegen: d/dt (L Σi² + C Σv²)/2 = u i₁ − R Σi² − Σ_leaves v²/R_load, for depth 4."""
    p = dict(RLC_PARAMETERS, R=0.2, L=1.5, C=0.7, R_load=3.0)
    depth, n = 4, 15
    a = rlc_matrix(depth, p)
    y = np.random.default_rng(0).normal(size=(8, 2 + 2 * n))
    dy = y @ a.T
    i, v, di, dv = y[:, 2 : 2 + n], y[:, 2 + n :], dy[:, 2 : 2 + n], dy[:, 2 + n :]
    power = 1.5 * (i * di).sum(1) + 0.7 * (v * dv).sum(1)
    expected = y[:, 0] * i[:, 0] - 0.2 * (i**2).sum(1) - (v[:, 7:] ** 2).sum(1) / 3.0
    np.testing.assert_allclose(power, expected, rtol=1e-12, atol=1e-12)


def test_rlc_network_dataset():
    data = rlc_network(n_train=100, n_test=50, n_times=10, depth=2, standardize=False)
    assert data.feature_names == ("u", "w", "i1", "i2", "i3", "v1", "v2", "v3")
    a = rlc_matrix(2, RLC_PARAMETERS)
    np.testing.assert_allclose(data.y_train, data.x_train @ a.T, rtol=1e-10, atol=1e-12)
    # The source oscillator keeps its amplitude: u² + w² ≤ 2 (initial box [−1, 1]²).
    assert np.all(np.asarray(data.x_train[:, 0] ** 2 + data.x_train[:, 1] ** 2) <= 2.0 + 1e-6)
    with pytest.raises(ValueError, match="R_load"):
        rlc_network(parameters={"R_load": 0.0})


# --------------------------------------------------------------------------------------------- UCI

# SHA-256 of the upstream files (data/README.md); the shipped .gz files decompress to exactly these bytes.
UPSTREAM = {
    "abalone.data.gz": ("de37cdcdcaaa50c309d514f248f7c2302a5f1f88c168905eba23fe2fbc78449f", 4177),
    "Metro_Interstate_Traffic_Volume.csv.gz": (
        "749c90d720360a4215bb15345526073c079ba4cc95e3fa558796d083f85fce9e",
        48205,
    ),
    "CASP.csv.gz": ("712d2759f8113622a3ba93a47e451397147df946111f6ffdd8c655385d564aef", 45731),
    "household_power_hourly.csv.gz": ("4c80d9b5f312f484c76117d088095f3c27c7cb62b413f58496919c41391effb9", 34590),
}


def _shipped_text(name):
    path = resources.files("jaxlump.datasets").joinpath("data").joinpath(name)
    return gzip.decompress(path.read_bytes())


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_shipped_files_are_the_upstream_files(name):
    raw = _shipped_text(name)
    digest, lines = UPSTREAM[name]
    assert hashlib.sha256(raw).hexdigest() == digest
    assert raw.count(b"\n") == lines


def _rows(name):
    return list(csv.reader(io.StringIO(_shipped_text(name).decode(), newline="")))


UCI = {
    "abalone": (abalone, 4177, 10),
    "protein": (protein, 45730, 9),
    "metro_traffic": (metro_traffic, 40565, 10),
    "household_power": (household_power, 34143, 11),
}


@pytest.mark.parametrize("name", sorted(UCI))
def test_uci_loader(name):
    loader, n_rows, n_features = UCI[name]
    data = loader()
    assert data.name == name and data.n_features == n_features and data.n_targets == 1
    assert data.n_train + data.n_test == n_rows and data.n_test == round(0.2 * n_rows)
    for a in (data.x_train, data.y_train, data.x_test, data.y_test):
        assert np.all(np.isfinite(a))
    np.testing.assert_allclose(np.mean(data.x_train, 0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.std(data.y_train), 1.0, atol=1e-9)
    again = loader()
    np.testing.assert_array_equal(data.x_test, again.x_test)
    other = loader(key=1)
    assert not np.array_equal(data.y_test, other.y_test)
    raw = loader(standardize=False)
    np.testing.assert_allclose(data.to_raw_inputs(data.x_test), raw.x_test, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(data.to_raw_targets(data.y_train), raw.y_train, rtol=1e-10, atol=1e-8)


def test_abalone_one_hot_and_rows():
    data = abalone(standardize=False)
    rows = _rows("abalone.data.gz")
    expected = np.array([[r[0] == "F", r[0] == "I", r[0] == "M", *map(float, r[1:8]), float(r[8])] for r in rows])
    got = np.concatenate([np.hstack([data.x_train, data.y_train]), np.hstack([data.x_test, data.y_test])])
    onehot = got[:, :3]
    assert set(np.unique(onehot)) == {0.0, 1.0} and np.all(onehot.sum(1) == 1)
    np.testing.assert_array_equal(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)])
    with jax.enable_x64(False):
        single = abalone(standardize=False)
    np.testing.assert_allclose(single.x_test, data.x_test, rtol=1e-6)  # same split whatever the precision


def test_protein_columns():
    data = protein(standardize=False)
    assert data.feature_names == tuple(f"F{i}" for i in range(1, 10)) and data.target_names == ("RMSD",)
    rmsd = np.concatenate([data.y_train, data.y_test])
    assert 0.0 <= rmsd.min() and rmsd.max() <= 21.0


def test_metro_cleaning():
    data = metro_traffic(standardize=False)
    x = np.concatenate([data.x_train, data.x_test])
    names = data.feature_names
    assert x[:, names.index("temp")].min() > 200.0 and x[:, names.index("rain_1h")].max() <= 60.0
    rows = _rows("Metro_Interstate_Traffic_Volume.csv.gz")[1:]
    holidays = {r[7][:10] for r in rows if r[0] != "None"}
    first = {}
    for r in rows:
        first.setdefault(r[7], r)
    kept = [r for r in first.values() if float(r[1]) > 0]
    assert len(kept) == len(x)
    assert x[:, names.index("holiday")].sum() == sum(r[7][:10] in holidays for r in kept)
    hour_angle = np.arctan2(x[:, names.index("hour_sin")], x[:, names.index("hour_cos")])
    np.testing.assert_allclose(np.sort(np.unique(np.round(hour_angle * 24 / (2 * np.pi)) % 24)), np.arange(24))


def test_household_power_threshold_and_features():
    data = household_power(standardize=False)
    assert "Global_intensity" not in data.feature_names and data.target_names == ("Global_active_power",)
    rows = _rows("household_power_hourly.csv.gz")[1:]
    assert data.n_train + data.n_test == sum(int(r[9]) == 60 and int(r[8]) <= 6 for r in rows)
    everything = household_power(max_imputed_minutes=60)
    assert everything.n_train + everything.n_test == sum(int(r[9]) == 60 for r in rows)
    with pytest.raises(ValueError, match="max_imputed_minutes"):
        household_power(max_imputed_minutes=61)
    with pytest.raises(TypeError, match="max_imputed_minutes"):
        household_power(max_imputed_minutes=1.5)


@pytest.mark.parametrize(
    "loader, options, error, match",
    [
        ("rlc_network", {"parameters": {"R": -1.0}}, ValueError, r"`parameters\['R'\]` must be a finite number > 0"),
        ("rlc_network", {"parameters": {"C": 0.0}}, ValueError, r"`parameters\['C'\]`"),
        ("rlc_network", {"parameters": {"L": float("nan")}}, ValueError, r"`parameters\['L'\]`"),
        ("rlc_network", {"solver": "tsit5"}, TypeError, r"`solver` must be a diffrax solver instance"),
        ("glycolytic", {"parameters": {"k1": -2.0}}, ValueError, r"`parameters\['k1'\]`"),
        ("glycolytic", {"solver": "kvaerno5"}, TypeError, r"`solver`"),
        ("polymerization", {"rates": {"k_grow": -1.0}}, ValueError, r"`rates\['k_grow'\]`"),
        ("reaction_network", {"rates": {"kon_kinase": True}}, ValueError, r"`rates\['kon_kinase'\]`"),
        ("rlc_network", {"rtol": 0.0}, ValueError, r"`rtol` must be a finite number > 0"),
        ("rlc_network", {"standardize": "yes"}, TypeError, r"`standardize` must be True or False"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_simulated_loaders_refuse_unphysical_or_misnamed_options(loader, options, error, match):
    """Refused before any simulation (today: negative resistances are simulated, `solver='tsit5'` dies in diffrax)."""
    with pytest.raises(error, match=match):
        getattr(datasets, loader)(**options)
