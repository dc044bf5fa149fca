"""Channel rules per op: which spaces an op's output has and how its indices tie to inputs."""

from __future__ import annotations

import numpy as np
import torch.fx as fx

from sparsecc.structured.depgraph import DepGraph, Space, _rank, _shape, _Unsafe


def _in_space(dg: DepGraph, x) -> Space:
    sp = dg.space(x)
    if sp is None:
        raise _Unsafe(f"input {getattr(x, 'name', x)} has no channel space")
    return sp


def same(dg: DepGraph, node: fx.Node, x) -> Space:
    """Channels pass through unchanged (activations, norms, pooling, dropout)."""
    xs = _in_space(dg, x)
    if _rank(node) != len(_shape(x)):
        raise _Unsafe("rank changes")
    out = dg.new_space(node, xs.axes)
    dg.tie(xs, out)
    return out


def conv(dg: DepGraph, node: fx.Node, x, owner: str, groups: int) -> None:
    xs = _in_space(dg, x)
    if xs.axes != (1,):
        raise _Unsafe("conv input channels are not on axis 1")
    out = dg.new_space(node, (1,))
    cin, cout = xs.size, out.size
    if groups == 1:
        dg.add_slice(owner, "weight", 1, xs, "in")
    elif groups == cin:
        mult = cout // cin
        # depthwise: output channel c*mult + t reads input channel c only
        dg.tie(xs, out, ((c, c * mult + t) for c in range(cin) for t in range(mult)))
    else:
        dg.lock(xs, f"{owner}: grouped conv (groups={groups})")
        dg.lock(out, f"{owner}: grouped conv (groups={groups})")
    dg.add_slice(owner, "weight", 0, out, "out")
    if getattr(dg.gm.get_submodule(owner), "bias", None) is not None:
        dg.add_slice(owner, "bias", 0, out, "out")


def linear(dg: DepGraph, node: fx.Node, x, owner: str) -> None:
    xs = _in_space(dg, x)
    if xs.axes != (len(_shape(x)) - 1,):
        raise _Unsafe("linear input features are not the last axis")
    dg.add_slice(owner, "weight", 1, xs, "in")
    out = dg.new_space(node, (-1,))
    dg.add_slice(owner, "weight", 0, out, "out")
    if dg.gm.get_submodule(owner).bias is not None:
        dg.add_slice(owner, "bias", 0, out, "out")


def layer_norm(dg: DepGraph, node, x, owner: str, ndims: int, has_w: bool, has_b: bool):
    xs = _in_space(dg, x)
    if ndims != 1 or xs.axes != (len(_shape(x)) - 1,):
        raise _Unsafe("layer_norm over several dims")
    out = same(dg, node, x)
    for name, present in (("weight", has_w), ("bias", has_b)):
        if present:
            dg.add_slice(owner, name, 0, out, "norm")
    # Mean and variance run over the channels: removing even dead ones changes them.
    dg.inexact[out.id] = f"{owner}: layer_norm normalises over these channels"
    dg.inexact[xs.id] = dg.inexact[out.id]


def softmax_like(dg: DepGraph, node, x, dim) -> None:
    xs = _in_space(dg, x)
    if dim is None or int(dim) % _rank(node) in xs.axes:
        raise _Unsafe("softmax over the channels")
    same(dg, node, x)


def _aligned_axes(op_shape, out_shape, axes):
    shift = len(out_shape) - len(op_shape)
    return tuple(a - shift for a in axes)


