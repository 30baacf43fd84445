"""Issue 31's benchmark: structured compressors on real models that the benchmark trains itself.

Model families (no downloads; each trained once per seed and cached with `jaxlump.save`), run in this order:

- `cnn`: a Flax NNX CNN (three `nnx.Conv` with `nnx.BatchNorm` and ReLU, an average pool, a linear head) on
  scikit-learn's digits (80/20), trained with optax, then `model.eval()`; reporting test accuracy and the test
  logits' relative RMS error against the dense model.
- `lm-gelu`, `lm-swiglu`, `lm-gqa`: the test suite's pre-LN byte-level transformer language model
  (`tests/_models.py`'s `ByteTransformer`: Equinox, FFN 4×, GELU or SwiGLU; `eqx.nn.MultiheadAttention`, or for
  `lm-gqa` a Llama-style grouped-query attention with 4 query heads over 2 KV heads) trained on the Python
  standard library's own top-level `.py` files (sorted; every tenth file is held out for testing), reporting
  test **bits per byte**.

Methods are listed in `METHODS` (name → `Method`: the `compress_to` name, its options, its scope), so adding one is
one entry. Every point calls `jaxlump.baselines.compress_to(model, method, target, x_calib, **options)` (the
`allocate` entry: `jaxlump.allocate(model, x_calib, target)`, the end-to-end search over the FFN sites' widths):

- scope `"neurons"`: the target is a whole-model parameter count, `total − (1 − f) · compressible`, where the
  compressible parameters are those of the FFN sites' layers; sites of heads are kept whole (as `compress_to` does
  for a count). A model whose only sites are channels (the CNN) gets the widths target below instead.
- scope `"all"`: a dict of widths, every site (FFN neurons, heads, channels) at `round(f · width)` (at least 1);
  measured at the headline sizes (70 % and 40 %) only, as the end-to-end allocation is.

Each method runs with its own default for the shared least-squares refit of the consumers (on for
`merge_or_remove`, `lump`, OBS, OSSCAR, ID; off for FLAP, folding and the structured scores); the "(no refit)" and
"+ refit" entries flip it. Methods with `recover=True` are also measured after a short recovery fine-tune
(`recover`: the training loop on the training data at a tenth of the learning rate).

A method that refuses (gated layers, channel or head sites) or fails is recorded with its message; nothing is
faked. Each point records the target, the realised size (whole model and fraction of the compressible
parameters), widths per site, the knob per segment, the test metric, the calibration output error, the wall time
of the compression (compilation included, under the provenance profiler of `benchmarks/provenance.py`, which adds
5–15 %), the latency at batch 1 and a larger batch (`jaxlump.measure_latency`, median of jitted calls, profiler
paused) and the machine load (`os.getloadavg()`). Each raw file carries the provenance block of the code that ran.

One raw JSON per family × seed under `raw/` (`raw-quick/` for `--quick`), written when complete; the unfinished
record is saved after every point in `.partial`, so a rerun resumes where it stopped and skips finished jobs; a
raw file whose recorded code has changed since (`python3 benchmarks/provenance.py` lists them) is recomputed.
Tables, the figure and the generated blocks of the README and `docs/real_models.md` (full run into the default
`--out` only): `benchmarks/real_models_report.py` (run at the end, or alone with `--report-only`).

    python3 benchmarks/real_models.py                 # full run: 4 families × 3 seeds × 5 sizes × every method
    python3 benchmarks/real_models.py --quick         # tiny models, 1 seed, 2 sizes, 3 methods (raw-quick/, quick/)
    python3 benchmarks/real_models.py --report-only   # tables from whatever raw JSON exists
"""

import argparse
import dataclasses
import gc
import hashlib
import json
import os
import pathlib
import re
import sys
import time
import traceback
from collections import defaultdict

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from flax import nnx

import jaxlump
from jaxlump import baselines as B

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))
import provenance  # noqa: E402 — the sibling module
from _models import ByteTransformer  # noqa: E402 — the test suite's user-written transformer, the same model

