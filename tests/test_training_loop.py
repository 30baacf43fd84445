"""`wrap_optax` (lumping inside a jitted optax loop), `shrink(model, state)` and `finetune`.

Dead neurons are found here independently of the library's masks: from the partitions, a hidden neuron is dead
when no original neuron maps to it; its incoming row, bias and outgoing column must then be exactly zero in the
weights, gradients, updates and Adam's moments.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from _networks import numpy_outputs, random_mlp

import jaxlump
from jaxlump._model import to_chain
from jaxlump._training.training_loop import bind, expand, relocate

SLOW = pytest.mark.slow
X = jr.normal(jr.key(1), (64, 3), jnp.float32)
Y = jnp.sin(X[:, :2]) + 0.1 * X[:, 2:3]


def _mlp(activation=jnp.tanh, width=12, key=0):
    return eqx.nn.MLP(3, 2, width, 2, activation=activation, dtype=jnp.float32, key=jr.key(key))


def _dead_entries(chain, partitions) -> np.ndarray:
    """Every parameter of `chain` on a dead neuron (incoming rows, biases, outgoing columns), as one vector."""
    values = []
    for l, labels in enumerate(partitions, start=1):
        dead = np.setdiff1d(np.arange(len(labels)), np.asarray(labels))
        values += [np.asarray(chain.weights[l - 1])[dead].ravel(), np.asarray(chain.biases[l - 1])[dead]]
        values.append(np.asarray(chain.weights[l])[:, dead].ravel())
    return np.concatenate(values)


def _as_chain(tree, static):
    return to_chain(eqx.combine(tree, static), require_finite=False)


def _partitions(state):
    infos = state.info.segments if isinstance(state.info, jaxlump.SitesInfo) else (state.info,)
    return tuple(np.asarray(p) for info in infos for p in info.partitions)


def _loop(model, tx, steps, loss):
    params, static = eqx.partition(model, eqx.is_array)
    state = tx.init(params)

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(params, state):
        grads = jax.grad(lambda p: loss(eqx.combine(p, static)))(params)
        updates, state = tx.update(grads, state, params)
        return eqx.apply_updates(params, updates), state, grads, updates

    for t in range(1, steps + 1):
        before = _partitions(state)
        params, state, grads, updates = step(params, state)
        yield t, before, static, params, state, grads, updates


def _mse(model):
    return jnp.mean((jax.vmap(model)(X) - Y) ** 2)


def test_fifty_steps_five_rounds_keep_dead_neurons_dead():
    model = _mlp()
    tx = jaxlump.wrap_optax(optax.adam(1e-2), model, X, optax.linear_schedule(0.3, 1.2, 50), every=10)
    widths, merged_twice = [(12, 12)], False
    for t, before, static, params, state, grads, updates in _loop(model, tx, 50, _mse):
        after = _partitions(state)
        # In force during the step: the partitions before it. Gradients (tanh: naturally) and updates are zero there.
        assert not np.any(_dead_entries(_as_chain(grads, static), before))
        assert not np.any(_dead_entries(_as_chain(updates, static), before))
        # After the step: weights and both Adam moments are zero on the neurons now dead.
        adam = state.inner[0]
        for tree in (params, adam.mu, adam.nu):
            assert not np.any(_dead_entries(_as_chain(tree, static), after))
        if t % 10:
            assert all(np.array_equal(a, b) for a, b in zip(before, after))
            continue
        for old, new in zip(before, after):
            # Composition: each old block moves whole into one new block (or is removed, -1), at an index live before.
            for r in np.unique(old[old >= 0]):
                assert np.unique(new[old == r]).size == 1
            assert set(np.unique(new[new >= 0])) <= set(np.unique(old[old >= 0]))
            assert np.all(new[old < 0] < 0)
            sizes = np.bincount(old[old >= 0], minlength=old.size)
            for r in np.unique(new[new >= 0]):
                blocks = np.unique(old[new == r])
                merged_twice |= blocks.size > 1 and sizes[blocks].max() > 1
        widths.append(tuple(int(w) for w in np.asarray(state.info.widths_after)[1:-1]))
    assert len(set(widths)) >= 3, widths  # several rounds changed the network
    assert merged_twice  # a block formed in one round merged again in a later one
    masked = eqx.combine(params, static)
    small, info = jaxlump.shrink(masked, state)
    assert tuple(to_chain(small).widths[1:-1]) == widths[-1]
    assert tuple(int(w) for w in np.asarray(info.widths_after)[1:-1]) == widths[-1]
    assert jnp.max(jnp.abs(jax.vmap(small)(X) - jax.vmap(masked)(X))) <= 1e-6


def test_sigmoid_dead_neurons_get_gradients_but_no_updates():
    # sigmoid(0) = 0.5: a dead neuron still feeds a constant, so its outgoing column has a non-zero gradient.
    model = random_mlp(jr.key(2), (3, 10, 10, 2), activation="sigmoid", kind="sequential")
    x = X.astype(jnp.float64)
    tx = jaxlump.wrap_optax(optax.adam(1e-2), model, x, 0.8, every=4)
    saw_gradient = False
    loss = lambda m: jnp.mean((jax.vmap(m)(x) - Y) ** 2)  # noqa: E731
    for _t, before, static, params, state, grads, updates in _loop(model, tx, 12, loss):
        saw_gradient |= bool(np.any(_dead_entries(_as_chain(grads, static), before)))
        assert not np.any(_dead_entries(_as_chain(updates, static), before))
        for tree in (params, state.inner[0].mu, state.inner[0].nu):
            assert not np.any(_dead_entries(_as_chain(tree, static), _partitions(state)))
    assert saw_gradient
    assert sum(int(w) for w in np.asarray(state.info.widths_after)[1:-1]) < 20
    masked = eqx.combine(params, static)
    small, _ = jaxlump.shrink(masked, state)
    np.testing.assert_allclose(numpy_outputs(small, x), numpy_outputs(masked, x), atol=1e-12)


def test_flax_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Sequential(
        nnx.Linear(3, 10, rngs=nnx.Rngs(0)), nnx.tanh, nnx.Linear(10, 10, rngs=nnx.Rngs(1)), nnx.tanh,
        nnx.Linear(10, 2, rngs=nnx.Rngs(2)),
    )  # fmt: skip
    tx = jaxlump.wrap_optax(optax.adam(1e-2), model, X, 0.8, every=5)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    graphdef, _ = nnx.split(model)
    for _ in range(20):
        step(model, optimizer)
        state = jax.tree.map(lambda v: v.get_value(), optimizer.opt_state, is_leaf=lambda v: hasattr(v, "get_value"))
        partitions = _partitions(state)
        for tree in (nnx.state(model, nnx.Param), state.inner[0].mu, state.inner[0].nu):
            chain = to_chain(nnx.merge(graphdef, nnx.as_pure(tree)), require_finite=False)
            assert not np.any(_dead_entries(chain, partitions))
    assert sum(int(w) for w in np.asarray(state.info.widths_after)[1:-1]) < 20
    small, info = jaxlump.shrink(model, optimizer.opt_state)
    assert isinstance(small, nnx.Sequential)
    assert jnp.max(jnp.abs(small(X) - model(X))) <= 1e-6


def _train(model, tx, steps):
    params, static = eqx.partition(model, eqx.is_array)
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(lambda q: _mse(eqx.combine(q, static)))(p), s, p))
    sizes = []
    for _ in range(steps):
        updates, state = step(params, state)
        params = eqx.apply_updates(params, updates)
        sizes.append((int(state.requested), int(state.info.cost_after.dense_params)))
    return eqx.combine(params, static), state, sizes


def test_target_size_count_and_fraction_schedule():
    model = _mlp()
    full = int(jaxlump.cost(model).dense_params)
    _, state, sizes = _train(
        model, jaxlump.wrap_optax(optax.adam(1e-2), model, X, jaxlump.TargetSize(params=120), every=5), 10
    )
    assert sizes[4][0] == 120 and sizes[4][1] <= 120 < full and sizes[-1][1] <= 120
    assert sizes[3] == (-1, full)  # before the first round
    schedule = optax.linear_schedule(1.0, 0.4, 20)
    tx = jaxlump.wrap_optax(optax.adam(1e-2), model, X, jaxlump.TargetSize(fraction=schedule), every=5)
    masked, state, sizes = _train(model, tx, 20)
    rounds = sizes[4::5]
    assert [r for r, _ in rounds] == [int(np.floor(float(schedule(t)) * full)) for t in (5, 10, 15, 20)]
    assert all(realised <= requested for requested, realised in rounds)
    assert [s for _, s in rounds] == sorted((s for _, s in rounds), reverse=True)
    small, _ = jaxlump.shrink(masked, state)
    assert int(jaxlump.cost(small).dense_params) == rounds[-1][1]


def test_shrink_refuses_dead_neurons_with_weights():
    model = _mlp()
    masked, state, _ = _train(model, jaxlump.wrap_optax(optax.sgd(1e-2), model, X, 1.0, every=2), 2)
    labels = _partitions(state)[0]
    dead = int(np.setdiff1d(np.arange(labels.size), labels)[0])
    revived = eqx.tree_at(lambda m: m.layers[1].weight, masked, masked.layers[1].weight.at[0, dead].set(1e-3))
    with pytest.raises(ValueError, match="non-zero parameters on neurons the optimizer state marks dead"):
        jaxlump.shrink(revived, state)


def test_plain_adam_revives_merged_neurons_finetune_does_not():
    # The trap wrap_optax and finetune close: lumped in the middle of training, a model whose Adam state is kept
    # grows its dead neurons back through the momentum.
    params, static = eqx.partition(_mlp(), eqx.is_array)
    tx = optax.adam(1e-2)
    state = tx.init(params)

    def step(params, static, state):
        grads = jax.grad(lambda p: _mse(eqx.combine(p, static)))(params)
        updates, state = tx.update(grads, state, params)
        return eqx.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, static, state)
    masked, info = jaxlump.lump_masked(eqx.combine(params, static), X, 0.8)
    dead_before = _dead_entries(to_chain(masked), info.partitions)
    assert dead_before.size and not np.any(dead_before)
    # lump_masked returns a LumpedMLP; keep training the MLP the state belongs to, with the masked weights.
    binding, bound = bind(eqx.combine(params, static))
    params, _ = step(binding.write(bound, (to_chain(masked),)), static, state)
    assert np.any(_dead_entries(to_chain(eqx.combine(params, static)), info.partitions))
    tuned, losses = jaxlump.finetune(masked, X, Y, steps=30, info=info, optimizer=optax.adam(1e-2))
    assert losses.shape == (30,) and losses[-1] < losses[0]
    assert not np.any(_dead_entries(to_chain(tuned), info.partitions))
    small, _ = jaxlump.shrink(tuned, info)
    assert jnp.max(jnp.abs(jax.vmap(small)(X) - jax.vmap(tuned)(X))) <= 1e-6


def test_finetune_keeps_unstructured_masks():
    from jaxlump.baselines import magnitude

    pruned, info = magnitude(_mlp(), X, 0.5)
    zeros = [np.asarray(m) == 0 for m in info.weight_masks]
    tuned, losses = jaxlump.finetune(pruned, X, Y, steps=20, info=info, optimizer=optax.adam(1e-2))
    assert losses[-1] < losses[0]
    assert sum(int(zero.sum()) for zero in zeros) > 0
    for w, zero in zip(to_chain(tuned).weights, zeros):
        assert not np.any(np.asarray(w)[zero])
    free, _ = jaxlump.finetune(pruned, X, Y, steps=20, optimizer=optax.adam(1e-2))  # no info: every weight trains
    assert any(np.any(np.asarray(w)[zero]) for w, zero in zip(to_chain(free).weights, zeros))


def test_expand_and_relocate_keep_the_function():
    model = random_mlp(jr.key(3), (3, 8, 8, 2))
    x = np.asarray(jr.normal(jr.key(4), (32, 3)))
    masked, info = jaxlump.lump_masked(model, None, 0.9)  # no refit: the plain quotient
    chain = to_chain(masked)
    reference = numpy_outputs(masked, x)
    expanded = expand(chain, info.partitions)
    np.testing.assert_allclose(numpy_outputs(expanded, x), reference, atol=1e-12)
    # Expanded members are exact duplicates of their representative's incoming row.
    for w, labels in zip(expanded.weights, info.partitions):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(w)[np.asarray(labels)])
    # Relocating blocks to other members' indices (here: reversed order of the live indices) keeps the function.
    moved = []
    for labels in info.partitions:
        live = np.unique(np.asarray(labels))
        target = np.arange(labels.size)
        target[live] = live[::-1]
        moved.append(jnp.asarray(target))
    relocated = relocate(chain, info.partitions, tuple(moved))
    np.testing.assert_allclose(numpy_outputs(relocated, x), reference, atol=1e-12)


@pytest.mark.parametrize(
    ("optimizer", "model", "eps", "every", "error", "match"),
    [
        (lambda p: p, None, 0.1, 5, TypeError, "`optimizer` must be an optax.GradientTransformation"),
        (None, None, 0.1, 0, ValueError, "`every` must be an integer >= 1; received 0"),
        (None, None, 0.1, 2.5, TypeError, "`every` must be an integer"),
        (None, None, 0.1, True, TypeError, "`every` must be an integer"),
        (None, eqx.nn.LayerNorm(3), 0.1, 5, TypeError, r"\(LayerNorm\) holds no layer jaxlump can"),
        (None, None, -1.0, 5, ValueError, "`eps` must be a number >= 0"),
        (None, None, "big", 5, TypeError, "`eps` must be a non-negative real number"),
        (None, None, lambda step: jnp.ones(3), 5, ValueError, "must return a scalar"),
        (None, None, lambda step: -1.0, 5, ValueError, "`eps` must be a number >= 0"),
    ],
)
def test_bad_arguments_refused_at_construction(optimizer, model, eps, every, error, match):
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    with pytest.raises(error, match=match):
        jaxlump.wrap_optax(optimizer, _mlp() if model is None else model, X, eps, every=every)


def test_bad_target_size_and_state_refused():
    with pytest.raises(ValueError, match="exactly one of `params` and `fraction`"):
        jaxlump.TargetSize()
    with pytest.raises(ValueError, match="`params` must be a positive"):
        jaxlump.TargetSize(params=0)
    with pytest.raises(ValueError, match=r"`fraction` must lie in \(0, 1\]"):
        jaxlump.TargetSize(fraction=1.5)
    with pytest.raises(ValueError, match="`grid` must be ascending"):
        jaxlump.TargetSize(params=10, grid=(0.5, 0.1))
    model = _mlp()
    tx = jaxlump.wrap_optax(optax.adam(1e-3), model, X, 0.1, every=3)
    with pytest.raises(ValueError, match="do not have the structure"):
        tx.init(eqx.filter(_mlp(width=8), eqx.is_array))
    params = eqx.filter(model, eqx.is_array)
    with pytest.raises(ValueError, match="needs the current `params`"):
        tx.update(params, tx.init(params))
    with pytest.raises(TypeError, match="holds 0 such records"):
        jaxlump.shrink(model, optax.adam(1e-3).init(params))
    with pytest.raises(ValueError, match="`reconstruct=True` re-solves the layers on `x_calib`"):
        jaxlump.wrap_optax(optax.adam(1e-3), model, None, 0.1, every=3, reconstruct=True)
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1"):
        jaxlump.finetune(model, X, Y, steps=0)


def test_bad_refit_flag_and_target_counts_refused():
    model = _mlp()
    with pytest.raises(TypeError, match="`reconstruct` must be True or False; received 'yes'"):
        jaxlump.wrap_optax(optax.adam(1e-3), model, X, 0.1, every=3, reconstruct="yes")
    for params in (float("inf"), 2.5):
        with pytest.raises(TypeError, match="`params` must be a positive integer"):
            jaxlump.TargetSize(params=params)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param({"params": lambda step: jnp.where(step > 0, -5.0, 100.0)}, id="params-to-minus-5"),
        pytest.param({"fraction": lambda step: jnp.where(step > 0, -1.0, 1.0)}, id="fraction-to-minus-1", marks=SLOW),
        pytest.param({"fraction": lambda step: jnp.where(step > 0, jnp.nan, 1.0)}, id="fraction-to-nan", marks=SLOW),
    ],
)
def test_bad_target_schedules_refused_at_the_round(target):
    # A schedule is traced inside the round, so its values are checked there (eqx.error_if), not at construction.
    model = _mlp()
    tx = jaxlump.wrap_optax(optax.sgd(1e-2), model, X, jaxlump.TargetSize(**target), every=1)
    with pytest.raises(Exception, match="`TargetSize`'s schedule returned a value that is not"):
        _train(model, tx, 1)


def test_target_above_the_model_size_keeps_every_neuron():
    model = _mlp()
    full = int(jaxlump.cost(model).dense_params)
    _, state, sizes = _train(
        model, jaxlump.wrap_optax(optax.sgd(1e-2), model, X, jaxlump.TargetSize(params=2**40), every=1), 1
    )
    assert sizes == [(full, full)]  # requested is clipped to the model's size (no int32 wrap-around)
    assert tuple(int(w) for w in np.asarray(state.info.widths_after)) == (3, 12, 12, 2)


def test_shrunk_info_of_a_loop_reports_the_rounds_knob_and_what_was_certified():
    model = _mlp()
    masked, state, _ = _train(model, jaxlump.wrap_optax(optax.adam(1e-2), model, X, 0.8, every=5), 5)
    small, info = jaxlump.shrink(masked, state)
    assert float(info.knob) == pytest.approx(0.8)
    # The round's measured error, against the parameters just before it, on x_calib.
    assert np.isfinite(float(info.certificate.output_max_abs)) and float(info.certificate.output_max_abs) > 0
    summary = info.summary()
    assert "knob = 0.8" in summary and "a-priori bound not computed" in summary and "nan" not in summary
    # Data-free: nothing measured, and the summary says so instead of printing NaN beside "successful".
    masked, state, _ = _train(model, jaxlump.wrap_optax(optax.adam(1e-2), model, None, 0.8, every=5), 5)
    summary = jaxlump.shrink(masked, state)[1].summary()
    assert "measured error not computed" in summary and "nan" not in summary
    # Before any round the knob is not set (not a fake 0).
    tx = jaxlump.wrap_optax(optax.adam(1e-2), model, X, 0.8, every=50)
    assert "knob = not set" in tx.init(eqx.filter(model, eqx.is_array)).info.summary()


# --- models of sites ----------------------------------------------------------------------------------------------


def _site_dead_entries(model, sites, partitions) -> np.ndarray:
    """Every parameter of a model of sites (one site per segment) on a dead unit, found from the partitions: the
    producers' rows and biases (gate and up for a gated unit) and the consumer's columns."""
    values = []
    for site, labels in zip(sites, partitions, strict=True):
        dead = np.setdiff1d(np.arange(len(labels)), np.asarray(labels))
        for producer in site.keys[:-1]:
            layer = _node(model, producer)
            values += [np.asarray(layer.weight)[dead].ravel(), np.asarray(layer.bias)[dead]]
        values.append(np.asarray(_node(model, site.keys[-1]).weight)[:, dead].ravel())
    return np.concatenate(values)


def _node(model, path):
    for key in path:
        model = model[key] if isinstance(key, int) else getattr(model, key)
    return model


@pytest.mark.integration  # a transformer's training step compiled with its rounds: the second test step
def test_transformer_rounds_keep_dead_units_dead_and_shrink_to_its_class():
    """A pre-LN transformer with a GELU and a SwiGLU FFN: the sites' dead units (gate rows included) stay exactly
    zero in the weights, gradients, updates and Adam's moments; attention, embeddings and norms train on."""
    from _models import ByteTransformer
    from test_sites import TOKENS

    model = ByteTransformer(d=16, heads=2, hidden=32, key=jr.key(0))
    targets = jnp.roll(TOKENS, -1, axis=1)

    def loss(m):
        logits = jax.vmap(m)(TOKENS)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1))

    tx = jaxlump.wrap_optax(optax.adam(1e-2), model, TOKENS, 1.0, every=5)
    embedding = np.asarray(model.embedding.weight)
    for t, before, static, params, state, grads, updates in _loop(model, tx, 15, loss):
        info, after = state.info, _partitions(state)
        assert isinstance(info, jaxlump.SitesInfo)
        # In force during the step: the partitions before it; after it, the weights and Adam's moments follow the new.
        for tree in (grads, updates):
            assert not np.any(_site_dead_entries(eqx.combine(tree, static), info.sites, before)), t
        trained = eqx.combine(params, static)
        for tree in (trained, eqx.combine(state.inner[0].mu, static), eqx.combine(state.inner[0].nu, static)):
            assert not np.any(_site_dead_entries(tree, info.sites, after)), t
    assert not np.array_equal(np.asarray(trained.embedding.weight), embedding)  # the rest of the model trains
    widths = info.widths_after
    assert all(widths[p] < info.widths_before[p] for p in widths)  # the rounds merged units
    small, small_info = jaxlump.shrink(trained, state)
    assert type(small) is type(model) and small_info.widths_after == widths
    assert small_info.params_after == sum(a.size for a in jax.tree_util.tree_leaves(eqx.filter(small, eqx.is_array)))
    np.testing.assert_allclose(jax.vmap(small)(TOKENS), jax.vmap(trained)(TOKENS), atol=1e-5)


