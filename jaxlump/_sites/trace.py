"""Finding a model's sites on its traced program.

Every registered layer of the model (`jaxlump._sites.layers`) is replaced by a *tap*: the same layer, called
inside a `jax.jit` named `jaxlump_tap_<i>`, so that each call is one named equation of
`jax.make_jaxpr(model)(x)`. A site is then read off the dataflow: a consumer tap whose input is computed from
one or two producer taps' outputs by elementwise operations only (and scalars), each value of which is read by
nothing else. The elementwise part is recognised *as a program*: it must equal the jaxpr of a known activation
(`jaxlump.Activation`, built in or declared), or `σ(gate) ⊙ up` for a gated unit — never by its values.
"""

import dataclasses
import itertools

import jax
import jax.extend.core as jcore
import numpy as np

from .._model.activations import ACTIVATIONS
from . import pooling
from .layers import Family, Path, layer_type_of, path_name
from .norms import norm_type_of

TAP_PREFIX = "jaxlump_tap_"
NORM_PREFIX = "jaxlump_norm_"  # a registered per-channel normalisation (`jaxlump._sites.norms`), tapped likewise
# Primitives that act elementwise (with scalars broadcast); a call of only these counts as one.
ELEMENTWISE = frozenset(
    "abs add and atan2 cbrt ceil clamp convert_element_type copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 "
    "expm1 floor ge gt integer_pow is_finite le log log1p logistic lt max min mul ne neg nextafter not or pow "
    "round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh xor".split()
)
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod argmax argmin cumsum dot_general".split())
LOOPS = frozenset("scan while cond".split())
# Primitives that keep a value the same for every unit when their operand is (a scalar broadcast to any shape).
UNIFORM = frozenset(("broadcast_in_dim", "convert_element_type", "reshape"))


@dataclasses.dataclass(frozen=True)
class Tapped:
    """The layers of a model by tap index: their paths and the layers themselves; its normalisations likewise."""

    paths: tuple[Path, ...]
    layers: tuple
    norm_paths: tuple[Path, ...] = ()
    norms: tuple = ()


class _Tap:
    """A layer called inside a `jax.jit` named after its index (a plain object, so that Equinox and NNX models
    can both hold it)."""

    def __init__(self, layer, index: int, prefix: str = TAP_PREFIX):
        self.layer, self.name = layer, f"{prefix}{index}"

    def __call__(self, x, *args, **kwargs):
        layer = self.layer

        def tapped(x):
            return layer(x, *args, **kwargs)

        tapped.__name__ = self.name
        return jax.jit(tapped)(x)


def tapped_model(model, family: Family):
    """`model` with every registered layer and every normalisation that can be folded (in inference mode)
    replaced by a tap, and them by tap index."""
    found = family.layers(model)
    norms = [(path, norm) for path, norm in family.norms(model) if norm_type_of(norm).why_not(norm) is None]
    taps = {path: _Tap(layer, i) for i, (path, layer) in enumerate(found)}
    taps |= {path: _Tap(norm, i, NORM_PREFIX) for i, (path, norm) in enumerate(norms)}
    paths, layers = tuple(p for p, _ in found), tuple(layer for _, layer in found)
    return family.replace(model, taps), Tapped(paths, layers, tuple(p for p, _ in norms), tuple(n for _, n in norms))


# The flattened program -----------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Node:
    """One equation of the flattened program: a tap call, a primitive, or an opaque call."""

    name: str
    eqn: object
    ins: list
    outs: list
    tap: int | None = None
    elementwise: bool = False
    in_loop: bool = False
    norm: int | None = None


def _inner_jaxprs(eqn):
    return [j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j for j in jcore.jaxprs_in_params(eqn.params)]


def _tap_index(eqn, prefix: str = TAP_PREFIX) -> int | None:
    name = eqn.params.get("name") if eqn.primitive.name in ("jit", "pjit") else None
    if isinstance(name, str) and name.startswith(prefix):
        return int(name[len(prefix) :])
    return None


