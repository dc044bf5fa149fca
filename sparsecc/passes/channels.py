"""Structured channel removal: a smaller model with the same output shapes.

Requires: an nn.Module and example inputs (it is traced). Guarantees: a new GraphModule (the
input untouched) in which, per channel group, ``round(ratio * units)`` units are gone (kept
counts rounded to ``round_to``, never below ``min_channels``); units that are dead (their
producers' weights and biases zero) are removed without changing any output.
"""

from __future__ import annotations

import copy
import fnmatch
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsecc.errors import PassError
from sparsecc.frontend import capture
from sparsecc.passes.registry import PassResult, register_pass
from sparsecc.structured import depgraph, removal

IMPORTANCE = ("l1", "l2", "bn_scale", "taylor", "activation", "random")


@dataclass(frozen=True)
class ChannelOptions:
    ratio: float = 0.5
    importance: str = "l1"
    scope: str = "layer"  # "layer": ratio per group; "global": one ranking over all groups
    round_to: int = 1
    exclude: tuple[str, ...] = ()  # modules whose output channels stay
    min_channels: int = 1
    allow_inexact: bool = False  # also prune channels a layer_norm normalises over
    # per-group ratios: a glob over the group's producing layers -> its ratio (first match;
    # scope="layer"), e.g. {"*.intermediate.dense": 0.5, "*.attention.self.*": 0.25}
    overrides: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    calibration: Iterable[Any] | None = None
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None
    example_inputs: Any = None

    def __post_init__(self):
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) \
                or not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio={self.ratio!r} must be a number in [0, 1)")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"importance={self.importance!r}: choose from {IMPORTANCE}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope={self.scope!r} must be 'layer' or 'global'")
        for name in ("round_to", "min_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")
        object.__setattr__(self, "exclude", tuple([self.exclude] if isinstance(
            self.exclude, str) else self.exclude))
        if self.overrides:
            if not isinstance(self.overrides, Mapping):
                raise ValueError(f"overrides={self.overrides!r} must be a dict of glob -> ratio")
            if self.scope != "layer":
                raise ValueError("overrides need scope='layer' (one ratio per group)")
            for pat, r in self.overrides.items():
                if not isinstance(pat, str) or isinstance(r, bool) or \
                        not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                    raise ValueError(f"overrides[{pat!r}]={r!r} must be a ratio in [0, 1)")


@dataclass
class GroupReport:
    """One channel group; params and FLOPs are those of its producing layers."""

    name: str
    units_before: int
    units_after: int
    channels_before: int
    channels_after: int
    params_before: int = 0
    params_after: int = 0
    flops_before: float = 0.0
    flops_after: float = 0.0


@dataclass
class ChannelReport:
    groups: list[GroupReport]
    skipped: list[str]
    params_before: int
    params_after: int
    flops_before: float
    flops_after: float
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"params {self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_after / max(self.params_before, 1):.1%}), FLOPs "
                 f"{self.flops_before / 1e6:.1f}M -> {self.flops_after / 1e6:.1f}M",
                 "group | channels | params of its layers | MFLOPs of its layers"]
        lines += [f"{g.name} | {g.channels_before} -> {g.channels_after} | {g.params_before:,}"
                  f" -> {g.params_after:,} | {g.flops_before / 1e6:.1f} -> "
                  f"{g.flops_after / 1e6:.1f}" for g in self.groups]
        lines += [f"left alone: {s}" for s in self.skipped]
        return "\n".join(lines)


def _importance(dg: depgraph.DepGraph, opts: ChannelOptions) -> dict:
    """Score per (space, index): summed over the producer parameters of that channel."""
    if opts.importance == "activation":
        return _activation_scores(dg, opts)
    score = {sp.id: np.zeros(sp.size) for sp in dg.spaces}
    grads = _taylor_grads(dg, opts) if opts.importance == "taylor" else {}
    rng = np.random.default_rng(opts.seed)
    for s in dg.slices:
        if opts.importance == "bn_scale":
            if s.role != "norm" or s.name != "weight":
                continue
        elif s.role != "out":
            continue
        t = _param(dg, s)
        if opts.importance == "taylor":
            g = grads.get((s.owner, s.name))
            t = (t * g).abs() if g is not None else torch.zeros_like(t)
        elif opts.importance == "l2":
            t = t * t
        else:
            t = t.abs()
        score[s.space] += _per_index(t, s.dim)
    if opts.importance == "random":
        score = {k: rng.random(v.shape) for k, v in score.items()}
    return score