def binary(dg: DepGraph, node: fx.Node) -> None:
    """Elementwise arithmetic with broadcasting: full-size operands share channels."""
    operands = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
    shape = _shape(node)
    ref = next((dg.space(a) for a in operands if dg.space(a) and _shape(a) == shape), None)
    if ref is None:
        ref = next((dg.space(a) for a in operands if dg.space(a)), None)
    if ref is None:
        raise _Unsafe("no operand with channels")
    out = dg.new_space(node, ref.axes)
    for a in operands:
        if a.op == "get_attr":
            axes = _aligned_axes(_shape(a), shape, out.axes)
            if any(ax < 0 for ax in axes):
                continue
            sizes = tuple(_shape(a)[ax] for ax in axes)
            if sizes == out.dims and len(axes) == 1:
                dg.add_slice(str(a.target), None, axes[0], out, "const")
            elif any(s != 1 for s in sizes):
                raise _Unsafe(f"constant {a.target} spans the channels unevenly")
            continue
        sp = dg.space(a)
        if sp is None:
            raise _Unsafe(f"operand {a.name} has no channel space")
        if sp.size == 1 and out.size != 1:
            continue
        if _aligned_axes(_shape(a), shape, out.axes) != sp.axes or sp.dims != out.dims:
            raise _Unsafe(f"operand {a.name} broadcasts across the channels")
        dg.tie(sp, out)


def cat(dg: DepGraph, node: fx.Node) -> None:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    dim = int(dim) % _rank(node)
    spaces = [_in_space(dg, t) for t in tensors]
    out = dg.new_space(node, spaces[0].axes)
    if dim in out.axes:
        if len(out.axes) != 1:
            raise _Unsafe("concat inside a multi-axis channel space")
        off = 0
        for sp in spaces:
            dg.tie(sp, out, ((j, off + j) for j in range(sp.size)))
            off += sp.size
    else:
        for sp in spaces:
            dg.tie(sp, out)


def split(dg: DepGraph, node: fx.Node, equal: bool) -> None:
    """split/chunk: one space per piece; a chunk must lose the same channels in every piece."""
    x = node.args[0]
    xs = _in_space(dg, x)
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim = int(dim) % len(_shape(x))
    pieces = [info for info in node.meta["sparsecc"].value]
    spaces = []
    off = 0
    for k, info in enumerate(pieces):
        sizes = tuple(int(d) if isinstance(d, int) else 0 for d in info.shape)
        sp = Space(len(dg.spaces), f"{node.name}[{k}]", xs.axes,
                   tuple(sizes[a] for a in xs.axes))
        dg.spaces.append(sp)
        dg.of_node[sp.node] = sp.id
        dg.graph.add_nodes_from((sp.id, i) for i in range(sp.size))
        if dim in xs.axes:
            if len(xs.axes) != 1:
                raise _Unsafe("split inside a multi-axis channel space")
            dg.tie(sp, xs, ((j, off + j) for j in range(sp.size)))
            off += sp.size
        else:
            dg.tie(sp, xs)
        spaces.append(sp)
    if equal and dim in xs.axes:
        for sp in spaces[1:]:
            dg.tie(spaces[0], sp)
    dg.splits[node.name] = (dim, [s.id for s in spaces])


def getitem(dg: DepGraph, node: fx.Node) -> None:
    src, idx = node.args
    piece = dg.space_by_name(f"{src.name}[{idx}]") if isinstance(idx, int) else None
    if piece is not None:
        out = dg.new_space(node, piece.axes)
        dg.tie(piece, out)
        return
    xs = _in_space(dg, src)
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(it is Ellipsis for it in items):
        raise _Unsafe("indexing with ...")
    # map input axes to output axes through ints (drop) and None (insert)
    out_axis, in_axis, mapping = 0, 0, {}
    for it in items:
        if it is None:
            out_axis += 1
            continue
        if isinstance(it, slice):
            if in_axis in xs.axes and it != slice(None):
                raise _Unsafe("slicing the channels")
            mapping[in_axis] = out_axis
            out_axis += 1
        elif isinstance(it, int):
            if in_axis in xs.axes:
                raise _Unsafe("indexing into the channels")
        else:
            raise _Unsafe("advanced indexing")
        in_axis += 1
    for rest in range(in_axis, len(_shape(src))):
        mapping[rest] = out_axis
        out_axis += 1
    out = dg.new_space(node, tuple(mapping[a] for a in xs.axes))
    dg.tie(xs, out)