ROOT = pathlib.Path(__file__).parent / "results" / "real_models"
SIZES = (0.9, 0.7, 0.55, 0.4, 0.3)  # the headline reads ~70 % and ~40 %
QUICK_SIZES = (0.7, 0.4)
SEEDS = 3
LN2 = float(np.log(2.0))


# ------------------------------------------------------------------------------------------------- models
class DigitsCNN(nnx.Module):
    """Three 3×3 convolutions with BatchNorm and ReLU (an average pool after the second), flatten, a linear head;
    channels last, called on a batch `(B, 8, 8, 1)`."""

    def __init__(self, channels: tuple[int, int, int], *, rngs: nnx.Rngs):
        c1, c2, c3 = channels
        self.conv1 = nnx.Conv(1, c1, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(c1, rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(c2, rngs=rngs)
        self.conv3 = nnx.Conv(c2, c3, (3, 3), use_bias=False, rngs=rngs)
        self.bn3 = nnx.BatchNorm(c3, rngs=rngs)
        self.head = nnx.Linear(c3 * 16, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.avg_pool(nnx.relu(self.bn2(self.conv2(x))), window_shape=(2, 2), strides=(2, 2))
        x = nnx.relu(self.bn3(self.conv3(x)))
        return self.head(x.reshape(x.shape[0], -1))


def apply(model, x):
    """The model on a batch, as its users call it (Equinox per example under `jax.vmap`, NNX on the batch)."""
    return model(x) if isinstance(model, nnx.Module) else jax.vmap(model)(x)


_apply_eqx, _apply_nnx = eqx.filter_jit(apply), nnx.jit(apply)


def outputs(model, x, chunk: int = 256) -> np.ndarray:
    fn = _apply_nnx if isinstance(model, nnx.Module) else _apply_eqx
    return np.concatenate([np.asarray(fn(model, x[i : i + chunk]), np.float64) for i in range(0, len(x), chunk)])


# ------------------------------------------------------------------------------------------------- families
@dataclasses.dataclass(frozen=True)
class LMConfig:
    ffn: str
    d: int = 64
    heads: int = 4
    blocks: int = 3
    length: int = 64
    steps: int = 2000
    batch: int = 32
    learning_rate: float = 3e-3
    n_calib: int = 64  # windows of `length` tokens
    n_test: int = 256
    latency_batch: int = 64
    recovery_steps: int = 200


@dataclasses.dataclass(frozen=True)
class GQAConfig(LMConfig):
    """A language model whose attention is grouped-query (`tests/_models.py`'s `GroupedQueryAttention`, registered
    as an attention type there): `heads` query heads over `kv_heads` KV heads."""

    kv_heads: int = 2


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    channels: tuple[int, int, int] = (16, 32, 32)
    steps: int = 1500
    batch: int = 64
    learning_rate: float = 3e-3
    n_calib: int = 256
    latency_batch: int = 256
    recovery_steps: int = 100


FAMILIES = {  # run in this order: the cheapest family first, so an interrupted run has whole families
    "cnn": CNNConfig(),
    "lm-gelu": LMConfig("gelu"),
    "lm-swiglu": LMConfig("swiglu"),
    "lm-gqa": GQAConfig("swiglu"),
}
QUICK_FAMILIES = {
    "lm-gelu": LMConfig("gelu", d=32, blocks=2, length=32, steps=300, batch=16, n_calib=32, n_test=64,
                        latency_batch=16, recovery_steps=20),
    "lm-swiglu": LMConfig("swiglu", d=32, blocks=2, length=32, steps=300, batch=16, n_calib=32, n_test=64,
                          latency_batch=16, recovery_steps=20),
    "lm-gqa": GQAConfig("swiglu", d=32, blocks=2, length=32, steps=300, batch=16, n_calib=32, n_test=64,
                        latency_batch=16, recovery_steps=20),
    "cnn": CNNConfig(channels=(8, 8, 8), steps=300, n_calib=128, latency_batch=64, recovery_steps=20),
}  # fmt: skip
QUICK_DEFAULT = ("lm-gelu", "cnn")  # --quick without --families


def config_id(config) -> str:
    return hashlib.sha1(repr(config).encode()).hexdigest()[:10]


def stdlib_corpus() -> tuple[np.ndarray, np.ndarray]:
    """The standard library's top-level `.py` files in sorted order, as bytes: `(train, test)`, every tenth file
    (the 10th, 20th, ...) held out for testing."""
    files = sorted(pathlib.Path(os.path.dirname(os.__file__)).glob("*.py"))
    train = b"".join(f.read_bytes() for i, f in enumerate(files) if i % 10 != 9)
    test = b"".join(f.read_bytes() for i, f in enumerate(files) if i % 10 == 9)
    return np.frombuffer(train, np.uint8), np.frombuffer(test, np.uint8)


def lm_data(config: LMConfig, seed: int):
    """`(x_calib, x_test, y_test)`: calibration windows drawn from the training text with `seed`, and the first
    `n_test` consecutive test windows (inputs and next-byte targets)."""
    train, test = stdlib_corpus()
    offsets = np.random.default_rng(seed + 1000).integers(0, train.size - config.length, config.n_calib)
    x_calib = train[offsets[:, None] + np.arange(config.length)]
    starts = np.arange(config.n_test) * config.length
    windows = test[starts[:, None] + np.arange(config.length + 1)]
    return jnp.asarray(x_calib, jnp.int32), jnp.asarray(windows[:, :-1], jnp.int32), np.asarray(windows[:, 1:])


def digits_data():
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0)[..., None].astype(np.float32)  # (N, 8, 8, 1), channels last
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    return images[order[:cut]], data.target[order[:cut]], images[order[cut:]], data.target[order[cut:]]


def cnn_data(config: CNNConfig, seed: int):
    x_train, _, x_test, y_test = digits_data()
    rows = np.random.default_rng(seed + 1000).choice(len(x_train), config.n_calib, replace=False)
    return jnp.asarray(x_train[rows]), jnp.asarray(x_test), np.asarray(y_test)


def fresh(family: str, config, seed: int):
    if isinstance(config, LMConfig):
        return ByteTransformer(
            d=config.d, heads=config.heads, max_length=config.length, blocks=config.blocks, ffn=config.ffn,
            kv_heads=getattr(config, "kv_heads", None), key=jr.key(seed),
        )  # fmt: skip
    model = DigitsCNN(config.channels, rngs=nnx.Rngs(seed))
    return model


def fit_lm(model, config: LMConfig, seed: int, steps: int, peak: float, warmup: int):
    """`steps` of AdamW (linear warm-up to `peak`, then cosine decay) on random windows of the training text."""
    train, _ = stdlib_corpus()
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps)
    optimiser = optax.adamw(schedule, weight_decay=0.01)
    state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))

    def loss(model, tokens):
        logits = jax.vmap(model)(tokens[:, :-1])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))

    @eqx.filter_jit
    def step(model, state, tokens):
        grads = eqx.filter_grad(loss)(model, tokens)
        updates, state = optimiser.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state

    generator = np.random.default_rng(seed)
    window = np.arange(config.length + 1)
    for _ in range(steps):
        offsets = generator.integers(0, train.size - config.length - 1, config.batch)
        model, state = step(model, state, jnp.asarray(train[offsets[:, None] + window], jnp.int32))
    return model


