"""Models that users write, for the tests of compressing any Equinox or Flax NNX model (issue 28).

None of these models is shaped to fit a compressor: they are written the way the Equinox documentation and examples
and the Flax NNX guides (and jax-ml/bonsai) write them. The helpers train them on real text and plant exact
duplicate hidden units in their feed-forward networks.

- `ByteTransformer` (Equinox) and `NNXByteTransformer` (Flax NNX): a pre-LN byte-level transformer language model
  with causal multi-head attention and, per block, a GELU (`GeluFFN`) or SwiGLU (`SwiGLUFFN`) feed-forward network
  in the residual stream. The Equinox model is called per example on token ids `(T,)` and returns logits `(T, 256)`
  (`jax.vmap` it over the batch); the NNX model is called on the batch `(B, T)` and returns `(B, T, 256)`.
- `FrozenFeatureClassifier` (a conv feature extractor under `stop_gradient` and an `eqx.nn.MLP` head),
  `gelu_sequential` (an `eqx.nn.Sequential` with `eqx.nn.Lambda(jax.nn.gelu)`).
- Hidden units that cannot form a site: `ReadTwiceBlock` (the producer's output is also added to the residual
  stream), `NormedFFN` (a LayerNorm on the hidden activation before `down`, as NormFormer does), and `NegativeModel`
  holding both beside one ordinary GELU FFN.
- `byte_corpus`, `batches`, `lm_logits`, `lm_loss`, `bits_per_byte`, `train_lm`: data (the Python standard library's
  own source files) and training (optax AdamW, `eqx.filter_jit` or `nnx.jit`).
- `plant_duplicates`: `k` extra hidden units that copy existing ones, with the consumer's column split between each
  pair, so the model's output is unchanged.
"""

import os
import pathlib
from collections.abc import Callable, Iterator, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

import jaxlump

VOCAB = 256
_LN2 = float(np.log(2.0))  # a weak Python float: divides float32 and float64 alike


# --------------------------------------------------------------------------------------------------------------------
# Equinox: a pre-LN byte-level transformer language model
# --------------------------------------------------------------------------------------------------------------------


class GeluFFN(eqx.Module):
    """A plain feed-forward network, applied to one token: `down(gelu(up(x)))`."""

    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __init__(self, d: int, hidden: int, dtype=None, *, key):
        up_key, down_key = jr.split(key)
        self.up = eqx.nn.Linear(d, hidden, dtype=dtype, key=up_key)
        self.down = eqx.nn.Linear(hidden, d, dtype=dtype, key=down_key)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


class SwiGLUFFN(eqx.Module):
    """A gated feed-forward network, applied to one token: `down(silu(gate(x)) * up(x))`."""

    gate: eqx.nn.Linear
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __init__(self, d: int, hidden: int, dtype=None, *, key):
        gate_key, up_key, down_key = jr.split(key, 3)
        self.gate = eqx.nn.Linear(d, hidden, dtype=dtype, key=gate_key)
        self.up = eqx.nn.Linear(d, hidden, dtype=dtype, key=up_key)
        self.down = eqx.nn.Linear(hidden, d, dtype=dtype, key=down_key)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


FFNS = {"gelu": GeluFFN, "swiglu": SwiGLUFFN}