def _contains_tap(jaxpr) -> bool:
    return any(_tap_index(e) is not None or any(_contains_tap(j) for j in _inner_jaxprs(e)) for e in jaxpr.eqns)


def _all_elementwise(jaxpr) -> bool:
    """Whether every equation of `jaxpr` acts elementwise, constants broadcast from scalars included."""
    uniform: set = set()
    for e in jaxpr.eqns:
        if e.primitive.name in UNIFORM and all(_is_uniform(v, uniform) for v in e.invars):
            uniform.update(e.outvars)
            continue
        if e.primitive.name in ELEMENTWISE:
            continue
        inner = _inner_jaxprs(e)
        if not inner or e.primitive.name in LOOPS or not all(_all_elementwise(j) for j in inner):
            return False
    return True


def _is_uniform(v, uniform: set) -> bool:
    return isinstance(v, jcore.Literal) or np.ndim(_aval(v)) == 0 or v in uniform


def _aval(v):
    return np.empty(v.aval.shape, dtype=bool) if hasattr(v.aval, "shape") else np.empty(())


def flatten(jaxpr, nodes: list[Node], rename: dict, in_loop: bool = False) -> None:
    """Append `jaxpr`'s equations to `nodes`, inlining calls that contain taps (their variables renamed)."""
    for eqn in jaxpr.eqns:
        ins = [rename.get(v, v) if isinstance(v, jcore.Var) else v for v in eqn.invars]
        tap = _tap_index(eqn)
        inner = _inner_jaxprs(eqn)
        if tap is None and inner and any(_contains_tap(j) for j in inner):
            if eqn.primitive.name in LOOPS or len(inner) != 1:
                nodes.append(Node(eqn.primitive.name, eqn, ins, list(eqn.outvars)))
                for j in inner:
                    flatten(j, nodes, rename, in_loop=True)
                continue
            (body,) = inner
            for v, a in zip(body.invars[-len(ins) :], ins):
                rename[v] = a
            flatten(body, nodes, rename, in_loop)
            for outer, v in zip(eqn.outvars, body.outvars):
                rename[outer] = rename.get(v, v) if isinstance(v, jcore.Var) else v
            continue
        elementwise = tap is None and (
            eqn.primitive.name in ELEMENTWISE
            or (bool(inner) and eqn.primitive.name not in LOOPS and all(_all_elementwise(j) for j in inner))
        )
        norm = _tap_index(eqn, NORM_PREFIX)
        nodes.append(Node(eqn.primitive.name, eqn, ins, list(eqn.outvars), tap, elementwise, in_loop, norm))


# Sites on the flattened program --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Found:
    """A site as found: producer and consumer tap indices, the combine, or the reason it was left out."""

    producers: tuple[int, ...]
    consumer: int | None
    activation: str | None = None
    gate: int | None = None
    reason: str | None = None
    flattened: tuple | None = None  # the spatial shape flattened after each channel when the consumer is a Linear
    norm: int | None = None  # the normalisation between the producer and the activation, folded into the site
    pooling: tuple = ()  # the pooling between the activation and the consumer (`jaxlump._sites.pooling` steps)