def fit_cnn(model, config: "CNNConfig", seed: int, steps: int, learning_rate: float):
    """`steps` of Adam on cross-entropy over random training batches, in the model's mode (training mode updates
    the BatchNorm statistics; evaluation mode keeps them and trains the scales and shifts)."""
    x, y, _, _ = digits_data()
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()

        grads = nnx.grad(loss)(model)
        optimizer.update(model, grads)

    generator = np.random.default_rng(seed)
    for _ in range(steps):
        rows = generator.choice(len(x), config.batch, replace=False)
        step(model, optimizer, jnp.asarray(x[rows]), jnp.asarray(y[rows]))
    return model


def train(family: str, config, seed: int):
    """The dense model: AdamW with warm-up and cosine decay for a language model; Adam for the CNN, BatchNorm in
    training mode, `model.eval()` at the end."""
    model = fresh(family, config, seed)
    if isinstance(config, LMConfig):
        return fit_lm(model, config, seed, config.steps, config.learning_rate, 100)
    model.train()
    model = fit_cnn(model, config, seed, config.steps, config.learning_rate)
    model.eval()
    return model


def recover(model, config, seed: int):
    """The short recovery fine-tune after compression, on the training data with the task's loss (a copy; the
    compressed model is kept): `config.recovery_steps` steps at a tenth of the training learning rate (the
    language model with a 10 % warm-up and cosine decay; the CNN in evaluation mode, its BatchNorm statistics
    frozen). `jaxlump.finetune` fits regression targets with mean-squared error on `(batch, n_in)` inputs, so the
    benchmark trains with its own loop, the one that trained the dense model."""
    steps, rate = config.recovery_steps, config.learning_rate / 10
    if isinstance(config, LMConfig):
        return fit_lm(model, config, seed + 2000, steps, rate, max(1, steps // 10))
    copy = nnx.clone(model)
    copy.eval()
    return fit_cnn(copy, config, seed + 2000, steps, rate)


def trained(family: str, config, seed: int, cache: pathlib.Path):
    """The trained model of `family` and `seed`, cached (`jaxlump.save` / `jaxlump.load(path, like=...)`) by the
    configuration's hash, with its training record."""
    path = cache / f"{family}_{config_id(config)}_s{seed}.npz"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        model = jaxlump.load(path, like=fresh(family, config, seed))
        if isinstance(model, nnx.Module):
            model.eval()
        return model, {**json.loads(meta.read_text()), "cached": True}
    start = time.perf_counter()
    model = train(family, config, seed)
    record = {"wall_s": time.perf_counter() - start, "steps": config.steps}
    cache.mkdir(parents=True, exist_ok=True)
    jaxlump.save(path, model)
    meta.write_text(json.dumps(record))
    return model, {**record, "cached": False}


def evaluate(model, original_test, x_test, y_test, lm: bool) -> dict:
    """Test metrics: bits per byte for a language model; accuracy and logits' relative RMS error for the CNN."""
    logits = outputs(model, x_test)
    if lm:
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, y_test[..., None], -1).mean()
        return {"test_bpb": float(nll / LN2)}
    rel = np.sqrt(np.mean((logits - original_test) ** 2) / np.mean(original_test**2))
    return {"test_accuracy": float(np.mean(logits.argmax(-1) == y_test)), "test_logit_rel_rms": float(rel)}


# ------------------------------------------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class Method:
    """One compressor: `compress_to(model, name, target, x_calib, **options)`; `scope` `"neurons"` (FFN sites by
    a whole-model count, heads kept whole) or `"all"` (every site, by a dict of widths); `groups_only`: only for
    models that have sites of heads or channels besides neuron sites (else it would repeat the neuron entry);
    `recover`: also measure the result after the short recovery fine-tune (`recover`); `sizes`: only these target
    fractions (default: every size of the run). The name `"allocate"` calls `jaxlump.allocate` (the end-to-end
    search over the sites' widths) instead of `compress_to`."""

    name: str
    options: tuple = ()
    scope: str = "neurons"
    groups_only: bool = False
    recover: bool = False
    sizes: tuple | None = None

    def at(self, sizes) -> list:
        """The sizes of the run this method is measured at."""
        return [f for f in sizes if self.sizes is None or f in self.sizes]

    def compress(self, model, target, x_calib):
        if self.name == "allocate":
            return jaxlump.allocate(model, x_calib, target, **dict(self.options))
        return B.compress_to(model, self.name, target, x_calib, **dict(self.options))


METHODS = {  # with each method's own default for the least-squares refit; the "no refit" / "+ refit" entries flip it
    "merge_or_remove": Method("merge_or_remove", recover=True),
    "merge_or_remove +heads": Method("merge_or_remove", scope="all", groups_only=True, sizes=(0.7, 0.4)),
    "merge_or_remove allocated": Method("allocate", sizes=(0.7, 0.4)),  # the end-to-end search over the FFNs' widths
    "lump": Method("lump"),
    "lump (no refit)": Method("lump", (("reconstruct", False),)),
    "OBS (ZipLM)": Method("obs_prune", recover=True),
    "OBS (no refit)": Method("obs_prune", (("reconstruct", False),)),
    "OBS +heads": Method("obs_prune", scope="all", groups_only=True, sizes=(0.7, 0.4)),
    "OSSCAR": Method("osscar_prune"),
    "ID": Method("id_prune"),
    "FLAP": Method("flap_prune"),
    "FLAP + refit": Method("flap_prune", (("reconstruct", True),)),
    "fold": Method("fold"),
    "fold + refit": Method("fold", (("reconstruct", True),)),
    "ZipIt! + REPAIR": Method("zipit_merge"),
    "structured magnitude": Method("structured_prune", (("score", B.IncomingNorm()),)),
    "structured Wanda": Method("structured_prune", (("score", B.WandaScore()),)),
    "whitened low-rank": Method("lowrank"),
}
QUICK_METHODS = ("merge_or_remove", "OBS (ZipLM)", "structured magnitude")


def parameter_count(tree) -> int:
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    return sum(int(np.size(a)) for a in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array)))


