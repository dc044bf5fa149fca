"""Choose a storage format (dense, CSR, BSR RxC, N:M) per linear/conv2d op.

Requires: a plan whose linear/conv2d ops hold a dense ``weight`` param. Guarantees: every such op
has ``attrs['density']``, ``attrs['est_us']`` ({format: estimated microseconds}) and, with
``autotune``, ``attrs['measured_us']``; the chosen format's params replace ``weight`` (with
``attrs['weight_shape']`` to unpack them); CSR ops chosen for pattern-specialised LLVM
kernels have ``attrs['specialize']`` (True: any; "spmv": the one-row kernel only). Weight
values are never changed. Idempotent.

Policy: the candidates are the formats the weight fits without padding zeros (see
``formats.pack.candidates``); the analytic model (``formats.cost``) ranks them at ``batch``;
with ``autotune`` every candidate the model puts within ``tune_margin`` of the best is timed on
this machine and the fastest wins (cached on disk). Dense stays dense when it is faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsecc.formats import cost
from sparsecc.formats.csr import density
from sparsecc.formats.pack import candidates, pack, stored_values
from sparsecc.ir.plan import ExecutionPlan, Op, resolve_shape
from sparsecc.passes.registry import PassResult, register_pass
from sparsecc.runtime.ops.sparse import Shift

WEIGHTED = ("linear", "conv2d")
FORMAT_CHOICES = ("auto", "dense", "csr")


@dataclass(frozen=True)
class SelectFormatOptions:
    # Above this density a layer stays in the dense format whatever the model or ``force`` say
    # (1.0: the model decides; dense weights may run faster as BSR 8x1 than through BLAS).
    csr_max_density: float = 1.0
    autotune: bool = False
    batch: int = 0  # the batch the choice is made for; 0: the plan's example batch
    tune_margin: float = 3.0  # time candidates estimated within this factor of the best
    backend: str = "llvm"  # "llvm" | "numba": kernels for sparse formats
    force: str = "auto"  # "auto" | a format for every eligible layer (benchmarks, tests)
    blocked: bool = True  # consider BSR and N:M when the weight fits them
    # Pattern-specialised LLVM kernels for CSR layers (codegen/llvm/emit_specialized.py).
    # "auto": only where they win without measuring — linears that run one input row at the
    # plan's batch get the specialised SpMV (1.2x the generic gather kernel while its code,
    # ~5-9 bytes per nonzero, stays in L2; ~10-25 s of compile per million nonzeros), at most
    # ``specialize_spmv_max_nnz`` nonzeros per layer and ``specialize_spmv_budget_kb`` of
    # code + values per plan (see _SpmvBudget); other batches run generic kernels.
    # True: every CSR layer within ``specialize_max_nnz`` (the SpMM kind compiles at ~0.1 ms
    # per nonzero and wins or loses by layer: see docs/bench/kernels/llvm_specialized.md; with
    # ``autotune`` kept only where it measures >= 5 % faster). False: never.
    specialize: bool | str = "auto"
    specialize_max_nnz: int = 20000
    specialize_spmv_max_nnz: int = 64_000
    specialize_spmv_budget_kb: int = 0  # "auto": their code + values together; 0: 3/4 of L2

    def __post_init__(self):
        if not 0.0 <= self.csr_max_density <= 1.0:
            raise ValueError(f"csr_max_density={self.csr_max_density} is not in [0, 1]")
        if self.backend not in ("llvm", "numba"):
            raise ValueError(f"backend={self.backend!r}: expected 'llvm' or 'numba'")
        if min(self.specialize_max_nnz, self.specialize_spmv_max_nnz,
               self.specialize_spmv_budget_kb) < 0:
            raise ValueError("specialize_max_nnz, specialize_spmv_max_nnz and "
                             "specialize_spmv_budget_kb must be >= 0")
        if self.specialize not in (True, False, "auto"):
            raise ValueError(f"specialize={self.specialize!r}: expected true, false or 'auto'")
        if self.batch < 0 or self.tune_margin < 1.0:
            raise ValueError("batch must be >= 0 and tune_margin >= 1")
        if self.force != "auto":
            from sparsecc.ir.rules import PlanInvalid, parse_fmt

            try:
                parse_fmt(self.force)  # the runtime's bounds: R, C >= 1; 1 <= N <= M <= 255
            except PlanInvalid:
                raise ValueError(f"force={self.force!r}: expected auto, dense, csr, bsrRxC "
                                 "(R, C >= 1) or nmN:M (1 <= N <= M)") from None


@register_pass("select-format", options=SelectFormatOptions, level="plan")
def select_format(plan: ExecutionPlan, opts: SelectFormatOptions) -> PassResult:
    """Pick a format per linear/conv2d op; writes params and attrs (see module doc)."""
    changed = False
    batch = opts.batch or plan.example_batch
    budget = _SpmvBudget(opts)
    for op in plan.ops:
        if op.kind not in WEIGHTED or op.attrs.get("fmt") != "dense":
            continue
        w = plan.constants[op.params["weight"]]
        op.attrs["density"] = round(density(w), 6)
        op.attrs["backend"] = opts.backend
        if int(op.attrs.get("groups", 1)) != 1:
            continue  # grouped / depthwise convs run dense kernels
        fmt = _choose(plan, op, w, batch, opts)
        if fmt != "dense":
            _to_sparse(plan, op, w, fmt)
            changed = True
            if fmt == "csr" and opts.backend == "llvm":
                _maybe_specialize(plan, op, batch, opts, budget)
    if changed:
        _drop_unused_constants(plan)
    return PassResult(plan, changed)


def layer_geom(op: Op, in_shape, out_shape) -> cost.LayerGeom:
    if op.kind == "linear":
        m = int(np.prod(in_shape[:-1]))
        return cost.LayerGeom(rows=int(out_shape[-1]), k=int(in_shape[-1]), n=1, L=m)
    kh, kw = (int(v) for v in op.attrs["kernel"])
    stride = tuple(int(v) for v in op.attrs["stride"])
    n, cin = int(in_shape[0]), int(in_shape[1])
    ho, wo = int(out_shape[2]), int(out_shape[3])
    kxk = (kh, kw) != (1, 1) or stride != (1, 1) or any(int(p) for p in op.attrs["padding"])
    shift = Shift.of(op, out_shape)
    return cost.LayerGeom(rows=int(out_shape[1]), k=cin * kh * kw, n=n, L=ho * wo,
                          conv_kxk=kxk, shift_waste=(shift.wq - wo) / max(wo, 1),
                          planes=cin * shift.phases * shift.plane, conv=True)


def _choose(plan: ExecutionPlan, op: Op, w: np.ndarray, batch: int,
            opts: SelectFormatOptions) -> str:
    w2 = w.reshape(w.shape[0], -1)
    in_shape = resolve_shape(plan.tensors[op.inputs[0]].shape, batch)
    out_shape = resolve_shape(plan.tensors[op.output].shape, batch)
    if op.attrs["density"] > opts.csr_max_density:
        return "dense"
    g = layer_geom(op, in_shape, out_shape)
    kxk = op.kind == "conv2d" and tuple(int(v) for v in op.attrs["kernel"]) != (1, 1)
    cands = candidates(w2, conv_kxk=kxk) if opts.blocked else ["dense", "csr"]
    if opts.force != "auto":
        return opts.force if opts.force in cands or opts.force in ("dense", "csr") else "csr"
    from sparsecc.codegen.llvm.jit import host
    from sparsecc.formats import calibrate
    from sparsecc.runtime.ops.sparse import llvm_available, threads

    vw = host().vector_width if llvm_available() else 8
    nthreads = threads()
    rates = calibrate.rates_for(nthreads)  # this machine's, measured once and cached
    est = {f: cost.estimate(f, g, stored_values(f, w2), nthreads, vw, rates) for f in cands}
    if opts.backend == "numba":  # the numba kernels run every sparse format as CSR, slower
        est = {f: (t if f == "dense" else est["csr"] * 3.0) for f, t in est.items()}
    if "dense" in est and _expand_inside(plan, op, g, op.attrs["density"]):
        # sparse, it is computed inside the depthwise conv after it: its output never goes
        # through memory (dense it is written, then read back)
        est["dense"] += 2 * g.n * g.rows * g.L * 4 / (cost.COPY_BYTES * nthreads)
    op.attrs["est_us"] = {f: round(t * 1e6, 3) for f, t in est.items()}
    best = min(est, key=est.get)
    if not opts.autotune:
        return best
    close = [f for f in est if est[f] <= est[best] * opts.tune_margin or f == "dense"]
    from sparsecc.runtime import autotune

    bias = plan.constants[op.params["bias"]] if "bias" in op.params else None
    packed = {f: pack(f, w2) for f in close}
    attrs = dict(op.attrs, weight_shape=[int(d) for d in w.shape])
    probe = Op(op.kind, op.name, op.inputs, op.output, attrs, {}, op.layer)
    for f, params in packed.items():
        if f == "dense":
            params["weight"] = w
    measured = autotune.measure_formats(probe, w2, packed, bias, in_shape, out_shape,
                                        nthreads, host().key if llvm_available() else "numba")
    op.attrs["measured_us"] = {f: round(t * 1e6, 3) for f, t in measured.items()}
    return min(measured, key=measured.get)


def _expand_inside(plan: ExecutionPlan, op: Op, g: cost.LayerGeom, dens: float) -> bool:
    """Whether ``op``, sparse, would be an expand conv the native lowering computes inside
    the depthwise conv that alone reads its output (native.lower's _expand_reader, its
    weight and size by the same lower.expand_inside)."""
    from sparsecc.native import lower

    a = op.attrs
    if op.kind != "conv2d" or g.conv_kxk or op.output in plan.outputs:
        return False
    readers = [o for o in plan.ops if op.output in o.inputs]
    if len(readers) != 1 or readers[0].kind != "conv2d" or \
            readers[0].inputs[0] != op.output or a.get("act", "none") not in \
            ("none", "relu", "clamp"):
        return False
    groups = int(readers[0].attrs.get("groups", 1))
    return groups == g.rows and groups >= 2 and lower.expand_inside(dens, g.rows, g.L)


class _SpmvBudget:
    """How much L2 the specialised SpMVs of one plan may fill together. Each layer alone
    wins while its code stays in L2 (bench/llvm_specialized.py: 1024^2 at 90 % 1.2x the
    generic kernel), but a forward pass runs its layers one after another and they evict each
    other. Measured on an MLP of three 1024^2 layers at batch 1 (2 MB L2): at 90 % (0.55 MB
    of code + 0.4 MB of values per layer) specialising all three cost 0.080 vs 0.071 ms, two
    0.066 vs 0.063, one 0.067 vs 0.064 — hence the 64k-nonzero cap per layer; at 95 % two
    of them (the budget stops the third) 0.044 vs 0.046, at 98 % all three 0.032 vs 0.035."""

    def __init__(self, opts: SelectFormatOptions):
        kb = opts.specialize_spmv_budget_kb
        self.left = kb * 1024 if kb else cost.l2_bytes() * 3 // 4

    def take(self, nnz: int, rows: int) -> bool:
        from sparsecc.codegen.llvm.emit_specialized import spmv_code_bytes

        need = spmv_code_bytes(nnz, rows) + 4 * nnz  # + the values it streams
        if need > self.left:
            return False
        self.left -= need
        return True


def _maybe_specialize(plan: ExecutionPlan, op: Op, batch: int, opts: SelectFormatOptions,
                      budget: _SpmvBudget):
    """Mark a CSR op for pattern-specialised kernels (``attrs['specialize']``: True, or "spmv"
    for the one-row kernel only) when ``opts.specialize`` asks for them, the layer is within
    the compile budget (and, for "auto", the plan's L2 budget) and (with autotune) they
    measure faster than the generic kernel."""
    nnz = int(plan.constants[op.params["data"]].shape[0])
    in_shape = resolve_shape(plan.tensors[op.inputs[0]].shape, batch)
    if opts.specialize == "auto":
        one_row = op.kind == "linear" and int(np.prod(in_shape[:-1])) == 1
        flag, cap = "spmv", (opts.specialize_spmv_max_nnz if one_row else 0)
    else:
        flag, cap = opts.specialize, opts.specialize_max_nnz
    if opts.specialize is False:  # never, not even the native library's grouped kernels
        op.attrs["specialize"] = False
    if not flag or nnz == 0 or nnz > cap:
        return
    if flag == "spmv" and not budget.take(nnz, len(plan.constants[op.params["indptr"]]) - 1):
        return
    if not opts.autotune:
        op.attrs["specialize"] = flag
        return
    from sparsecc.codegen.llvm.jit import host
    from sparsecc.codegen.llvm.kernels import pattern_hash
    from sparsecc.runtime import autotune
    from sparsecc.runtime.ops.sparse import threads

    out_shape = resolve_shape(plan.tensors[op.output].shape, batch)
    params = {role: plan.constants[name] for role, name in op.params.items()}
    pat = pattern_hash(params["indptr"], params["indices"])
    variants = {}
    for name, attr in (("csr", False), ("csr-specialized", flag)):
        probe = Op(op.kind, op.name, op.inputs, op.output, dict(op.attrs, specialize=attr),
                   {}, op.layer)
        key = autotune.layer_key(probe, pat, in_shape, out_shape, name, threads(), host().key,
                                 "bias" in params)
        variants[name] = (key, probe, params)
    timed = autotune.measure_variants(variants, in_shape, out_shape)
    op.attrs["measured_us"] = dict(op.attrs.get("measured_us", {}),
                                   **{k: round(t * 1e6, 3) for k, t in timed.items()})
    if timed["csr-specialized"] < 0.95 * timed["csr"]:
        op.attrs["specialize"] = flag


def _to_sparse(plan: ExecutionPlan, op: Op, w: np.ndarray, fmt: str) -> None:
    base = op.params.pop("weight")
    for role, arr in pack(fmt, w.reshape(w.shape[0], -1)).items():
        name = f"{base}.{role}"
        plan.add_constant(name, arr)
        op.params[role] = name
    op.attrs["fmt"] = fmt
    op.attrs["weight_shape"] = [int(d) for d in w.shape]


def _drop_unused_constants(plan: ExecutionPlan) -> None:
    used = {n for op in plan.ops for n in list(op.inputs) + list(op.params.values())}
    used |= set(plan.outputs)
    for name in list(plan.constants):
        if name not in used:
            del plan.constants[name]
            plan.tensors.pop(name, None)