class Program:
    """The flattened program of a tapped model, with who defines and who reads each variable."""

    def __init__(self, closed_jaxpr):
        self.jaxpr = closed_jaxpr.jaxpr
        self.nodes: list[Node] = []
        rename: dict = {}
        flatten(self.jaxpr, self.nodes, rename)
        self.outputs = {rename.get(v, v) for v in self.jaxpr.outvars if isinstance(v, jcore.Var)}
        self.defined_by: dict = {}
        self.read_by: dict = {}
        for node in self.nodes:
            for v in node.outs:
                self.defined_by[v] = node
            for v in node.ins:
                if isinstance(v, jcore.Var):
                    self.read_by.setdefault(v, []).append(node)
        self.taps: dict[int, list[Node]] = {}
        for node in self.nodes:
            if node.tap is not None:
                self.taps.setdefault(node.tap, []).append(node)
        self.consts = closed_jaxpr.consts

    def values_of(self, variables: list, *args) -> list:
        """Evaluate the program on `args` (its flattened inputs) and return the values of `variables`."""
        env = dict(zip(self.jaxpr.constvars, self.consts)) | dict(zip(self.jaxpr.invars, args))

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for node in self.nodes:
            if node.in_loop:
                continue
            params = node.eqn.primitive.get_bind_params(node.eqn.params)
            outs = node.eqn.primitive.bind(*map(read, node.ins), **params)
            env.update(zip(node.outs, outs if node.eqn.primitive.multiple_results else [outs]))
        return [read(v) for v in variables]

    def uniform(self, v) -> bool:
        """Whether `v` is the same for every unit: a literal, a scalar, or a scalar broadcast (reshaped, cast)."""
        if isinstance(v, jcore.Literal) or np.ndim(_aval(v)) == 0:
            return True
        node = self.defined_by.get(v)
        return node is not None and node.name in UNIFORM and all(self.uniform(u) for u in node.ins)

    def reader_names(self, v, allowed: set) -> list[str]:
        names = [n.name for n in self.read_by.get(v, []) if n not in allowed]
        return names + (["the model's output"] if v in self.outputs else [])

    def consumer_input(self, consumer: Node):
        """`(value, shape)`: the value the consumer reads and `None`, or, when it reads a flatten of a value — a
        reshape of `(..., *shape)` to `(..., prod(shape))` — that value and `shape` (a channel axis and the spatial
        ones, in the layout of the convolution that made them)."""
        target = consumer.ins[-1]
        node = self.defined_by.get(target)
        if node is None or node.name != "reshape" or node.in_loop or not isinstance(node.ins[0], jcore.Var):
            return target, None
        before, after = _aval(node.ins[0]).shape, _aval(target).shape
        lead = len(after) - 1
        if len(before) <= len(after) or before[:lead] != after[:lead]:
            return target, None
        return node.ins[0], tuple(before[lead:])

    def pooling_chain(self, value) -> tuple:
        """`(source, chain)`: when `value` (what the consumer or its flatten reads) is a pooling of `source` — a chain
        of window reductions, constant scalings and layout moves (`jaxlump._sites.pooling`), each value of it read by
        the next equation alone — that chain in program order; else `(value, [])`."""
        chain, v = [], value
        while True:
            node = self.defined_by.get(v)
            if node is None or node.in_loop or node.name not in pooling.KINDS:
                break
            if v is not value and (len(self.read_by.get(v, [])) != 1 or v in self.outputs):
                break
            operands = [u for u in node.ins if isinstance(u, jcore.Var) and not self.uniform(u)]
            if len(operands) != 1:
                break
            chain.insert(0, node)
            v = operands[0]
        while chain and chain[0].name in ("mul", "div", "convert_element_type"):  # the activation's, not the pool's
            v = chain.pop(0).outs[0]
        if not any(node.name in pooling.POOLS for node in chain):
            return value, []
        return v, chain

    def backward(self, target):
        """The elementwise slice that computes `target` (a consumer's input): `(nodes, producer taps, problem)`;
        a normalisation's call on the way is one of `nodes` (it is checked to follow a producer by `find`)."""
        shape = _aval(target).shape
        stack, seen, nodes, producers = [target], set(), [], set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            node = self.defined_by.get(v)
            if node is None:
                return nodes, producers, "its input is not computed from other layers"
            if node.tap is not None:
                producers.add(node.tap)
                continue
            if node.norm is not None and not node.in_loop:
                nodes.append(node)
                stack.append(node.ins[-1])
                continue
            if not node.elementwise or node.in_loop:
                return nodes, producers, f"its input comes through `{node.name}`, not elementwise operations"
            nodes.append(node)
            for u in node.ins:
                if self.uniform(u):
                    continue
                if _aval(u).shape != shape:
                    return (
                        nodes,
                        producers,
                        (f"its input is combined with a tensor of shape {_aval(u).shape} by `{node.name}`"),
                    )
                stack.append(u)
        return nodes, producers, None

    def forward(self, producer: Node) -> tuple[set[int], list[Node]]:
        """The consumer taps reached from `producer`'s output through elementwise operations of its shape, and
        those operations."""
        shape = _aval(producer.outs[0]).shape
        stack, seen, reached, nodes = list(producer.outs), set(), set(), []
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            for node in self.read_by.get(v, []):
                if node.tap is not None and node.ins and node.ins[-1] is v:
                    reached.add(node.tap)
                elif (
                    (node.elementwise or node.norm is not None)
                    and not node.in_loop
                    and all(_aval(o).shape == shape for o in node.outs)
                ):
                    nodes.append(node)
                    stack.extend(node.outs)
        return reached, nodes


