"""A batch run chunk by chunk (Program.chunk): models of per-sample ops step through a large
batch a few samples at a time so the activations stay in cache; the result must not change,
and a model whose ops may mix samples must never be split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecc
from sparsecc.native import lower as NL
from tests.conftest import assert_matches


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y) + y)
        y = nn.functional.max_pool2d(y, 2)
        return self.fc(torch.flatten(y, 1))


def _compile(model, x, monkeypatch, budget):
    monkeypatch.setattr(NL, "CHUNK_BYTES", budget)
    cm = sparsecc.compile(model, x)
    assert cm.native is not None, cm.native_status
    return cm, cm.native.lib.program


@pytest.mark.parametrize("samples", [1, 2, 3])
def test_chunked_batches_match_torch(samples, monkeypatch, seed):
    model = sparsecc.prune(Net().eval(), 0.7, scope="layer")
    x = torch.randn(1, 3, 8, 8)
    _, prog = _compile(model, x, monkeypatch, 1 << 40)
    per_sample = prog.arena[0]
    cm, prog = _compile(model, x, monkeypatch, per_sample * samples)
    assert prog.chunk == samples
    assert prog.sample_bytes == ([3 * 8 * 8 * 4], [5 * 4])
    # the arena holds a chunk per thread whatever the batch
    runner = cm.native.runner
    assert runner.arena_bytes(64) == runner.arena_bytes(100_000) <= \
        runner.max_threads * (runner.arena_bytes(samples) + 8 * prog.argspace_slots + 256)
    # up to 2 chunks per thread: chunk after chunk on every thread; past that, each thread
    # takes whole chunks (sample-parallel)
    for batch in (1, samples, samples + 1, 7, 16, 33):
        xb = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            ref = model(xb)
        assert_matches(cm(xb), ref)
        assert_matches(cm(xb.numpy()), ref.numpy())


def test_models_that_mix_samples_are_not_split(monkeypatch, seed):
    class Mix(nn.Module):
        def forward(self, x):  # a sum over the batch: every sample reads all the others
            return torch.relu(x.sum(dim=0, keepdim=True) + x)

    cm, prog = _compile(Mix().eval(), torch.randn(2, 6), monkeypatch, 1)
    assert prog.chunk == 0
    x = torch.randn(5, 6)
    assert_matches(cm(x), Mix()(x))


def test_chunk_loops_keep_a_fixed_stack(monkeypatch, seed):
    """The chunk loops (serial and sample-parallel) allocate their pointer arrays once, in the
    entry block: an alloca inside a loop would grow the stack with every chunk."""
    import re

    from sparsecc.native import module as M

    model = sparsecc.prune(Net().eval(), 0.7, scope="layer")
    _, prog = _compile(model, torch.randn(1, 3, 8, 8), monkeypatch, 1)
    assert prog.chunk == 1
    text = M.main_ir(prog, "t", prog.blob()[1])
    for fname in ("t__run", "t__run_samples_worker"):
        body = text[text.index(f'@"{fname}"('):]
        body = body[:body.index("\n}\n")]
        blocks = re.split(r'\n(?="?[\w.]+"?:\n)', body.split("{\n", 1)[1])
        assert blocks[0].startswith("entry:")
        assert blocks[0].count("alloca") >= 2, fname
        for blk in blocks[1:]:
            label = blk.split(":", 1)[0].strip('"')
            if label in ("head", "step"):  # the loop's blocks
                assert "alloca" not in blk, (fname, label)


@pytest.mark.parametrize("samples", [1, 3])
def test_encoder_chunks_match_torch(samples, monkeypatch, seed):
    """An encoder (embedding-free BERT layers: layer norms, attention with a padding mask,
    the residual stream held features x tokens) runs chunk by chunk too; the mask and the
    per-sample token layout must follow each chunk."""
    from tests.native.test_transformer_kernels import _Encoder

    model = sparsecc.prune(_Encoder(2, 8, 48).eval(), 0.7)
    seq = 9
    mask = torch.zeros(1, 1, seq, seq)
    x = torch.randn(1, seq, 16)
    _, prog = _compile(model, (x, mask), monkeypatch, 1 << 40)
    cm, prog = _compile(model, (x, mask), monkeypatch, prog.arena[0] * samples)
    assert prog.chunk == samples
    for batch in (1, 4, 13):
        xb = torch.randn(batch, seq, 16)
        mb = torch.zeros(batch, 1, seq, seq)
        mb[::2, ..., seq - 3:] = torch.finfo(torch.float32).min  # padding in every other
        with torch.no_grad():
            ref = model(xb, mb)
        assert_matches(cm(xb, mb), ref)



def test_small_samples_split_by_the_batch(monkeypatch, seed):
    """A conv net whose whole batch fits a chunk still runs sample-parallel once the batch
    has 2 samples a thread: chunks of N // split samples (never more than Program.chunk), the
    same chunks whatever the thread count, so 1 and 2 threads give the same bits."""
    model = sparsecc.prune(Net().eval(), 0.7, scope="layer")
    cm, prog = _compile(model, torch.randn(1, 3, 8, 8), monkeypatch, 1 << 40)
    assert prog.chunk > 64 and prog.min_chunk == 1
    for batch in (3, 4, 5, 16, 37):
        xb = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            ref = model(xb).numpy()
        got = []
        for threads in (1, 2):
            cm.native.threads.pin(batch, cm.native.runner.max_threads, threads)
            got.append(cm(xb.numpy()))
            assert_matches(got[-1], ref)
        assert (got[0] == got[1]).all(), batch


def test_batch_rows_keep_whole_chunks(monkeypatch, seed):
    """An MLP's sparse layers vectorise over the batch and split their weights between the
    threads: small chunks would stream every weight once per chunk, so its chunks stay whole
    (min_chunk == chunk); a conv net's may hold one sample."""
    mlp = sparsecc.prune(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval(),
                         0.9)
    _, prog = _compile(mlp, torch.randn(1, 64), monkeypatch, 1 << 40)
    assert prog.chunk > 1 and prog.min_chunk == prog.chunk
    assert NL.batch_min_chunk(prog.plan, 7) == 7
    conv = sparsecc.prune(Net().eval(), 0.7, scope="layer")
    _, prog = _compile(conv, torch.randn(1, 3, 8, 8), monkeypatch, 1 << 40)
    assert NL.batch_min_chunk(prog.plan, 7) == 1
