"""Channel and head sites (issue 30): quality of merge_or_remove against group OBS on the digits CNN, and whether the
compressed CNN and attention run faster in proportion to their FLOPs.

- `quality`: the digits CNN of the tests (two 3×3 convolutions with ReLU, a flatten, a linear classifier; 16 and 16
  channels, trained 300 Adam steps), as trained and with 8 planted duplicate channels in each convolution (24 and 24).
  `merge_or_remove` at ε = 0 (the planted model: which channels go, logit change) and, for both models,
  `merge_or_remove` and `obs_prune` cut to half the channels of each site (`compress_to` at the same widths, each
  consumer refitted): logit RMS deviation from the uncompressed model on the 256 calibration images and the 360
  test images, test accuracy, wall time.
- `latency`: the trained CNN cut by `obs_prune` to 16/12/8/4 channels per site; a Flax NNX CNN at a realistic
  image size (32 × 32 × 3 as CIFAR-10's, two 3×3 convolutions of 64 channels with BatchNorm and ReLU, a 2×2 max
  pool between them, a global average pool and a linear classifier; random weights, since latency does not depend
  on them) cut to 64/48/32/16 channels per site; and one pre-LN transformer block (d = 256, 8 heads of 32,
  T = 128, a GELU FFN of 1024) cut to 8/6/4/2 heads; the median jitted forward pass (`jaxlump.measure_latency`, 512
  digits, 64 images of 32 × 32, 32 sequences) against the FLOPs: the CNNs' counted by `jaxlump.cost` (convolutions
  and the classifier), the attention module's counted here as its four projections plus the two attention products
  (`2·T²·(qk + vo)` per head and sequence), which `jaxlump.cost` leaves out.

Run: `nice -n 10 python benchmarks/perf_groups.py --part quality|latency [--quick] [--overwrite]`; each part writes
`results/perf_groups_<part>.json`.
"""

import argparse
import pathlib
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))  # the tests' CNN, data and planting
import provenance  # noqa: E402
from _models import ByteTransformer  # noqa: E402
from _vision import DigitsCNN, accuracy, digits, plant_channels, train_cnn  # noqa: E402
from perf_common import latency_us, write  # noqa: E402

import jaxlump  # noqa: E402
from jaxlump.baselines import compress_to  # noqa: E402


def _trained(quick: bool):
    model = train_cnn(DigitsCNN((16, 16), key=jr.key(0)), 60 if quick else 300, jr.key(1))
    planted, copies1, sources1 = plant_channels(model, "conv1", 8, jr.key(2))
    planted, copies2, sources2 = plant_channels(planted, "conv2", 8, jr.key(3))
    return model, planted, ((copies1, sources1), (copies2, sources2))