# Parameters that only describe shapes or placement: a program is the same under any batching without them.
_SHAPE_PARAMS = frozenset(("shape", "broadcast_dimensions", "sharding", "out_sharding", "dimensions"))


def _structure(eqns, env: dict, lines: list) -> None:
    """Append the shape-free form of `eqns` to `lines`: calls inlined, scalars broadcast to any shape collapsed
    to the scalar, every other equation as `primitive[params](operands)` (so `vmap` nesting does not matter)."""

    def ref(v):
        if isinstance(v, jcore.Literal):
            return f"{v.val!r}"
        return env.get(v, "?")

    for eqn in eqns:
        ins = [ref(v) for v in eqn.invars]
        inner = _inner_jaxprs(eqn)
        if eqn.primitive.name in UNIFORM and all(
            _is_uniform(v, set()) or i.startswith("scalar(") for v, i in zip(eqn.invars, ins)
        ):
            env[eqn.outvars[0]] = ins[0] if ins[0].startswith("scalar(") else f"scalar({ins[0]})"
            continue
        if inner and eqn.primitive.name not in LOOPS and len(inner) == 1:
            (body,) = inner
            inner_env = dict(zip(body.invars[-len(ins) :], ins)) if ins else {}
            _structure(body.eqns, inner_env, lines)
            for outer, v in zip(eqn.outvars, body.outvars):
                env[outer] = inner_env.get(v, f"{v.val!r}" if isinstance(v, jcore.Literal) else "?")
            continue
        params = {k: v for k, v in eqn.params.items() if k not in _SHAPE_PARAMS}
        lines.append(f"{eqn.primitive.name}[{params}]({', '.join(ins)})")
        for k, v in enumerate(eqn.outvars):
            env[v] = f"%{len(lines) - 1}.{k}"


def _canonical(nodes: list[Node], inputs: list, output) -> str | None:
    """The shape-free form of the slice `nodes` (inputs → output), `None` when it reads other variables."""
    defined = set(inputs) | {v for n in nodes for v in n.outs}
    for n in nodes:
        if any(isinstance(v, jcore.Var) and v not in defined for v in n.ins):
            return None
    env = {v: f"x{i}" for i, v in enumerate(inputs)}
    lines: list[str] = []
    _structure([n.eqn.replace(invars=n.ins) for n in nodes], env, lines)
    return "\n".join(lines) + f"\n-> {env.get(output, '?')}"


def _known_structure(fn, aval) -> str:
    jaxpr = jax.make_jaxpr(fn)(aval).jaxpr
    env = {jaxpr.invars[0]: "x0"}
    lines: list[str] = []
    _structure(jaxpr.eqns, env, lines)
    out = jaxpr.outvars[0]
    return "\n".join(lines) + f"\n-> {env.get(out, 'x0' if out is jaxpr.invars[0] else '?')}"