@pytest.mark.integration  # compiles a model of sites anew: the second test step
def test_site_model_target_size_is_met_in_whole_model_parameters():
    from test_sites import TOKENS, TokenModel

    model = TokenModel(jr.key(0), widths=(32, 16))
    total = sum(a.size for a in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)))
    tx = jaxlump.wrap_optax(optax.sgd(1e-3), model, TOKENS, jaxlump.TargetSize(params=total - 300), every=1)
    params, static = eqx.partition(model, eqx.is_array)
    state = tx.init(params)
    loss = lambda p: jnp.mean(jax.vmap(eqx.combine(p, static))(TOKENS) ** 2)  # noqa: E731
    updates, state = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))(params, state)
    params = eqx.apply_updates(params, updates)
    assert int(state.requested) == total - 300
    small, info = jaxlump.shrink(eqx.combine(params, static), state)
    realised = sum(a.size for a in jax.tree_util.tree_leaves(eqx.filter(small, eqx.is_array)))
    assert realised == info.params_after <= total - 300
    assert realised > total - 300 - 2 * (8 + 1 + 8)  # the largest within: at most one unit of slack per site


@pytest.mark.integration  # compiles a model of sites anew: the second test step
def test_nnx_site_model_with_nnx_optimizer():
    from flax import nnx
    from test_sites import TOKENS, NNXTokenModel

    model = NNXTokenModel(nnx.Rngs(0))
    tx = jaxlump.wrap_optax(optax.adam(1e-2), model, TOKENS, 1.0, every=3)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(TOKENS) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(6):
        step(model, optimizer)
    state = jax.tree.map(lambda v: v.get_value(), optimizer.opt_state, is_leaf=lambda v: hasattr(v, "get_value"))
    (labels,) = state.info.segments[0].partitions
    dead = np.setdiff1d(np.arange(32), np.asarray(labels))
    assert dead.size and not np.any(np.asarray(model.ffn.up.kernel[...])[:, dead])
    assert not np.any(np.asarray(model.ffn.down.kernel[...])[dead])
    small, info = jaxlump.shrink(model, optimizer.opt_state)
    assert type(small) is NNXTokenModel and small.ffn.up.out_features == info.widths_after["ffn"] == 32 - dead.size
    np.testing.assert_allclose(np.asarray(small(TOKENS)), np.asarray(model(TOKENS)), atol=1e-5)


def test_site_model_wrap_refuses_what_it_cannot_do():
    from test_sites import TokenModel

    model = TokenModel(jr.key(0))
    with pytest.raises(ValueError, match="`x_calib` is needed to wrap the training of a TokenModel"):
        jaxlump.wrap_optax(optax.adam(1e-2), model, None, 0.5, every=5)
    with pytest.raises(ValueError, match="`where` applies to models compressed site by site"):
        jaxlump.wrap_optax(optax.adam(1e-2), _mlp(), X, 0.5, every=5, where=lambda m: m.layers[0])