def _activation_scores(dg: depgraph.DepGraph, opts: ChannelOptions) -> dict:
    """Per channel: its mean |activation| over the calibration inputs times the L1 norm of the
    consumer weights that read it (a Linear's input column, a conv's input channel), summed
    over the consumers: what removing it takes out of the next layer's input. For a pruned
    transformer's FFN neurons and heads this keeps far more of the model than the weights'
    own magnitude (MiniLM, 25 % of heads and 50 % of FFN neurons removed: sentence-embedding
    cosine to the dense model 0.70 vs 0.61 for l1)."""
    import torch.fx as fx

    if opts.calibration is None:
        raise PassError("channels", "importance='activation' needs calibration inputs")
    read = {s.space for s in dg.slices if s.role == "in"}
    node_space = {dg.spaces[sid].node: sid for sid in read}
    sums: dict[int, np.ndarray] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            sid = node_space.get(n.name)
            if sid is not None and isinstance(out, torch.Tensor):
                sp = dg.spaces[sid]
                dims = [d for d in range(out.dim()) if d not in sp.axes]
                v = out.detach().abs().double().mean(dim=dims).reshape(-1).numpy()
                sums[sid] = sums.get(sid, 0.0) + v
            return out

    with torch.no_grad():
        for batch in opts.calibration:
            Recorder(dg.gm).run(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
    score = {sp.id: np.zeros(sp.size) for sp in dg.spaces}
    for s in dg.slices:
        if s.role != "in" or s.space not in sums:
            continue
        score[s.space] += sums[s.space] * _per_index(_param(dg, s).abs(), s.dim)
    return score


def _param(dg: depgraph.DepGraph, s) -> torch.Tensor:
    """The parameter (or buffer, or constant) a ParamSlice names, detached, in float64."""
    obj, attr = removal._get(dg.gm, s.owner, s.name)
    return getattr(obj, attr).detach().double()


def _per_index(t: torch.Tensor, dim: int) -> np.ndarray:
    """``t`` summed over every dim but ``dim``: one value per channel index."""
    dims = [d for d in range(t.dim()) if d != dim]
    return t.sum(dim=dims).numpy() if dims else t.numpy()


def _taylor_grads(dg, opts: ChannelOptions) -> dict:
    if opts.calibration is None or opts.loss_fn is None:
        raise PassError("channels", "importance='taylor' needs calibration and loss_fn")
    gm = dg.gm
    gm.zero_grad(set_to_none=True)
    for batch in opts.calibration:
        opts.loss_fn(gm, batch).backward()
    out = {}
    for s in dg.slices:
        obj, attr = removal._get(gm, s.owner, s.name)
        t = getattr(obj, attr)
        if isinstance(t, nn.Parameter) and t.grad is not None:
            out[(s.owner, s.name)] = t.grad.detach().double()
    gm.zero_grad(set_to_none=True)
    return out


def _groups(dg: depgraph.DepGraph, opts: ChannelOptions):
    """Removable units grouped by the set of spaces they touch; plus what was left alone."""
    locked = dict(dg.locks)
    if not opts.allow_inexact:
        locked.update(dg.inexact)
    groups: dict[frozenset, list] = defaultdict(list)
    skipped: dict[str, int] = defaultdict(int)
    for unit in dg.units():
        spaces = frozenset(sid for sid, _ in unit)
        why = next((locked[s] for s in spaces if s in locked), None)
        if why is not None:
            skipped[why] += 1
            continue
        if not any(sl.space in spaces and sl.role == "out" for sl in dg.slices):
            skipped["no producing layer"] += 1
            continue
        groups[spaces].append(unit)
    return groups, [f"{why} ({n} channel unit(s))" for why, n in skipped.items()]


def _group_name(dg, spaces) -> str:
    owners = sorted({s.owner for s in dg.slices if s.space in spaces and s.role == "out"})
    return ", ".join(owners) if len(owners) <= 3 else f"{owners[0]}, ... ({len(owners)} layers)"


def _keep_count(n: int, ratio: float, opts: ChannelOptions) -> int:
    keep = n - int(round(ratio * n))
    if opts.round_to > 1 and n >= opts.round_to:
        keep = max(opts.round_to, int(round(keep / opts.round_to)) * opts.round_to)
    return int(min(n, max(keep, opts.min_channels, 1)))


def _group_ratio(dg, spaces, opts: ChannelOptions) -> float:
    """opts.ratio, or the first override whose glob matches one of the group's producers."""
    if not opts.overrides:
        return opts.ratio
    owners = sorted({s.owner for s in dg.slices if s.space in spaces and s.role == "out"})
    for pat, r in opts.overrides.items():
        if any(fnmatch.fnmatchcase(o, pat) for o in owners):
            return float(r)
    return opts.ratio


def choose_removed(dg, groups, opts: ChannelOptions, score) -> list:
    ranked = {}
    for spaces, units in groups.items():
        s = np.array([sum(score[sid][i] for sid, i in u) for u in units])
        ranked[spaces] = (units, s)
    removed = []
    if opts.scope == "layer":
        for spaces, (units, s) in ranked.items():
            keep = _keep_count(len(units), _group_ratio(dg, spaces, opts), opts)
            order = np.argsort(s, kind="stable")
            removed += [units[i] for i in order[:len(units) - keep]]
        return removed
    # global: importance normalised per group, one ranking, per-group floors respected
    pool = []
    for key, (units, s) in ranked.items():
        norm = s / (s.mean() + 1e-12)
        pool += [(norm[i], key, i) for i in range(len(units))]
    pool.sort(key=lambda t: t[0])
    budget = int(round(opts.ratio * len(pool)))
    left = {k: len(u) for k, (u, _) in ranked.items()}
    floor = {k: _keep_count(len(u), 0.999, opts) for k, (u, _) in ranked.items()}
    for _, key, i in pool:
        if budget == 0:
            break
        if left[key] > floor[key]:
            removed.append(ranked[key][0][i])
            left[key] -= 1
            budget -= 1
    return removed


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _layer_costs(gm, example) -> dict[str, tuple[int, float]]:
    """(params, FLOPs) per conv/linear module at the example input."""
    cap = capture(gm, example, dynamic_batch=False)
    out = {}
    for node in cap.gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = cap.gm.get_submodule(node.target)
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            flops = 2.0 * float(np.prod(depgraph._shape(node))) * mod.weight[0].numel()
            prev = out.get(str(node.target), (0, 0.0))
            out[str(node.target)] = (_params(mod), prev[1] + flops)
    return out


@register_pass("channels", options=ChannelOptions, level="module")
def channels_pass(model: nn.Module, opts: ChannelOptions) -> PassResult:
    """Remove the least important channels of every prunable group; returns a smaller model."""
    if opts.example_inputs is None:
        raise PassError("channels", "example_inputs are required (the model is traced)")
    cap = capture(copy.deepcopy(model), opts.example_inputs, dynamic_batch=False)
    gm = cap.gm
    dg = depgraph.build(gm)
    for name in opts.exclude:
        for s in dg.slices:
            if s.owner == name or s.owner.startswith(name + "."):
                if s.role == "out":
                    dg.lock(dg.spaces[s.space], f"{name}: excluded")
    groups, skipped = _groups(dg, opts)
    score = _importance(dg, opts)
    removed = choose_removed(dg, groups, opts, score)
    keep = removal.keep_masks(dg, removed)
    before_params = _params(gm)
    costs_before = _layer_costs(gm, opts.example_inputs)
    with torch.no_grad():
        ref_shapes = _out_shapes(gm, opts.example_inputs)
    removal.apply(dg, keep)
    try:
        with torch.no_grad():
            new_shapes = _out_shapes(gm, opts.example_inputs)
    except Exception as exc:
        raise PassError("channels", f"the smaller model does not run: {type(exc).__name__}: "
                                    f"{exc}") from None
    if new_shapes != ref_shapes:
        raise PassError("channels", f"output shapes changed: {ref_shapes} -> {new_shapes}")
    costs_after = _layer_costs(gm, opts.example_inputs)
    reports = []
    for spaces, units in groups.items():
        gone = sum(1 for u in removed if frozenset(sid for sid, _ in u) == spaces)
        first = min(spaces)
        width = dg.spaces[first].size // max(len(units), 1)
        owners = {s.owner for s in dg.slices if s.space in spaces and s.role == "out"}
        pb, fb = (sum(costs_before.get(o, (0, 0.0))[i] for o in owners) for i in (0, 1))
        pa, fa = (sum(costs_after.get(o, (0, 0.0))[i] for o in owners) for i in (0, 1))
        reports.append(GroupReport(_group_name(dg, spaces), len(units), len(units) - gone,
                                   dg.spaces[first].size, dg.spaces[first].size - gone * width,
                                   pb, pa, fb, fa))
    report = ChannelReport(reports, skipped, before_params, _params(gm),
                           sum(f for _, f in costs_before.values()),
                           sum(f for _, f in costs_after.values()))
    gm.channel_report = report
    return PassResult(gm, bool(removed), [str(report)])


def _out_shapes(gm, example):
    """Shapes of every output tensor (nested tuples, lists and dicts: a Hugging Face model's
    ModelOutput comes back as a dict)."""
    from torch.utils._pytree import tree_leaves

    xs = example if isinstance(example, (tuple, list)) else (example,)
    out = gm(*xs)
    return [tuple(o.shape) for o in tree_leaves(out) if isinstance(o, torch.Tensor)]