def node(model, path: str):
    for name, index in re.findall(r"\.?([A-Za-z_]\w*)|\[(\d+)\]", path):
        model = getattr(model, name) if name else model[int(index)]
    return model


def site_table(model, x_calib) -> tuple[list[dict], dict]:
    """`(sites, layers)`: every site (path, unit, width, its producer-side layers — producers and a folded norm —
    and its consumer), and each of those layers' arrays as `[size, ndim]` pairs."""
    sites, layers = [], {}
    for site in jaxlump.sites(model, x_calib).sites:
        producers = [*site.producers, *([site.norm] if site.norm else [])]
        sites.append(
            {
                "path": site.path,
                "unit": site.unit,
                "width": site.width,
                "producers": producers,
                "consumer": site.consumer,
            }
        )
        for path in (*producers, site.consumer):
            tree = node(model, path)
            tree = nnx.state(tree, nnx.Param) if isinstance(tree, nnx.Module) else tree
            arrays = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
            layers[path] = [[int(np.size(a)), int(np.ndim(a))] for a in arrays]
    return sites, layers


def site_params(sites: list[dict], layers: dict, widths: dict | None = None) -> float:
    """The parameters of the layers of `sites` (each layer once), with each site at `widths[path]` units (default:
    its width): a layer's weights scale with the units of the site it produces and of the site it consumes, its
    vectors (biases, norm scales) with the former only."""
    ratio = {s["path"]: 1.0 if widths is None else widths[s["path"]] / s["width"] for s in sites}
    out_factor, in_factor = defaultdict(lambda: 1.0), defaultdict(lambda: 1.0)
    for s in sites:
        for path in s["producers"]:
            out_factor[path] *= ratio[s["path"]]
        in_factor[s["consumer"]] *= ratio[s["path"]]
    total = 0.0
    for path in {p for s in sites for p in (*s["producers"], s["consumer"])}:
        for size, ndim in layers[path]:
            total += size * out_factor[path] * (in_factor[path] if ndim >= 2 else 1.0)
    return total


