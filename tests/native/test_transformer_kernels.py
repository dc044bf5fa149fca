"""The LLVM transpose, attention and layer-norm kernels called directly, at the host's vector
width and at AVX2's (an object built for haswell), against numpy; and through compile against
torch (attention, the head permutes fused into the linears, add + layer norm). Shapes off
every vector and tile multiple, masks with dead keys, dead rows and strides 0/1/other."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from llvmlite import ir

import sparsecc
from sparsecc.codegen.llvm import emit_specialized as ES
from sparsecc.codegen.llvm import jit
from sparsecc.native import attention as NA
from sparsecc.native import norm as NM
from sparsecc.native import transpose as TRN
from tests.conftest import assert_matches

HASWELL = jit.Host("haswell", "+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,"
                              "-avx512f,-avx512bw,-avx512dq,-avx512vl")
WIDTHS = sorted({jit.host().vector_width, 8})
FN = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
_CACHE: dict = {}


def _kernel(spec):
    if spec not in _CACHE:
        mod = ir.Module("k_test")
        spec.emit(mod, "k")
        h = HASWELL if spec.vw == 8 else None
        obj = jit.compile_ir(ES.module_text(mod), h=h)
        _CACHE[spec] = FN(jit.load_object(obj, ["k"])["k"])
    return _CACHE[spec]


@pytest.mark.parametrize("vw", WIDTHS)
def test_transpose_odd_shapes_and_strides(vw, rng):
    f = _kernel(TRN.TransposeSpec(vw))
    for m, k, ls_pad, ld_pad in [(1, 1, 0, 0), (1, 17, 3, 0), (16, 16, 0, 0), (33, 70, 5, 16),
                                 (128, 384, 0, 16), (65, 64, 0, 1), (200, 3, 1, 2)]:
        src = rng.standard_normal((m, k + ls_pad)).astype(np.float32)
        dst = np.full((k, m + ld_pad), np.nan, np.float32)
        args = np.array([src.ctypes.data, dst.ctypes.data, m, k, k + ls_pad, m + ld_pad,
                         1, 0, 0, 0, 0], np.int64)
        f(0, TRN.tiles(m, k), args.ctypes.data)
        np.testing.assert_array_equal(dst[:, :m], src[:, :k].T)
        assert np.isnan(dst[:, m:]).all()  # the row padding is not written


@pytest.mark.parametrize("vw", WIDTHS)
def test_transpose_blocks(vw, rng):
    """The batched form: a features x batch (H*D, B*S) buffer into (B, H, S, D), and back."""
    f = _kernel(TRN.TransposeSpec(vw))
    for B, S, H, D in [(1, 1, 1, 1), (2, 7, 3, 5), (3, 128, 2, 32), (2, 33, 4, 17)]:
        ld = B * S + 16
        kn = rng.standard_normal((H * D, ld)).astype(np.float32)
        heads = np.full((B, H, S, D), np.nan, np.float32)
        args = np.array([kn.ctypes.data, heads.ctypes.data, D, S, ld, D, H, S, D * ld,
                         H * S * D, S * D], np.int64)
        f(0, B * H * TRN.tiles(D, S), args.ctypes.data)
        want = kn[:, :B * S].reshape(H, D, B, S).transpose(2, 0, 3, 1)
        np.testing.assert_array_equal(heads, want)
        back = np.full((H * D, ld), np.nan, np.float32)
        args = np.array([heads.ctypes.data, back.ctypes.data, S, D, D, ld, H, H * S * D,
                         S * D, S, D * ld], np.int64)
        f(0, B * H * TRN.tiles(S, D), args.ctypes.data)
        np.testing.assert_array_equal(back[:, :B * S], kn[:, :B * S])


def _reference(q, k, v, mask, kind, causal, scale):
    """softmax(q k^T scale + mask) v in float64; rows with every key at -inf give 0."""
    s = np.einsum("hld,hsd->hls", q.astype(np.float64), k.astype(np.float64)) * scale
    if kind == NA.MASK_ADD:
        s = s + mask
    elif kind == NA.MASK_KEEP:
        s = np.where(mask, s, -np.inf)
    if causal:
        L, S = s.shape[1:]
        s = np.where(np.arange(S)[None, :] > np.arange(L)[:, None], -np.inf, s)
    m = s.max(-1, keepdims=True)
    dead = np.isneginf(m)
    p = np.exp(s - np.where(dead, 0.0, m))
    p = p / np.where(dead, 1.0, p.sum(-1, keepdims=True))
    return np.einsum("hls,hse->hle", p, v.astype(np.float64))


def _features_x_tokens(t, B, ld):
    """(A*B, n, D) heads -> a sparse linear's (B*D rows, A*n tokens + padding) output, rows
    ld floats apart, the padding NaN (the layout attention's q_kn / k_kn read)."""
    AB, n, D = t.shape
    A = AB // B
    buf = np.full((B * D, ld), np.nan, np.float32)
    buf[:, :A * n] = t.reshape(A, B, n, D).transpose(1, 3, 0, 2).reshape(B * D, A * n)
    return buf


def _run_attention(vw, q, k, v, mask, kind, causal, scale, B, mstrides, q_kn=False,
                   k_kn=False):
    H, L, D = q.shape
    S, E = v.shape[1:]
    spec = NA.AttentionSpec(vw, D, E, S, kind, causal, q_kn, k_kn)
    f = _kernel(spec)
    out = np.full((H, L, E), np.nan, np.float32)
    per = spec.scratch_floats()
    scratch = np.full(per, np.nan, np.float32)
    nblk = -(-L // NA.QB)
    args = np.zeros(NA.N_SLOTS, np.int64)
    A = H // B
    if q_kn:
        args[NA.S_QLD] = A * L + 16
        q = _features_x_tokens(q, B, A * L + 16)
    if k_kn:
        args[NA.S_KLD] = A * S + 16
        k = _features_x_tokens(k, B, A * S + 16)
    for slot, arr in ((NA.S_Q, q), (NA.S_K, k), (NA.S_V, v), (NA.S_OUT, out),
                      (NA.S_SCRATCH, scratch)):
        args[slot] = arr.ctypes.data
    args[NA.S_MASK] = mask.ctypes.data if mask is not None else scratch.ctypes.data
    args[NA.S_B], args[NA.S_L], args[NA.S_NBLK] = B, L, nblk
    args[[NA.S_MSA, NA.S_MSB, NA.S_MSI, NA.S_MSJ]] = mstrides
    args[NA.S_SCALE] = np.array([scale], np.float64).view(np.int64)[0]
    args[NA.S_PER], args[NA.S_THREADS] = per, 1
    f(0, H * nblk, args.ctypes.data)
    return out


@pytest.mark.parametrize("vw", WIDTHS)
@pytest.mark.parametrize("kind", [NA.MASK_NONE, NA.MASK_ADD, NA.MASK_KEEP])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kn", [False, True], ids=["heads", "qk_kn"])
def test_attention_kernel(vw, kind, causal, kn, rng):
    """kn: q and k read from a sparse linear's features x tokens output (NaN row padding,
    the next sample's tokens past S)."""
    for A, B, L, S, D, E in [(1, 1, 1, 1, 1, 1), (1, 12, 128, 128, 32, 32), (2, 3, 37, 45, 17, 19),
                             (1, 2, 65, 33, 40, 24), (2, 1, 5, 70, 64, 8), (1, 1, 33, 16, 16, 16)]:
        H = A * B
        q = rng.standard_normal((H, L, D)).astype(np.float32)
        k = rng.standard_normal((H, S, D)).astype(np.float32)
        v = rng.standard_normal((H, S, E)).astype(np.float32)
        scale = 1.0 / math.sqrt(D)
        mask, mstr, full = None, [0, 0, 0, 0], None
        if kind != NA.MASK_NONE:
            # per (a, L, S), broadcast over b: strides a, b=0, i, j=1
            if kind == NA.MASK_ADD:
                mask = rng.standard_normal((A, L, S)).astype(np.float32)
                mask[..., S * 3 // 4:] = np.finfo(np.float32).min  # padding keys
                mask[0, 0, :] = -1e38  # a row with no live key: softmax over all of them
            else:
                mask = rng.random((A, L, S)) > 0.4
                mask[..., S - S // 4:] = False
                mask[0, L // 2, :] = False  # a row with no key: 0
            mstr = [L * S, 0, S, 1]
            full = np.repeat(mask, B, axis=0)
        out = _run_attention(vw, q, k, v, mask, kind, causal, scale, B, mstr, kn, kn)
        ref = _reference(q, k, v, full, kind, causal, scale)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5,
                                   err_msg=f"{(A, B, L, S, D, E)}")


@pytest.mark.parametrize("vw", WIDTHS)
def test_attention_mask_strides(vw, rng):
    """A key-broadcast mask (stride 0 along keys: a gather) and a transposed one (stride L)."""
    H, L, S, D, E = 2, 20, 27, 8, 8
    q, k = (rng.standard_normal((H, n, D)).astype(np.float32) for n in (L, S))
    v = rng.standard_normal((H, S, E)).astype(np.float32)
    col = rng.standard_normal((H, L)).astype(np.float32)
    out = _run_attention(vw, q, k, v, col, NA.MASK_ADD, False, 0.3, 1, [L, 0, 1, 0])
    ref = _reference(q, k, v, np.repeat(col[:, :, None], S, 2), NA.MASK_ADD, False, 0.3)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)
    mt = rng.standard_normal((H, S, L)).astype(np.float32)  # stored (S, L): j stride L
    out = _run_attention(vw, q, k, v, mt, NA.MASK_ADD, False, 0.3, 1, [S * L, 0, 1, L])
    ref = _reference(q, k, v, mt.transpose(0, 2, 1), NA.MASK_ADD, False, 0.3)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)
    for q_kn, k_kn in ((True, False), (False, True)):  # one of them features x tokens
        out = _run_attention(vw, q, k, v, mt, NA.MASK_ADD, False, 0.3, H, [0, S * L, 1, L],
                             q_kn, k_kn)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


def test_attention_nan_propagates(rng):
    H, L, S, D = 1, 4, 20, 8
    q, k = (rng.standard_normal((H, n, D)).astype(np.float32) for n in (L, S))
    v = rng.standard_normal((H, S, D)).astype(np.float32)
    k[0, 3, 0] = np.nan
    out = _run_attention(jit.host().vector_width, q, k, v, None, NA.MASK_NONE, False, 1.0, 1,
                         [0, 0, 0, 0])
    assert np.isnan(out).all()


class _Attn(torch.nn.Module):
    def __init__(self, causal=False):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v, mask=None):
        if self.causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("case", ["add", "bool", "causal", "none"])
def test_attention_compiled_matches_torch(case):
    torch.manual_seed(1)
    B, H, L, S, D = 3, 4, 50, 50, 24
    q, k, v = torch.randn(B, H, L, D), torch.randn(B, H, S, D), torch.randn(B, H, S, D)
    args = [q, k, v]
    if case == "add":  # Hugging Face's padding mask, (B, 1, L, S)
        m = torch.zeros(B, 1, L, S)
        m[1, ..., 40:] = torch.finfo(torch.float32).min
        args.append(m)
    elif case == "bool":
        args.append(torch.rand(B, 1, L, S) > 0.2)
    model = _Attn(case == "causal")
    cm = sparsecc.compile(model, tuple(args))
    assert "native attention" in str(cm.report())
    # without a mask the traced SDPA pins the batch (noticed, left alone): B only
    for batch in (B,) if case in ("causal", "none") else (1, B):
        xs = [a[:batch] for a in args]
        assert_matches(cm(*xs), model(*xs))


@pytest.mark.parametrize("vw", WIDTHS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_layernorm_kernel(vw, residual, affine, rng):
    f = _kernel(NM.LayerNormSpec(vw, residual, affine, affine))
    for rows, d in [(1, 1), (3, 7), (5, 16), (4, 384), (2, 33), (0, 8)]:
        a = (rng.standard_normal((rows, d)) * 3 + 5).astype(np.float32)  # off-centre
        r = rng.standard_normal((rows, d)).astype(np.float32)
        w = rng.standard_normal(d).astype(np.float32)
        bias = rng.standard_normal(d).astype(np.float32)
        out = np.full((rows, d + 1), np.nan, np.float32)[:, :d].copy()
        args = np.array([a.ctypes.data, r.ctypes.data, out.ctypes.data, w.ctypes.data,
                         bias.ctypes.data, d, np.array([1e-5]).view(np.int64)[0]], np.int64)
        f(0, rows, args.ctypes.data)
        x = (a + r if residual else a).astype(np.float64)
        ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        if affine:
            ref = ref * w + bias
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4, err_msg=f"{rows, d}")


@pytest.mark.parametrize("vw", WIDTHS)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_layernorm_kernel_features_x_tokens(vw, residual, affine, rng):
    """The kn form: d rows of m tokens, ld floats apart; the padding past m is not written."""
    f = _kernel(NM.LayerNormSpec(vw, residual, affine, affine, kn=True))
    for m, d, pad in [(1, 1, 0), (3, 7, 16), (16, 5, 1), (37, 384, 16), (128, 33, 3),
                      (0, 8, 16)]:
        ld = m + pad
        a = (rng.standard_normal((d, ld)) * 3 + 5).astype(np.float32)  # off-centre
        r = rng.standard_normal((d, ld)).astype(np.float32)
        w = rng.standard_normal(d).astype(np.float32)
        bias = rng.standard_normal(d).astype(np.float32)
        out = np.full((d, ld), np.nan, np.float32)
        args = np.zeros(NM.N_SLOTS, np.int64)
        args[:NM.L_D] = [t.ctypes.data for t in (a, r, out, w, bias)]
        args[NM.L_D], args[NM.L_EPS] = d, np.array([1e-5]).view(np.int64)[0]
        args[NM.L_LD], args[NM.L_M] = ld, m
        f(0, -(-m // vw), args.ctypes.data)
        x = (a + r if residual else a)[:, :m].T.astype(np.float64)
        ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        if affine:
            ref = ref * w + bias
        np.testing.assert_allclose(out[:, :m].T, ref, rtol=1e-4, atol=1e-4, err_msg=f"{m, d}")
        assert np.isnan(out[:, m:]).all()


class _Block(torch.nn.Module):
    """A transformer's residual: LayerNorm(dense(x) + x), then one without affine params."""

    def __init__(self, d):
        super().__init__()
        self.dense = torch.nn.Linear(d, d)
        self.ln = torch.nn.LayerNorm(d)
        self.ln2 = torch.nn.LayerNorm(d, elementwise_affine=False)

    def forward(self, x):
        h = self.ln(self.dense(x) + x)
        return self.ln2(h + 1.0) * 2, h


@pytest.mark.parametrize("d", [1, 24, 37])
def test_add_layernorm_fused_matches_torch(d):
    torch.manual_seed(2)
    model = _Block(d).eval()
    with torch.no_grad():
        model.ln.weight.normal_()
        model.ln.bias.normal_()
    model = sparsecc.prune(model, 0.5)
    x = torch.randn(2, 5, d)
    cm = sparsecc.compile(model, x)
    rep = str(cm.report())
    assert "native add + layer_norm" in rep and "fused into" in rep
    for batch in (1, 3):
        xb = torch.randn(batch, 5, d)
        for got, want in zip(cm(xb), model(xb)):
            assert_matches(got, want)


class _SelfAttention(torch.nn.Module):
    """Hugging Face's BertSelfAttention shape: view + transpose(1, 2) per head, SDPA, then
    transpose back, reshape and the output dense."""

    def __init__(self, heads, dim):
        super().__init__()
        self.h, self.d = heads, dim
        self.q, self.k, self.v, self.o = (torch.nn.Linear(heads * dim, heads * dim)
                                          for _ in range(4))

    def forward(self, x, mask):
        B, S, _ = x.shape

        def split(t):
            return t.view(B, S, self.h, self.d).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)),
                                           split(self.v(x)), attn_mask=mask)
        return self.o(a.transpose(1, 2).reshape(B, S, self.h * self.d))