def _known_programs(aval) -> list[tuple[str, str]]:
    programs = []
    for name in ACTIVATIONS:
        try:
            programs.append((name, _known_structure(ACTIVATIONS[name].model_fn, aval)))
        except Exception:  # noqa: BLE001, S112 — an activation that cannot trace on this shape matches nothing
            continue
    return programs


def recognise(program: Program, nodes: list[Node], source, output) -> str | None:
    """The name of the activation `nodes` compute from `source` to `output` (identity when they are one)."""
    if source is output:
        return "identity"
    text = _canonical(sorted(nodes, key=program.nodes.index), [source], output)
    if text is None:
        return None
    aval = jax.ShapeDtypeStruct(source.aval.shape, source.aval.dtype)
    return next((name for name, known in _known_programs(aval) if known == text), None)


def _ancestors(program: Program, v, nodes: set) -> set:
    found, stack = set(), [v]
    while stack:
        u = stack.pop()
        node = program.defined_by.get(u)
        if node in nodes and node not in found:
            found.add(node)
            stack.extend(x for x in node.ins if isinstance(x, jcore.Var))
    return found


def _gated(program: Program, nodes: list[Node], producers: dict[int, Node], output) -> tuple[str, int] | str:
    """`(activation, gate tap)` for `σ(gate) ⊙ up`, or why the combine of two producers is not one."""
    last = program.defined_by[output]
    if last.name != "mul" or len(last.ins) != 2:
        return f"its two producers are combined by `{last.name}`, not σ(gate) ⊙ up"
    node_set = set(nodes) - {last}
    for gate_side, up_side in ((0, 1), (1, 0)):
        up_value, gate_value = last.ins[up_side], last.ins[gate_side]
        up = [t for t, n in producers.items() if n.outs[0] is up_value]
        gate_nodes = _ancestors(program, gate_value, node_set)
        gate = [t for t, n in producers.items() if n.outs[0] is not up_value]
        if len(up) != 1 or len(gate) != 1 or gate_nodes != node_set:
            continue
        activation = recognise(program, list(gate_nodes), producers[gate[0]].outs[0], gate_value)
        if activation is not None:
            return activation, gate[0]
    return "its gated combine is not σ(gate) ⊙ up with σ a known activation"


def find(program: Program, tapped: Tapped) -> list[Found]:
    """Every site of the program, and every producer→consumer structure that looks like one but is left out."""
    found: list[Found] = []
    claimed: set[int] = set()
    for consumer_tap, calls in sorted(program.taps.items()):
        if len(calls) != 1:
            continue
        consumer = calls[0]
        value, flattened = program.consumer_input(consumer)
        activated, chain = program.pooling_chain(value)
        nodes, producers, problem = program.backward(activated)
        if problem is not None or not producers:
            continue
        norms = [n for n in nodes if n.norm is not None]
        nodes = [n for n in nodes if n.norm is None]
        reads = [*nodes, *chain] + ([] if flattened is None else [program.defined_by[consumer.ins[-1]]])
        steps = _pooling_steps(tapped, producers, chain, activated)
        reduced = pooling.reduced_axes(steps)
        if flattened is None and reduced and reduced == len(_aval(activated).shape) - 2:
            flattened = tuple(_aval(value).shape[1:])  # a global pool: the reader takes one value per channel
        why = (
            _why_not(program, tapped, consumer, [*reads, *norms], producers)
            or _channels_problem(tapped, producers, consumer_tap, flattened, reduced)
            or _norm_problem(program, tapped, norms, producers)
            or (steps if isinstance(steps, str) else None)
        )
        flattened = _spatial(tapped, producers, flattened)
        if why is None:
            source = norms[0].outs[0] if norms else None
            result = _combine(program, nodes, producers, activated, source)
            if isinstance(result, str):
                why = result
            else:
                activation, gate = result
                found.append(
                    Found(
                        tuple(sorted(producers)),
                        consumer_tap,
                        activation,
                        gate,
                        flattened=flattened,
                        norm=norms[0].norm if norms else None,
                        pooling=steps,
                    )
                )
                claimed.update(producers)
                continue
        found.append(Found(tuple(sorted(producers)), consumer_tap, reason=why))
        claimed.update(producers)
    for tap, calls in sorted(program.taps.items()):
        if tap in claimed:
            continue
        reached, nodes = program.forward(calls[0])
        if not reached:
            continue
        if len(calls) != 1 or any(len(program.taps[r]) != 1 for r in reached):
            found.append(Found((tap,), min(reached), reason="a layer of it is called more than once (shared weights)"))
            continue
        problems = [_reader_problem(program, calls[0], set(nodes), reached), _mixed(program, calls[0], nodes)]
        reason = min((p for p in problems if p is not None), default=(0, None))[1]
        found.append(Found((tap,), min(reached), reason=reason or "its output reaches the next layer indirectly"))
    return found