def uniform_widths(sites: list[dict], layers: dict, fraction: float) -> dict:
    """Widths whose layers hold at most `fraction` of the sites' parameters: one fraction `r` of every site's
    width (rounded down, at least one unit), the largest such `r` by bisection, then the budget left filled one
    unit at a time to each site in turn, widest site first."""
    budget = fraction * site_params(sites, layers) + 1e-6

    def at(r):
        return {s["path"]: max(1, int(np.floor(r * s["width"] + 1e-9))) for s in sites}

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if site_params(sites, layers, at(middle)) <= budget else (low, middle)
    widths, growing = at(low), True
    while growing:  # round robin, widest site first
        growing = False
        for s in sorted(sites, key=lambda s: -s["width"]):
            if widths[s["path"]] < s["width"]:
                widths[s["path"]] += 1
                if site_params(sites, layers, widths) <= budget:
                    growing = True
                else:
                    widths[s["path"]] -= 1
    return widths


def chosen_sites(method: "Method", sites: list[dict]) -> list[dict]:
    """The sites `method` cuts: the neuron sites for scope `"neurons"` (every site when there is none), all of
    them for `"all"`."""
    neurons = [s for s in sites if s["unit"] == "neuron"]
    return neurons if method.scope == "neurons" and neurons else sites