class GroupedQueryAttention(eqx.Module):
    """Grouped-query attention as Llama-style code writes it: `heads` query heads read `kv_heads` KV heads
    (`jnp.repeat` of each KV head over its `heads // kv_heads` query heads), causal, on one sequence `(T, d)`;
    projections without biases. Registered with `jaxlump.register_attention_type` below, as a user would."""

    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    o: eqx.nn.Linear
    heads: int = eqx.field(static=True)
    kv_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)

    def __call__(self, x):
        length = x.shape[0]
        q = jax.vmap(self.q)(x).reshape(length, self.heads, self.head_dim)
        k = jax.vmap(self.k)(x).reshape(length, self.kv_heads, self.head_dim)
        v = jax.vmap(self.v)(x).reshape(length, self.kv_heads, self.head_dim)
        k, v = (jnp.repeat(a, self.heads // self.kv_heads, axis=1) for a in (k, v))
        scores = jnp.einsum("shd,thd->hst", q, k) / np.sqrt(self.head_dim)
        scores = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores, -jnp.inf)
        out = jnp.einsum("hst,thd->shd", jax.nn.softmax(scores, axis=-1), v)
        return jax.vmap(self.o)(out.reshape(length, -1))


def grouped_query_attention(d: int, heads: int, kv_heads: int, dtype=None, *, key) -> GroupedQueryAttention:
    """A `GroupedQueryAttention` of width `d` (`head_dim = d // heads`), its projections initialised as
    `eqx.nn.Linear` does."""
    head_dim = d // heads
    keys = jr.split(key, 4)
    q, k, v = (
        eqx.nn.Linear(d, count * head_dim, use_bias=False, dtype=dtype, key=kk)
        for count, kk in zip((heads, kv_heads, kv_heads), keys)
    )
    o = eqx.nn.Linear(heads * head_dim, d, use_bias=False, dtype=dtype, key=keys[3])
    return GroupedQueryAttention(q, k, v, o, heads, kv_heads, head_dim)


jaxlump.register_attention_type(
    jaxlump.AttentionType(
        "GroupedQueryAttention (tests)",
        lambda m: isinstance(m, GroupedQueryAttention),
        ("q", "k", "v", "o"),
        lambda m: (m.heads, m.kv_heads, m.head_dim, m.head_dim),
        lambda m, projections, kv: GroupedQueryAttention(*projections, kv * (m.heads // m.kv_heads), kv, m.head_dim),
    )
)


class Block(eqx.Module):
    """A pre-LN transformer block on one sequence `(T, d)`: causal self-attention, then a feed-forward network, each
    inside the residual stream."""

    attention_norm: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention | GroupedQueryAttention
    ffn_norm: eqx.nn.LayerNorm
    ffn: GeluFFN | SwiGLUFFN

    def __init__(self, d: int, heads: int, hidden: int, ffn: str, dtype=None, kv_heads: int | None = None, *, key):
        attention_key, ffn_key = jr.split(key)
        self.attention_norm = eqx.nn.LayerNorm(d, dtype=dtype)
        if kv_heads is None:
            self.attention = eqx.nn.MultiheadAttention(heads, d, dtype=dtype, key=attention_key)
        else:
            self.attention = grouped_query_attention(d, heads, kv_heads, dtype=dtype, key=attention_key)
        self.ffn_norm = eqx.nn.LayerNorm(d, dtype=dtype)
        self.ffn = FFNS[ffn](d, hidden, dtype=dtype, key=ffn_key)

    def __call__(self, x, mask):
        y = jax.vmap(self.attention_norm)(x)
        if isinstance(self.attention, GroupedQueryAttention):
            x = x + self.attention(y)  # causal by itself
        else:
            x = x + self.attention(y, y, y, mask=mask)
        y = jax.vmap(self.ffn_norm)(x)
        return x + jax.vmap(self.ffn)(y)


class ByteTransformer(eqx.Module):
    """A pre-LN byte-level transformer language model, called on one sequence of token ids `(T,)` and returning
    next-token logits `(T, vocab)`; `jax.vmap(model)(tokens)` applies it to a batch `(B, T)`.

    **Arguments:**

    - `vocab`: the number of token ids (256 for bytes).
    - `d`: the model width; `heads` divides it.
    - `heads`: attention heads per block.
    - `max_length`: the longest sequence (the number of learned positions).
    - `blocks`: the number of blocks.
    - `ffn`: `"gelu"` or `"swiglu"` for every block, or one of them per block.
    - `hidden`: the feed-forward hidden width (default `4 d`, for both kinds).
    - `dtype`: passed to every layer (default: JAX's default float dtype).
    - `kv_heads`: `None` for `eqx.nn.MultiheadAttention`; a number of KV heads dividing `heads` for
      `GroupedQueryAttention` (grouped-query attention, Llama-style).
    - `key`: a JAX random key.
    """

    embedding: eqx.nn.Embedding
    position: eqx.nn.Embedding
    blocks: list[Block]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(
        self,
        vocab: int = VOCAB,
        d: int = 32,
        heads: int = 4,
        max_length: int = 32,
        blocks: int = 2,
        ffn: str | Sequence[str] = ("gelu", "swiglu"),
        hidden: int | None = None,
        dtype=None,
        kv_heads: int | None = None,
        *,
        key,
    ):
        ffns = [ffn] * blocks if isinstance(ffn, str) else list(ffn)
        if len(ffns) != blocks:
            raise ValueError(f"`ffn` names {len(ffns)} feed-forward networks for {blocks} blocks.")
        hidden = 4 * d if hidden is None else hidden
        embedding_key, position_key, head_key, *block_keys = jr.split(key, 3 + blocks)
        self.embedding = eqx.nn.Embedding(vocab, d, dtype=dtype, key=embedding_key)
        self.position = eqx.nn.Embedding(max_length, d, dtype=dtype, key=position_key)
        self.blocks = [
            Block(d, heads, hidden, kind, dtype=dtype, kv_heads=kv_heads, key=k) for kind, k in zip(ffns, block_keys)
        ]
        self.norm = eqx.nn.LayerNorm(d, dtype=dtype)
        self.head = eqx.nn.Linear(d, vocab, dtype=dtype, key=head_key)

    def __call__(self, tokens):
        (length,) = tokens.shape
        x = jax.vmap(self.embedding)(tokens) + jax.vmap(self.position)(jnp.arange(length))
        mask = jnp.tril(jnp.ones((length, length), dtype=bool))
        for block in self.blocks:
            x = block(x, mask)
        return jax.vmap(self.head)(jax.vmap(self.norm)(x))


# --------------------------------------------------------------------------------------------------------------------
# Flax NNX: the same model, called on the batch
# --------------------------------------------------------------------------------------------------------------------


class NNXGeluFFN(nnx.Module):
    """`down(gelu(up(x)))` over the last axis of `x`."""

    def __init__(self, d: int, hidden: int, *, rngs: nnx.Rngs):
        self.up = nnx.Linear(d, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, x):
        return self.down(nnx.gelu(self.up(x)))


class NNXSwiGLUFFN(nnx.Module):
    """`down(silu(gate(x)) * up(x))` over the last axis of `x`."""

    def __init__(self, d: int, hidden: int, *, rngs: nnx.Rngs):
        self.gate = nnx.Linear(d, hidden, rngs=rngs)
        self.up = nnx.Linear(d, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, x):
        return self.down(nnx.silu(self.gate(x)) * self.up(x))


NNX_FFNS = {"gelu": NNXGeluFFN, "swiglu": NNXSwiGLUFFN}


class NNXBlock(nnx.Module):
    """A pre-LN transformer block on a batch `(B, T, d)`."""

    def __init__(self, d: int, heads: int, hidden: int, ffn: str, *, rngs: nnx.Rngs):
        self.attention_norm = nnx.LayerNorm(d, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False, rngs=rngs)
        self.ffn_norm = nnx.LayerNorm(d, rngs=rngs)
        self.ffn = NNX_FFNS[ffn](d, hidden, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attention(self.attention_norm(x), mask=mask)
        return x + self.ffn(self.ffn_norm(x))


class NNXByteTransformer(nnx.Module):
    """The Flax NNX `ByteTransformer`. As NNX models are, it is called on the batch: `model(tokens)` with token ids
    `(B, T)` returns logits `(B, T, vocab)` (no `jax.vmap`; `nnx.MultiHeadAttention` and `nnx.Linear` act on the
    leading axes). Arguments as `ByteTransformer`'s, with `rngs` for `key` (parameters are float32)."""

    def __init__(
        self,
        vocab: int = VOCAB,
        d: int = 32,
        heads: int = 4,
        max_length: int = 32,
        blocks: int = 2,
        ffn: str | Sequence[str] = ("gelu", "swiglu"),
        hidden: int | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        ffns = [ffn] * blocks if isinstance(ffn, str) else list(ffn)
        if len(ffns) != blocks:
            raise ValueError(f"`ffn` names {len(ffns)} feed-forward networks for {blocks} blocks.")
        hidden = 4 * d if hidden is None else hidden
        self.embedding = nnx.Embed(vocab, d, rngs=rngs)
        self.position = nnx.Embed(max_length, d, rngs=rngs)
        self.blocks = nnx.List([NNXBlock(d, heads, hidden, kind, rngs=rngs) for kind in ffns])
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embedding(tokens) + self.position(jnp.arange(tokens.shape[-1]))
        mask = nnx.make_causal_mask(tokens)  # (B, 1, T, T)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


# --------------------------------------------------------------------------------------------------------------------
# Other small models users write
# --------------------------------------------------------------------------------------------------------------------


class FrozenFeatureClassifier(eqx.Module):
    """An `eqx.nn.MLP` head on a frozen convolutional feature extractor, called on one image `(channels, H, W)`.

    The extractor is frozen as Equinox users freeze one: `jax.lax.stop_gradient` on its output (the head alone
    trains). The head's hidden layers are sites; the convolutions' channels are not hidden-width sites of the head.
    """

    features: eqx.nn.Sequential
    head: eqx.nn.MLP

    def __init__(self, channels: int = 1, n_classes: int = 10, width: int = 32, dtype=None, *, key):
        conv1_key, conv2_key, head_key = jr.split(key, 3)
        self.features = eqx.nn.Sequential(
            [
                eqx.nn.Conv2d(channels, 8, 3, padding=1, dtype=dtype, key=conv1_key),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.Conv2d(8, 16, 3, stride=2, padding=1, dtype=dtype, key=conv2_key),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.Lambda(lambda x: jnp.mean(x, axis=(1, 2))),
            ]
        )
        self.head = eqx.nn.MLP(16, n_classes, width, 2, activation=jax.nn.gelu, dtype=dtype, key=head_key)

    def __call__(self, image):
        return self.head(jax.lax.stop_gradient(self.features(image)))


def gelu_sequential(in_size: int = 8, width: int = 32, out_size: int = 4, dtype=None, *, key) -> eqx.nn.Sequential:
    """`Linear → gelu → Linear → gelu → Linear` as an `eqx.nn.Sequential`, called on one vector `(in_size,)`."""
    keys = jr.split(key, 3)
    return eqx.nn.Sequential(
        [
            eqx.nn.Linear(in_size, width, dtype=dtype, key=keys[0]),
            eqx.nn.Lambda(jax.nn.gelu),
            eqx.nn.Linear(width, width, dtype=dtype, key=keys[1]),
            eqx.nn.Lambda(jax.nn.gelu),
            eqx.nn.Linear(width, out_size, dtype=dtype, key=keys[2]),
        ]
    )


class ReadTwiceBlock(eqx.Module):
    """Not a site: the producer's output is read twice, by the activation and by the residual stream.
    `x + h + down(gelu(h))` with `h = up(x)` on one token `(d,)` (the hidden width is `d`)."""

    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __init__(self, d: int, dtype=None, *, key):
        up_key, down_key = jr.split(key)
        self.up = eqx.nn.Linear(d, d, dtype=dtype, key=up_key)
        self.down = eqx.nn.Linear(d, d, dtype=dtype, key=down_key)

    def __call__(self, x):
        h = self.up(x)
        return x + h + self.down(jax.nn.gelu(h))


class NormedFFN(eqx.Module):
    """Not a site: the hidden units feed a norm (NormFormer's FFN LayerNorm), so each unit's value depends on all the
    others. `down(norm(gelu(up(x))))` on one token `(d,)`."""

    up: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    down: eqx.nn.Linear

    def __init__(self, d: int, hidden: int, dtype=None, *, key):
        up_key, down_key = jr.split(key)
        self.up = eqx.nn.Linear(d, hidden, dtype=dtype, key=up_key)
        self.norm = eqx.nn.LayerNorm(hidden, dtype=dtype)
        self.down = eqx.nn.Linear(hidden, d, dtype=dtype, key=down_key)

    def __call__(self, x):
        return self.down(self.norm(jax.nn.gelu(self.up(x))))


class NegativeModel(eqx.Module):
    """Three residual layers on one vector `(d,)`: `ReadTwiceBlock`, `x + NormedFFN(x)` and `x + GeluFFN(x)`. Only
    the last one's hidden units form a site; the other two must be left out with a reason."""

    read_twice: ReadTwiceBlock
    normed: NormedFFN
    plain: GeluFFN

    def __init__(self, d: int = 8, hidden: int = 32, dtype=None, *, key):
        keys = jr.split(key, 3)
        self.read_twice = ReadTwiceBlock(d, dtype=dtype, key=keys[0])
        self.normed = NormedFFN(d, hidden, dtype=dtype, key=keys[1])
        self.plain = GeluFFN(d, hidden, dtype=dtype, key=keys[2])

    def __call__(self, x):
        x = self.read_twice(x)
        x = x + self.normed(x)
        return x + self.plain(x)


# --------------------------------------------------------------------------------------------------------------------
# Data and training
# --------------------------------------------------------------------------------------------------------------------


def byte_corpus(n_bytes: int = 2**20, seed: int = 0) -> np.ndarray:
    """`n_bytes` of real text, available offline: the Python standard library's own top-level source files
    (`pathlib.Path(os.__file__).parent / "*.py"`), in sorted order permuted by `seed`, concatenated as bytes.

    **Returns:** a `uint8` NumPy array of shape `(n_bytes,)` (the standard library holds about 4.7 MB).
    """
    files = sorted(pathlib.Path(os.__file__).parent.glob("*.py"))
    order = np.random.default_rng(seed).permutation(len(files))
    chunks, total = [], 0
    for index in order:
        chunks.append(files[index].read_bytes())
        total += len(chunks[-1])
        if total >= n_bytes:
            break
    corpus = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    if corpus.size < n_bytes:
        raise ValueError(f"the standard library holds {corpus.size} bytes; requested n_bytes={n_bytes}.")
    return corpus[:n_bytes].copy()


def split_corpus(corpus: np.ndarray, test_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The first `1 - test_fraction` of the corpus for training, the rest for testing."""
    cut = int(round(corpus.size * (1 - test_fraction)))
    return corpus[:cut], corpus[cut:]


def _generator(key) -> np.random.Generator:
    """A NumPy generator determined by a JAX key."""
    return np.random.default_rng(np.asarray(jr.key_data(key)).ravel().tolist())


def batches(corpus: np.ndarray, length: int, batch_size: int, key) -> Iterator[tuple[jax.Array, jax.Array]]:
    """An endless stream of `(inputs, targets)`, each `(batch_size, length)` `int32`: windows of `length + 1`
    bytes at random offsets, `targets` the inputs shifted by one."""
    generator = _generator(key)  # NumPy: drawing a batch compiles nothing
    window = np.arange(length + 1)
    while True:
        offsets = generator.integers(0, corpus.size - length, batch_size)
        tokens = jnp.asarray(corpus[offsets[:, None] + window], dtype=jnp.int32)
        yield tokens[:, :-1], tokens[:, 1:]


def windows(corpus: np.ndarray, length: int, count: int | None = None) -> jax.Array:
    """Consecutive non-overlapping windows `(count, length + 1)` `int32` from the start of `corpus` (a fixed
    evaluation set; `count=None` takes all that fit)."""
    n = (corpus.size - 1) // length if count is None else count
    tokens = np.lib.stride_tricks.sliding_window_view(corpus, length + 1)[: n * length : length]
    if tokens.shape[0] != n:
        raise ValueError(f"`corpus` of {corpus.size} bytes holds fewer than count={count} windows of {length + 1}.")
    return jnp.asarray(tokens, dtype=jnp.int32)


def _apply(model, inputs):
    if isinstance(model, nnx.Module):
        return model(inputs)
    return jax.vmap(model)(inputs)


_eqx_apply, _nnx_apply = eqx.filter_jit(_apply), nnx.jit(_apply)


def lm_logits(model, inputs):
    """Logits `(B, T, vocab)` of a batch of token ids `(B, T)`: `jax.vmap(model)` for an Equinox model,
    `model(inputs)` for an NNX one (called on the batch), compiled (`eqx.filter_jit`, `nnx.jit`)."""
    return (_nnx_apply if isinstance(model, nnx.Module) else _eqx_apply)(model, inputs)


def _loss(model, inputs, targets):
    logits = _apply(model, inputs)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets)) / _LN2


def lm_loss(model, tokens):
    """The mean next-byte cross-entropy, in bits per byte, of `tokens` `(B, T + 1)`: the model reads
    `tokens[:, :-1]` and predicts `tokens[:, 1:]` (traceable: call it under `jit` or `grad`)."""
    return _loss(model, tokens[:, :-1], tokens[:, 1:])


_eqx_lm_loss, _nnx_lm_loss = eqx.filter_jit(lm_loss), nnx.jit(lm_loss)


def bits_per_byte(model, tokens, chunk: int = 64) -> float:
    """`lm_loss` over `tokens` `(N, T + 1)`, in chunks of `chunk` windows, compiled once."""
    loss = _nnx_lm_loss if isinstance(model, nnx.Module) else _eqx_lm_loss
    total = 0.0
    for start in range(0, tokens.shape[0], chunk):
        part = tokens[start : start + chunk]
        total += float(loss(model, part)) * part.shape[0]
    return total / tokens.shape[0]


def train_lm(
    model,
    steps: int,
    key,
    *,
    corpus: np.ndarray | None = None,
    length: int = 32,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    weight_decay: float = 0.01,
    test_windows: int = 128,
):
    """Train a byte-level language model (an Equinox `ByteTransformer` or an `NNXByteTransformer`) with AdamW.

    The corpus (default `byte_corpus(2**20)`) is split 90/10 by `split_corpus`; training draws `batches` from the
    first part, and the test loss is measured on `test_windows` consecutive windows of the second. Equinox: a step
    compiled by `eqx.filter_jit`, the model returned new; NNX: `nnx.Optimizer` and `nnx.jit`, the model trained in
    place (and returned).

    **Returns:** `(model, test_bits_per_byte)`.
    """
    corpus = byte_corpus() if corpus is None else corpus
    train, test = split_corpus(corpus)
    stream = batches(train, length, batch_size, key)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(50, steps // 4 + 1), steps)
    optimiser = optax.adamw(schedule, weight_decay=weight_decay)
    if isinstance(model, nnx.Module):
        optimizer = nnx.Optimizer(model, optimiser, wrt=nnx.Param)

        @nnx.jit
        def nnx_step(model, optimizer, inputs, targets):
            loss, grads = nnx.value_and_grad(_loss)(model, inputs, targets)
            optimizer.update(model, grads)
            return loss

        for _ in range(steps):
            nnx_step(model, optimizer, *next(stream))
    else:
        state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

        @eqx.filter_jit
        def step(model, state, inputs, targets):
            loss, grads = eqx.filter_value_and_grad(_loss)(model, inputs, targets)
            updates, state = optimiser.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
            return eqx.apply_updates(model, updates), state, loss

        for _ in range(steps):
            model, state, _ = step(model, state, *next(stream))
    return model, bits_per_byte(model, windows(test, length, test_windows))


# --------------------------------------------------------------------------------------------------------------------
# Planted duplicates
# --------------------------------------------------------------------------------------------------------------------


def _eqx_linear(weight, bias):
    """An `eqx.nn.Linear` holding `weight` `(out, in)` and `bias` (or `None`), static fields consistent (built
    abstractly, so no initialisation runs)."""
    out_features, in_features = weight.shape
    linear = eqx.filter_eval_shape(
        eqx.nn.Linear, in_features, out_features, use_bias=bias is not None, dtype=weight.dtype, key=jr.key(0)
    )
    if bias is None:
        return eqx.tree_at(lambda layer: layer.weight, linear, weight)
    return eqx.tree_at(lambda layer: (layer.weight, layer.bias), linear, (weight, bias))


def _numpy(array):
    return None if array is None else np.asarray(array)


def _nnx_value(variable):
    return None if variable is None else variable[...]


def _nnx_linear(kernel, bias):
    """An `nnx.Linear` holding `kernel` `(in, out)` and `bias` (or `None`) (built abstractly, as `_eqx_linear`)."""
    in_features, out_features = kernel.shape
    linear = nnx.eval_shape(
        lambda: nnx.Linear(
            in_features, out_features, use_bias=bias is not None, param_dtype=kernel.dtype, rngs=nnx.Rngs(0)
        )
    )
    linear.kernel.set_value(kernel)
    if bias is not None:
        linear.bias.set_value(bias)
    return linear


def plant_duplicates(model, where: Callable, k: int, key):
    """Widen one feed-forward network by `k` hidden units that are exact copies of `k` distinct existing units, with
    each pair's `down` column split between original and copy, so the model's output is unchanged (up to rounding).

    The FFN found by `where(model)` (an Equinox-style function, e.g. `lambda m: m.blocks[0].ffn`) has producers
    `up` (and `gate`, for a gated FFN: both rows and biases are copied) and a consumer `down`. A copy `c` of unit `s`
    gets `s`'s producer rows and biases; `down`'s column `s` becomes `α` of itself and column `c` the remaining
    `1 - α` (`α` drawn in [0.2, 0.8] per pair). The `h + k` units are then permuted at random, so the copies lie
    among the originals. It checks, in NumPy, that each copy's producer rows and biases equal its source's and that each
    pair's `down` columns add up to the source's column (so the output is unchanged up to rounding).

    Equinox: a new model whose `Linear` layers are rebuilt (static fields consistent); NNX: a clone (`nnx.clone`)
    with new `nnx.Linear`s assigned; the input model is never changed.

    **Returns:** `(planted_model, copies, sources)`: `copies[i]` (an index among the `h + k` units of the planted
    FFN) is an exact copy of `sources[i]`; both are sorted by `copies` and are NumPy `int` arrays.
    """
    is_nnx = isinstance(model, nnx.Module)
    ffn = where(model)
    producers = [name for name in ("gate", "up") if hasattr(ffn, name)]
    if "up" not in producers or not hasattr(ffn, "down"):
        raise TypeError(f"`where(model)` must be an FFN with `up` (and optionally `gate`) and `down`; got {ffn!r}.")
    if is_nnx:  # NNX kernels are (in, out): work in Equinox's (out, in)
        rows = {name: getattr(ffn, name).kernel[...].T for name in producers}
        biases = {name: _nnx_value(getattr(ffn, name).bias) for name in producers}
        down, down_bias = ffn.down.kernel[...].T, _nnx_value(ffn.down.bias)
    else:
        rows = {name: getattr(ffn, name).weight for name in producers}
        biases = {name: getattr(ffn, name).bias for name in producers}
        down, down_bias = ffn.down.weight, ffn.down.bias
    hidden = down.shape[1]
    if not 1 <= k <= hidden:
        raise ValueError(f"need 1 <= k <= hidden width {hidden}; received k={k}.")
    generator = _generator(key)  # the edit is done in NumPy: nothing to compile
    sources = generator.choice(hidden, k, replace=False)
    alpha = generator.uniform(0.2, 0.8, k).astype(down.dtype)
    permutation = generator.permutation(hidden + k)  # unit j of the planted FFN is unit permutation[j] of the wide one
    inverse = np.argsort(permutation)
    order = np.argsort(inverse[hidden + np.arange(k)])  # copies in increasing order
    copies, new_sources = inverse[hidden + order], inverse[sources[order]]

    def widen(array):
        return None if array is None else np.concatenate([array, array[sources]])[permutation]

    new = {name: (widen(np.asarray(rows[name])), widen(_numpy(biases[name]))) for name in producers}
    down = np.asarray(down)
    new_down = np.concatenate([down, down[:, sources] * (1 - alpha)], axis=1)
    new_down[:, sources] *= alpha
    new_down = new_down[:, permutation]

    for matrix, vector in new.values():
        if not np.array_equal(matrix[copies], matrix[new_sources]) or (
            vector is not None and not np.array_equal(vector[copies], vector[new_sources])
        ):
            raise AssertionError("a planted copy's producer row or bias differs from its source's.")
    error = np.abs(new_down[:, copies] + new_down[:, new_sources] - down[:, sources[order]])
    if not np.all(error <= 4 * np.finfo(down.dtype).eps * np.abs(down[:, sources[order]])):
        raise AssertionError("a planted pair's `down` columns do not add up to the source's column.")
    new = {
        name: (jnp.asarray(matrix), None if vector is None else jnp.asarray(vector))
        for name, (matrix, vector) in new.items()
    }
    new_down = jnp.asarray(new_down)

    if is_nnx:
        planted = nnx.clone(model)
        planted_ffn = where(planted)
        for name in producers:
            setattr(planted_ffn, name, _nnx_linear(new[name][0].T, new[name][1]))
        planted_ffn.down = _nnx_linear(new_down.T, down_bias)
    else:
        layers = tuple(_eqx_linear(*new[name]) for name in producers) + (_eqx_linear(new_down, down_bias),)
        planted_ffn = eqx.tree_at(lambda f: tuple(getattr(f, name) for name in (*producers, "down")), ffn, layers)
        planted = eqx.tree_at(where, model, planted_ffn)
    return planted, copies, new_sources