def permute(dg: DepGraph, node: fx.Node, perm: list[int]) -> None:
    xs = _in_space(dg, node.args[0])
    rank = len(perm)
    perm = [p % rank for p in perm]
    axes = tuple(perm.index(a) for a in xs.axes)
    if list(axes) != sorted(axes):
        raise _Unsafe("permute reorders the channel axes")
    out = dg.new_space(node, axes)
    dg.tie(xs, out)


def reshape(dg: DepGraph, node: fx.Node) -> None:
    """view/reshape/flatten/(un)squeeze: find the channel block in the output's layout."""
    x = node.args[0]
    xs = _in_space(dg, x)
    ishape, oshape = _shape(x), _shape(node)
    a0, a1 = xs.axes[0], xs.axes[-1]
    if list(xs.axes) != list(range(a0, a1 + 1)):
        raise _Unsafe("reshape of non-adjacent channel axes")
    before = int(np.prod(ishape[:a0]))
    after = int(np.prod(ishape[a1 + 1:]))
    size = xs.size
    prefix = np.cumprod((1,) + tuple(oshape))
    # The batch axis never joins the channels (with batch 1 the sizes alone cannot tell).
    first = 1 if a0 >= 1 else 0
    starts = [b for b in range(first, len(oshape) + 1) if prefix[b] == before]
    for b0 in starts:
        # exact: the same channel block, possibly split into or merged from several axes
        for b1 in range(b0, len(oshape)):
            if int(np.prod(oshape[b0:b1 + 1])) == size and size > 1:
                out = dg.new_space(node, tuple(range(b0, b1 + 1)))
                dg.tie(xs, out)
                dg.reshapes[node.name] = out.id
                return
        # flatten: channels merged with the trailing dims into one axis
        if b0 < len(oshape) and oshape[b0] == size * after and after > 1:
            out = dg.new_space(node, (b0,))
            dg.tie(xs, out, ((c, c * after + t) for c in range(size) for t in range(after)))
            dg.reshapes[node.name] = out.id
            return
    raise _Unsafe(f"reshape {ishape} -> {oshape} moves the channels")