def _mixed(program: Program, producer: Node, nodes: list[Node]) -> tuple[int, str] | None:
    """Where and why the output is not the next layer's input alone: it is combined with another tensor."""
    inside = set(producer.outs) | {v for n in nodes for v in n.outs}
    for node in sorted(nodes, key=program.nodes.index):
        if any(isinstance(v, jcore.Var) and v not in inside and not program.uniform(v) for v in node.ins):
            return program.nodes.index(node), (
                f"its output is combined with another tensor by `{node.name}` (e.g. a residual connection) before "
                "the next layer, so its width is shared with other layers"
            )
    return None


def _reader_problem(program: Program, producer: Node, nodes: set, reached) -> tuple[int, str] | None:
    """Where and why values of the slice are read outside it (the first such reader in program order)."""
    allowed = nodes | {program.taps[r][0] for r in reached}
    readers = []
    for v in itertools.chain(producer.outs, *(n.outs for n in nodes)):
        readers += [n for n in program.read_by.get(v, []) if n not in allowed]
        if v in program.outputs:
            return len(program.nodes), _read_elsewhere(["the model's output"])
    if not readers:
        return None
    first = min(readers, key=program.nodes.index)
    return program.nodes.index(first), _read_elsewhere([first.name])


def _read_elsewhere(names: list[str]) -> str:
    reduction = next((n for n in names if n in REDUCTIONS), None)
    if reduction is not None:
        return f"its units also feed `{reduction}` (e.g. a norm), which a change of width would alter"
    return f"its units are also read by {', '.join(f'`{n}`' for n in sorted(set(names)))}, not only by one consumer"


def _why_not(program: Program, tapped: Tapped, consumer: Node, nodes, producers) -> str | None:
    for tap in (*sorted(producers), consumer.tap):
        layer_type = layer_type_of(tapped.layers[tap])
        reason = layer_type.why_not(tapped.layers[tap])
        if reason is not None:
            return f"layer {tap} cannot be rebuilt: {reason}"
        calls = program.taps[tap]
        if len(calls) != 1:
            return "a layer of it is called more than once (shared weights)"
        if calls[0].in_loop:
            return "a layer of it is called inside a loop or branch (`lax.scan`, `while`, `cond`)"
    if len(producers) > 2:
        return f"its hidden units combine {len(producers)} producers (at most two: σ(gate) ⊙ up)"
    if len({id(program.taps[p][0].ins[-1]) for p in producers}) != 1:
        return "its producers read different inputs"
    allowed = set(nodes) | {consumer}
    for v in itertools.chain(*(program.taps[p][0].outs for p in producers), *(n.outs for n in nodes)):
        others = program.reader_names(v, allowed)
        if others:
            return _read_elsewhere(others)
    return None