@pytest.mark.parametrize("heads,dim,seq", [(3, 5, 7), (2, 16, 33), (1, 1, 1)])
def test_head_permutes_fused_into_linears(heads, dim, seq):
    torch.manual_seed(3)
    model = sparsecc.prune(_SelfAttention(heads, dim).eval(), 0.6)
    mask = torch.zeros(2, 1, seq, seq)
    mask[1, ..., seq // 2 + 1:] = torch.finfo(torch.float32).min
    x = torch.randn(2, seq, heads * dim)
    cm = sparsecc.compile(model, (x, mask), recipe={"formats": {"force": "csr"}})
    rep = str(cm.report())
    assert rep.count("fused into") == 4, rep  # three head splits and the merge
    for batch in (1, 2, 5):
        xb, mb = torch.randn(batch, seq, heads * dim), mask[:1].repeat(batch, 1, 1, 1)
        mb[-1, ..., :1] = torch.finfo(torch.float32).min
        assert_matches(cm(xb, mb), model(xb, mb))


@pytest.mark.parametrize("fmt", ["csr", "bsr4x1"])
@pytest.mark.parametrize("k_in", [24, 384])  # 384: three column panels, GELU on the last
def test_gelu_fused_into_sparse_linears(k_in, fmt):
    """An FFN: Linear + GELU handed over features x batch to the next Linear, and a Linear +
    GELU as the model output. CSR: GELU in the spmm's epilogue; BSR (whose kernels apply no
    GELU): in the output transpose, or a pass over the handed-over buffer."""
    torch.manual_seed(4)
    ffn = torch.nn.Sequential(torch.nn.Linear(k_in, 96), torch.nn.GELU(),
                              torch.nn.Linear(96, 40), torch.nn.GELU())
    model = sparsecc.prune(ffn.eval(), 0.7)
    x = torch.randn(3, 50, k_in) * 3
    cm = sparsecc.compile(model, x, recipe={"formats": {"force": fmt}})
    assert "linear+gelu" in str(cm.report())
    for batch in (1, 4):
        xb = torch.randn(batch, 50, k_in) * 3
        assert_matches(cm(xb), model(xb))


class _Encoder(torch.nn.Module):
    """Two post-LN encoder layers shaped like Hugging Face's BERT: an input LayerNorm, q/k/v
    split into heads, SDPA with an additive padding mask, the merge and output dense, add +
    LayerNorm, Linear + GELU + Linear, add + LayerNorm."""

    def __init__(self, heads, dim, ffn, layers=2):
        super().__init__()
        self.h, self.d = heads, dim
        width = heads * dim
        self.ln_in = torch.nn.LayerNorm(width)
        self.layers = torch.nn.ModuleList()
        for _ in range(layers):
            m = torch.nn.Module()
            m.q, m.k, m.v, m.o = (torch.nn.Linear(width, width) for _ in range(4))
            m.ln1, m.ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
            m.up, m.down = torch.nn.Linear(width, ffn), torch.nn.Linear(ffn, width)
            self.layers.append(m)

    def forward(self, x, mask):
        B, S, _ = x.shape

        def split(t):
            return t.view(B, S, self.h, self.d).transpose(1, 2)

        h = self.ln_in(x)
        for m in self.layers:
            a = F.scaled_dot_product_attention(split(m.q(h)), split(m.k(h)), split(m.v(h)),
                                               attn_mask=mask)
            a = m.o(a.transpose(1, 2).reshape(B, S, self.h * self.d))
            h = m.ln1(a + h)
            h = m.ln2(m.down(F.gelu(m.up(h))) + h)
        return h


@pytest.mark.parametrize("heads,dim,seq", [(2, 16, 33), (3, 5, 7), (2, 8, 1)])
def test_residual_stream_features_x_tokens(heads, dim, seq):
    """The residual stream held as features x tokens between the sparse linears and the
    add + layer norms (q and k read there by attention when seq >= 2), transposed at the
    input norm and back for the returned hidden state; batch 1 (one row when seq is 1)."""
    torch.manual_seed(5)
    model = sparsecc.prune(_Encoder(heads, dim, 3 * heads * dim).eval(), 0.7)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.normal_()
                mod.bias.normal_()
    mask = torch.zeros(2, 1, seq, seq)
    mask[1, ..., seq // 2 + 1:] = torch.finfo(torch.float32).min
    x = torch.randn(2, seq, heads * dim) * 2 + 1
    cm = sparsecc.compile(model, (x, mask), recipe={"formats": {"force": "csr"}})
    rep = str(cm.report())
    assert cm.native is not None
    # the input norm and the first three add + norms; the last one returns row-major
    assert rep.count("layer_norm (features x tokens)") == 4, rep
    # attention reads q and k where the linears wrote them (k needs 2 keys or more)
    assert rep.count("native attention (q, k features x tokens)" if seq > 1 else
                     "native attention (q features x tokens)") == 2, rep
    for batch in (1, 2, 5):
        xb, mb = torch.randn(batch, seq, heads * dim) * 2 + 1, mask[:1].repeat(batch, 1, 1, 1)
        mb[-1, ..., :1] = torch.finfo(torch.float32).min
        assert_matches(cm(xb, mb), model(xb, mb))