def target_for(method: "Method", sites: list[dict], layers: dict, total: int, fraction: float):
    """`(target, compressible)`: the `compress_to` target of `method` at `fraction` of its compressible
    parameters (the parameters of the layers of the sites it cuts), and that count. Neuron sites alone: a
    whole-model count (`compress_to` cuts every neuron site by one fraction, sites of heads kept whole); with sites
    of heads or channels: a dict of widths (`uniform_widths`)."""
    chosen = chosen_sites(method, sites)
    compressible = int(round(site_params(chosen, layers)))
    if all(s["unit"] == "neuron" for s in chosen):
        return int(total - round((1 - fraction) * compressible)), compressible
    return uniform_widths(chosen, layers, fraction), compressible


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    array = np.asarray(value) if hasattr(value, "shape") or isinstance(value, np.generic) else None
    if array is not None and array.dtype.kind in "biuf":
        return array.item() if array.ndim == 0 else array.tolist()
    return repr(value)


def knobs(info) -> list:
    """Per segment: the knob `compress_to` chose (`Target.knob` when it records one) and its description."""
    out = []
    for segment in getattr(info, "segments", ()):
        target = getattr(segment, "target", None)
        if target is not None:
            out.append({"knob": jsonable(target.knob), "target": target.describe()})
        else:
            out.append({"knob": jsonable(getattr(segment, "knob", None))})
    return out


def latency_us(model, x, repeats: int) -> float:
    """Median µs of jitted forward passes (`jaxlump.measure_latency`), the provenance profiler paused."""
    with provenance.paused():
        return 1e6 * jaxlump.measure_latency(model, x, repeats=repeats, warmup=2)


def point(model, method: Method, fraction, sites, layers, data, reference, args) -> dict:
    """One compression, measured (and its recovery fine-tune, for a method that asks); a refusal or failure is
    recorded with its message."""
    lm, x_calib, x_test, y_test, latency_inputs, config, seed = data
    total = parameter_count(model)
    target, compressible = target_for(method, sites, layers, total, fraction)
    record = {"target_fraction": fraction, "target": target, "compressible_params": compressible}
    record["load_before"] = list(os.getloadavg())
    try:
        start = time.perf_counter()
        small, info = method.compress(model, target, x_calib)
        jax.block_until_ready(nnx.state(small) if isinstance(small, nnx.Module) else small)
        record["wall_s"] = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 — a refusal or failure is recorded, never hidden
        record["error"] = f"{type(e).__name__}: {e}"[:1500]
        record["traceback_tail"] = traceback.format_exc()[-800:]
        return record
    params = parameter_count(small)
    record.update(
        params=params,
        params_fraction=params / total,
        realised_fraction=(params - (total - compressible)) / compressible,
        info_params_after=jsonable(info.params_after),
        widths_before=jsonable(info.widths_before),
        widths_after=jsonable(info.widths_after),
        knobs=knobs(info),
        result=np.asarray(jaxlump.RESULTS[info.result]).tolist() or "successful",  # the message of a failure
        calib_output_max_abs=float(info.output_max_abs),
        calib_output_rms=float(info.output_rms),
    )
    calib_ref, calib_out = reference["calib"], outputs(small, x_calib)
    record["calib_output_rel_rms"] = float(np.sqrt(np.mean((calib_out - calib_ref) ** 2) / np.mean(calib_ref**2)))
    record.update(evaluate(small, reference["test"], x_test, y_test, lm))
    record["latency_b1_us"] = latency_us(small, latency_inputs[:1], args.repeats)
    record["latency_big_us"] = latency_us(small, latency_inputs, args.repeats)
    if method.recover:
        start = time.perf_counter()
        tuned = recover(small, config, seed)
        record["recovered"] = {
            "steps": config.recovery_steps,
            "wall_s": time.perf_counter() - start,
            **evaluate(tuned, reference["test"], x_test, y_test, lm),
        }
    record["load_after"] = list(os.getloadavg())
    return record