def _channels_problem(tapped: Tapped, producers, consumer: int, flattened, reduced: int = 0) -> str | None:
    """Why producers and a consumer of different kinds (channels, features) do not make a site, if they don't
    (`reduced`: spatial axes a pooling reduced whole before the flatten)."""
    convolutions = [layer_type_of(tapped.layers[p]).channels for p in producers]
    consumer_convolves = layer_type_of(tapped.layers[consumer]).channels
    if not any(convolutions):
        if consumer_convolves:
            return "a Linear's output feeds a convolution"
        return "its producer's output is reshaped before the next layer" if flattened is not None else None
    if len(producers) > 1:
        return "its units combine two convolutions (gated convolutions are not supported)"
    if consumer_convolves:
        return None
    if flattened is not None:
        (producer,) = producers
        spatial = np.ndim(layer_type_of(tapped.layers[producer]).read(tapped.layers[producer])[0]) - 2
        if len(flattened) == spatial + 1 - reduced:
            return None
        return (
            f"a convolution's output is flattened only in part (its last {len(flattened)} axes) before a Linear, so "
            "its channels are not whole groups of the Linear's inputs"
        )
    return (
        "a convolution's output reaches a Linear without a flatten of its channels (`x.reshape(-1)`), so its "
        "channels are not the Linear's units"
    )


def _spatial(tapped: Tapped, producers, flattened: tuple | None) -> tuple | None:
    """The spatial shape after each channel of a flattened convolution output (`flattened` without its channel
    axis, which comes first or last as the producer lays its channels out)."""
    if flattened is None or len(producers) != 1:
        return flattened
    return flattened[:-1] if layer_type_of(tapped.layers[next(iter(producers))]).channels_last else flattened[1:]


def _pooling_steps(tapped: Tapped, producers, chain: list[Node], activated) -> tuple | str:
    """The pooling steps of `chain` on each channel of the producer's activated output `activated`, or why the
    chain is not a pooling of each channel on its own."""
    if not chain:
        return ()
    layer_types = [layer_type_of(tapped.layers[p]) for p in producers]
    if len(layer_types) != 1 or not layer_types[0].channels:
        return "its units are pooled (`reduce_window`) before the next layer; pooling is read for convolutions only"
    steps = pooling.steps_of(chain, len(_aval(activated).shape), -1 if layer_types[0].channels_last else 1)
    return f"its pooling is not read: {steps}" if isinstance(steps, str) else steps


def _norm_problem(program: Program, tapped: Tapped, norms: list[Node], producers) -> str | None:
    """Why the normalisations found between producers and a consumer cannot be folded into the site, if they can't:
    at most one, right after a convolution, read by nothing else (checked by `_why_not`)."""
    if not norms:
        return None
    names = ", ".join(path_name(tapped.norm_paths[n.norm]) for n in norms)
    if len(norms) > 1 or len(producers) != 1:
        return f"its units pass through {len(norms)} normalisations ({names}); one after one convolution is folded"
    (producer,) = producers
    (norm,) = norms
    if not layer_type_of(tapped.layers[producer]).channels:
        return f"a normalisation ({names}) follows a Linear; normalisations are folded into convolutions' sites only"
    if norm.ins[-1] is not program.taps[producer][0].outs[0]:
        return f"its normalisation ({names}) does not read the convolution's output directly"
    return None


def _combine(program: Program, nodes, producers, output, source=None) -> tuple[str, int | None] | str:
    """`(activation, gate tap)` of the combine `nodes` compute from the producers' outputs (from `source`, a
    normalisation's output, when there is one) to `output`, or why it is not a known one."""
    by_tap = {p: program.taps[p][0] for p in producers}
    if len(by_tap) == 1:
        ((tap, node),) = by_tap.items()
        activation = recognise(program, nodes, node.outs[0] if source is None else source, output)
        if activation is None:
            return (
                "its elementwise combine is not a known activation (declare it with `jaxlump.Activation` and call "
                "that object in the model)"
            )
        return activation, None
    return _gated(program, nodes, by_tap, output)