def _rms(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def quality(quick: bool) -> dict:
    model, planted, pairs = _trained(quick)
    x, _, x_test, y_test = digits()
    calib = x[: 64 if quick else 256]
    start = time.perf_counter()
    exact, info = jaxlump.merge_or_remove(planted, calib, 0.0)
    seconds = time.perf_counter() - start
    merged_into_source = [
        bool(np.all(np.asarray(s.partitions[0])[copies] == np.asarray(s.partitions[0])[sources]))
        for s, (copies, sources) in zip(info.segments, pairs, strict=True)
    ]
    out = {
        "eps_zero": {
            "widths_before": info.widths_before,
            "widths_after": {k: int(v) for k, v in info.widths_after.items()},
            "copies_merged_into_their_sources": merged_into_source,
            "test_logit_max_abs_change": float(
                np.max(np.abs(np.asarray(jax.vmap(exact)(x_test)) - np.asarray(jax.vmap(model)(x_test))))
            ),
            "test_logit_max_abs": float(np.max(np.abs(np.asarray(jax.vmap(model)(x_test))))),
            "seconds": seconds,
        },
        "half": [],
    }
    for name, net in (("planted", planted), ("trained", model)):
        widths = {s.path: s.width // 2 for s in jaxlump.sites(net, calib).sites}
        reference, reference_test = jax.vmap(net)(calib), jax.vmap(net)(x_test)
        for method in ("merge_or_remove", "obs_prune"):
            start = time.perf_counter()
            small, _ = compress_to(net, method, widths, calib)
            row = {
                "model": name,
                "method": method,
                "widths": widths,
                "calibration_logit_rms": _rms(jax.vmap(small)(calib), reference),
                "test_logit_rms": _rms(jax.vmap(small)(x_test), reference_test),
                "test_accuracy": accuracy(small, x_test, y_test),
                "uncompressed_test_accuracy": accuracy(net, x_test, y_test),
                "seconds": time.perf_counter() - start,
            }
            print(row, flush=True)
            out["half"].append(row)
    return out


class _ImageCNN(nnx.Module):
    """Two 3×3 convolutions with BatchNorm and ReLU, a 2×2 max pool between them, a global average pool and a linear
    classifier (as a ResNet ends); images `(B, 32, 32, 3)`."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, channels, kernel_size=(3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(channels, rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, kernel_size=(3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(channels, rngs=rngs)
        self.linear = nnx.Linear(channels, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), window_shape=(2, 2), strides=(2, 2))
        return self.linear(jnp.mean(nnx.relu(self.bn2(self.conv2(x))), axis=(1, 2)))


def _cnn_rows(name: str, model, head: str, calib, images, widths, quick: bool) -> list[dict]:
    """`model` cut by `obs_prune` to each of `widths` channels at its sites `conv2` and `head` (the classifier): its
    FLOPs and latency on `images`."""
    rows = []
    for channels in widths:
        small, _ = compress_to(model, "obs_prune", {"conv2": channels, head: channels}, calib)
        rows.append(
            {
                "model": name,
                "units": channels,
                "flops": int(jaxlump.cost(small, x=images[:1]).flops),
                "latency_us": latency_us(small, images, repeats=20 if quick else 100),
            }
        )
        print(rows[-1], flush=True)
    return rows


class _SelfAttention(eqx.Module):
    """The block's attention module applied to one sequence, causally (what its latency is measured on)."""

    attention: eqx.nn.MultiheadAttention

    def __call__(self, x):
        mask = jnp.tril(jnp.ones((x.shape[0], x.shape[0]), bool))
        return self.attention(x, x, x, mask=mask)


def _attention_flops(attention: eqx.nn.MultiheadAttention, length: int) -> int:
    projections = sum(
        2 * layer.in_features * layer.out_features * length
        for layer in (attention.query_proj, attention.key_proj, attention.value_proj, attention.output_proj)
    )
    return projections + 2 * length * length * (attention.qk_size + attention.vo_size) * attention.num_heads


def latency(quick: bool) -> dict:
    model, _, _ = _trained(quick)
    x, _, _, _ = digits()
    rows = _cnn_rows("digits CNN", model, "head", x[:256], x[:512], (16, 12, 8, 4), quick)
    channels = 16 if quick else 64
    cnn = _ImageCNN(channels, rngs=nnx.Rngs(7))
    cnn.eval()
    pictures = jr.normal(jr.key(8), (64, 32, 32, 3), dtype=jnp.float32)
    widths = (channels, 3 * channels // 4, channels // 2, channels // 4)
    rows += _cnn_rows("NNX CNN 32×32×3 (BatchNorm, pools)", cnn, "linear", pictures[:16], pictures, widths, quick)
    d, heads, length = (64, 4, 32) if quick else (256, 8, 128)
    block = ByteTransformer(d=d, heads=heads, hidden=4 * d, blocks=1, ffn="gelu", max_length=length, key=jr.key(4))
    tokens = jr.randint(jr.key(5), (8, length), 0, 256)
    sequences = jr.normal(jr.key(6), (32, length, d), dtype=jnp.float32)
    for kept in [heads, 3 * heads // 4, heads // 2, heads // 4]:
        small, _ = compress_to(block, "obs_prune", {"blocks[0].attention": kept}, tokens)
        attention = small.blocks[0].attention
        rows.append(
            {
                "model": f"attention d={d}, T={length}",
                "units": kept,
                "flops": _attention_flops(attention, length),
                "latency_us": latency_us(_SelfAttention(attention), sequences, repeats=20 if quick else 100),
            }
        )
        print(rows[-1], flush=True)
    for row in rows:
        full = next(r for r in rows if r["model"] == row["model"])
        row["flops_ratio"] = row["flops"] / full["flops"]
        row["latency_ratio"] = row["latency_us"] / full["latency_us"]
    return {"rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["quality", "latency"], required=True)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run); writes *_quick.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result file")
    args = parser.parse_args()
    start = time.time()
    payload = {"quality": quality, "latency": latency}[args.part](args.quick)
    write(f"groups_{args.part}", args, {**payload, "wall_seconds": time.time() - start})


if __name__ == "__main__":
    with provenance.recording():
        main()