# ------------------------------------------------------------------------------------------------- jobs
def write_json(path: pathlib.Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def wanted(family: str, methods: dict, sites: list[dict] | None) -> dict:
    """The methods that apply to `family` (a `groups_only` entry only where neuron and group sites are both)."""
    if sites is None:
        return methods
    both = {s["unit"] == "neuron" for s in sites} == {True, False}
    return {k: m for k, m in methods.items() if both or not m.groups_only}


def pending(path: pathlib.Path, config, methods, sizes, overwrite: bool) -> tuple[bool, dict | None]:
    """Whether the job of raw file `path` has work left (points, or saving a complete `.partial`), and the record to
    complete (its `.partial`, else the raw file; `None`: compute afresh). A record of another configuration, or one
    whose recorded code has changed since (`provenance.stale`), is recomputed; `overwrite` recomputes a complete raw
    file but resumes a `.partial` (an interrupted recomputation) whose code is current."""
    for candidate in (path.with_suffix(".partial"), path):
        if candidate.exists():
            record = json.loads(candidate.read_text())
            changed = provenance.stale(record.get("provenance", {}))
            if changed:
                print(f"{candidate.name}: its code changed ({', '.join(changed[:3])}…), recomputing", flush=True)
            if (
                changed
                or (overwrite and candidate == path)
                or record.get("config") != jsonable(dataclasses.asdict(config))
            ):
                return True, None
            applicable = wanted(record["family"], methods, record.get("sites"))
            done = {(p["method"], p["target_fraction"]) for p in record["points"]}
            complete = {(m, f) for m in applicable for f in methods[m].at(sizes)} <= done
            return not complete or candidate != path, record  # a complete `.partial` still has to be saved
    return True, None


def run_job(family: str, config, seed: int, methods: dict, sizes, args, path: pathlib.Path, record=None) -> dict:
    """One family × seed: train (or load) the model, then add every (method, size) point the record lacks; the
    record is saved after each point (`.partial` until complete)."""
    lm = isinstance(config, LMConfig)
    start = time.perf_counter()
    model, training = trained(family, config, seed, pathlib.Path(args.cache))
    x_calib, x_test, y_test = lm_data(config, seed) if lm else cnn_data(config, seed)
    latency_inputs = x_test[: config.latency_batch]
    reference = {"calib": outputs(model, x_calib), "test": outputs(model, x_test)}
    if record is None:
        sites, layers = site_table(model, x_calib)
        record = {
            "family": family,
            "seed": seed,
            "config": jsonable(dataclasses.asdict(config)),
            "training": training,
            "sites": sites,
            "layers": layers,
            "left_out": [o.describe() for o in jaxlump.sites(model, x_calib).left_out],
            "original": {
                "params": parameter_count(model),
                **evaluate(model, reference["test"], x_test, y_test, lm),
                "latency_b1_us": latency_us(model, latency_inputs[:1], args.repeats),
                "latency_big_us": latency_us(model, latency_inputs, args.repeats),
                "latency_big_batch": int(latency_inputs.shape[0]),
            },
            "points": [],
            "versions": {"jax": jax.__version__, "jaxlump": getattr(jaxlump, "__version__", "?")},
            "machine": {"cpus": os.cpu_count(), "device": str(jax.devices()[0])},
            "wall_s": 0.0,
        }
    else:
        record.setdefault("provenance", provenance.UNRECORDED)  # its points were computed by unrecorded code
    applicable = wanted(family, methods, record["sites"])
    data = (lm, x_calib, x_test, y_test, latency_inputs, config, seed)
    for name, method in applicable.items():
        done = {p["target_fraction"] for p in record["points"] if p["method"] == name}
        todo = [f for f in method.at(sizes) if f not in done]
        for fraction in todo:
            result = point(model, method, fraction, record["sites"], record["layers"], data, reference, args)
            record["points"].append({"method": name, "compress_to": method.name, "scope": method.scope, **result})
            shown = result.get("error", f"{result.get('realised_fraction', 0):.0%} of compressible")
            print(f"  {family} s{seed} {name} {fraction:.0%}: {shown[:160]}", flush=True)
            record["wall_s"] += time.perf_counter() - start
            start = time.perf_counter()
            record["provenance"] = provenance.stamp(record.get("provenance"))
            write_json(path.with_suffix(".partial"), record)
    if "provenance" not in record:
        record["provenance"] = provenance.stamp()
    write_json(path, record)
    path.with_suffix(".partial").unlink(missing_ok=True)
    return record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, 1 seed, 2 sizes, 3 methods")
    parser.add_argument("--report-only", action="store_true", help="rebuild the tables from the raw JSON")
    parser.add_argument("--seeds", type=int, help=f"seeds 0..N-1 (default {SEEDS}, --quick 1)")
    parser.add_argument("--families", nargs="*", choices=tuple(FAMILIES))
    parser.add_argument("--methods", nargs="*", choices=tuple(METHODS))
    parser.add_argument("--sizes", type=float, nargs="*", help="target fractions (default: the run's)")
    parser.add_argument("--repeats", type=int, help="timed calls per latency (default 20, --quick 5)")
    parser.add_argument("--cache", default="/tmp/jaxlump_real_models_cache", help="trained models")
    parser.add_argument("--overwrite", action="store_true", help="recompute raw files that exist")
    parser.add_argument("--out", default=str(ROOT))
    return parser


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    out = pathlib.Path(args.out)
    raw = out / ("raw-quick" if args.quick else "raw")
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from real_models_report import report  # the sibling script

    if not args.report_only:
        families = QUICK_FAMILIES if args.quick else FAMILIES
        chosen = args.families or (QUICK_DEFAULT if args.quick else tuple(FAMILIES))
        families = {k: v for k, v in families.items() if k in chosen}
        names = args.methods or (QUICK_METHODS if args.quick else tuple(METHODS))
        methods = {k: METHODS[k] for k in names}
        sizes = tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES))
        seeds = range(args.seeds or (1 if args.quick else SEEDS))
        args.repeats = args.repeats or (5 if args.quick else 20)
        raw.mkdir(parents=True, exist_ok=True)
        started = time.time()
        for family, config in families.items():
            for seed in seeds:
                path = raw / f"{family}_s{seed}.json"
                todo, record = pending(path, config, methods, sizes, args.overwrite)
                if not todo:
                    print(f"{path.name}: complete, skipped", flush=True)
                    continue
                print(f"{path.name}: computing", flush=True)
                with provenance.recording():
                    run_job(family, config, seed, methods, sizes, args, path, record)
                jax.clear_caches()  # each model's programs are its own
                gc.collect()
        print(f"finished in {time.time() - started:.0f} s")
    repository = pathlib.Path(__file__).parents[1]
    pages = () if args.quick or out != ROOT else (repository / "README.md", repository / "docs" / "real_models.md")
    report(raw, out / ("quick" if args.quick else "."), pages)


if __name__ == "__main__":
    main()