def reduce(dg: DepGraph, node: fx.Node) -> None:
    x = node.args[0]
    xs = _in_space(dg, x)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    rank = len(_shape(x))
    if dim is None:
        raise _Unsafe("reduction over every axis")
    dims = {int(d) % rank for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
    if dims & set(xs.axes):
        raise _Unsafe("reduction over the channels")
    axes = xs.axes if keep else tuple(a - sum(d < a for d in dims) for a in xs.axes)
    out = dg.new_space(node, axes)
    dg.tie(xs, out)


def sdpa(dg: DepGraph, node: fx.Node) -> None:
    """Attention couples q with k index by index, and each head of q, k, v as a whole."""
    q, k, v = (node.args + (None,) * 3)[:3]
    q = q if q is not None else node.kwargs["query"]
    k = k if k is not None else node.kwargs["key"]
    v = v if v is not None else node.kwargs["value"]
    qs, ks, vs = (_in_space(dg, t) for t in (q, k, v))
    rank = _rank(node)
    if not (rank == 4 and qs.axes == ks.axes == vs.axes == (1, 3)):
        raise _Unsafe("attention without a (batch, heads, seq, dim) layout")
    heads, dq = qs.dims
    dv = vs.dims[1]
    dg.tie(qs, ks)
    out = dg.new_space(node, (1, 3))
    dg.tie(vs, out)
    for h in range(heads):
        dg.tie(qs, qs, ((h * dq, h * dq + j) for j in range(1, dq)))
        dg.tie(vs, vs, ((h * dv, h * dv + j) for j in range(1, dv)))
        dg.tie(qs, vs, [(h * dq, h * dv)])
    for sp, width in ((qs, dq), (ks, dq), (vs, dv), (out, dv)):
        dg.head_dims[sp.id] = width


def matmul(dg: DepGraph, node: fx.Node) -> None:
    """Batched a @ b (rank >= 3, equal ranks): attention written with ``@``. The batch axes
    that carry channels (heads) must match in a and b; a channel contraction axis (q's head
    dim against k's) ties a and b index by index; every channel of a batch entry (head)
    ties to that entry in the output, so a head goes whole: its q and k dims, its scores, its
    v dims and its output. b's column axis, when it carries channels (v's head dim), passes
    to the output's last axis."""
    a, b = node.args[0], node.args[1]
    sa, sb = _in_space(dg, a), _in_space(dg, b)
    r = _rank(node)
    if r < 3 or len(_shape(a)) != r or len(_shape(b)) != r:
        raise _Unsafe("matmul other than batched, equal ranks")
    batch = set(range(r - 2))
    ca, cb, nb = r - 1, r - 2, r - 1
    bat_a = tuple(x for x in sa.axes if x in batch)
    bat_b = tuple(x for x in sb.axes if x in batch)
    if (r - 2) in sa.axes or bat_a != bat_b or \
            [_shape(a)[x] for x in bat_a] != [_shape(b)[x] for x in bat_b]:
        raise _Unsafe("matmul whose channel axes do not line up")
    if set(sa.axes) - batch - {ca} or set(sb.axes) - batch - {cb, nb} or \
            (cb in sb.axes and nb in sb.axes):
        raise _Unsafe("matmul over channel axes it cannot follow")
    if (ca in sa.axes) != (cb in sb.axes):
        raise _Unsafe("matmul contracting channels against non-channels")
    nbat = int(np.prod([_shape(a)[x] for x in bat_a])) if bat_a else 1
    if not bat_a and ca not in sa.axes and nb not in sb.axes:
        raise _Unsafe("matmul with no channel axis in its output")
    out_axes = bat_a + ((r - 1,) if nb in sb.axes else ())
    if not out_axes:
        raise _Unsafe("matmul output carries no channels")
    out = dg.new_space(node, out_axes)
    da = sa.size // nbat  # channels per batch entry in a (contraction dims, or 1)
    dn = out.size // nbat  # ... in the output (b's columns, or 1)
    if ca in sa.axes:
        dg.tie(sa, sb)  # contraction: index by index
    if nb in sb.axes:
        dg.tie(sb, out)
    db = sb.size // nbat
    dg.tie(sa, out, ((h * da + i, h * dn + j) for h in range(nbat) for i in range(da)
                     for j in range(dn)))
    dg.tie(sb, out, ((h * db + i, h * dn) for h in range(nbat) for i in range(db)))
    if nbat > 1:
        for sp, width in ((sa, da), (sb, db), (out, dn)):
            dg.head_dims[sp.id] = width


def _perm_args(node: fx.Node) -> list[int]:
    dims = list(node.args[1:]) or list(node.kwargs.get("dims", []))
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = list(dims[0])
    return [int(d) for d in dims]


def _transpose_args(node: fx.Node) -> list[int]:
    rank = _rank(node)
    d0, d1 = (int(d) % rank for d in node.args[1:3])
    perm = list(range(rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return perm


FUNCTION_HANDLERS = {
    **{name: (lambda dg, n: same(dg, n, n.args[0])) for name in (
        "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
        "leaky_relu", "elu", "hardtanh", "clamp", "exp", "log", "sqrt", "rsqrt", "neg", "abs",
        "reciprocal", "sin", "cos", "cast", "max_pool2d", "avg_pool2d", "max_pool1d",
        "avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool1d", "adaptive_max_pool2d")},
    **{name: binary for name in ("add", "sub", "mul", "div", "pow", "maximum", "minimum",
                                 "rsub", "where", "masked_fill")},
    "cat": cat,
    "split": lambda dg, n: split(dg, n, equal=False),
    "chunk": lambda dg, n: split(dg, n, equal=True),
    "getitem": getitem,
    "permute": lambda dg, n: permute(dg, n, _perm_args(n)),
    "transpose": lambda dg, n: permute(dg, n, _transpose_args(n)),
    "reshape": reshape,
    "mean": reduce, "sum": reduce, "amax": reduce,
    "softmax": lambda dg, n: softmax_like(dg, n, n.args[0], n.args[1] if len(n.args) > 1
                                          else n.kwargs.get("dim")),
    "sdpa": sdpa,
    "matmul": matmul,
}
