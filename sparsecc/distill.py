"""Recovery by distillation: a pruned sentence encoder fine-tuned to match its dense teacher.

After heads and FFN neurons are removed (``remove_channels``), a transformer's sentence
embeddings drift from the dense model's. ``distill_embeddings`` trains the student on
unlabeled text to bring them back: per step, the teacher's last hidden states (no grad) and
the student's, on the same batch; the loss is the mean squared error of the hidden states over
real tokens plus (1 - cosine) of the mean-pooled sentence embeddings. It stops at a wall-time
or step budget and reports the held-out cosine before and after.

The text ships with Python: ``stdlib_sentences`` splits the docstrings of the standard
library into sentences (parsed with ``ast``, nothing imported), so recovery runs offline.

    sents = distill.stdlib_sentences()
    train, held = distill.split(sents)
    result = distill.distill_embeddings(student, teacher, tokenizer, train, held_out=held,
                                        seconds=600)
    print(result)   # steps, seconds, cosine before -> after

Student and teacher are callables taking (input_ids, attention_mask) and returning a mapping
with ``last_hidden_state`` (a transformers model, or the GraphModule of one after
remove_channels); the student must share the teacher's hidden size (the residual stream).
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import hashlib
import re
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecc.errors import PassError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODEY = re.compile(r">>>|::|\{|\}|==|\w\(|\)\.|\w_\w|\[\w|`|\|\s|\\|\w\.\w|@|->|\$|#|%")


@functools.cache
def stdlib_sentences(min_words: int = 6, max_words: int = 40) -> tuple[str, ...]:
    """Sentences from the docstrings of Python's standard library: module, class and function
    docstrings of every ``.py`` under the stdlib path (site-packages and tests skipped), split at
    sentence ends, kept when they read as prose (``min_words`` to ``max_words`` words, no code
    markers). Sorted and de-duplicated: the same list on every machine with this Python."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("site-packages", "test", "tests", "idlelib", "lib2to3") for p in rel):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                text = " ".join(para.split())
                for sent in _SENTENCE_END.split(text):
                    words = sent.split()
                    if min_words <= len(words) <= max_words and sent[0].isupper() and \
                            sent[-1] in ".!?" and not _CODEY.search(sent):
                        seen.add(sent)
    return tuple(sorted(seen))


def split(sentences: Sequence[str], held_out: float = 0.05) -> tuple[list[str], list[str]]:
    """(train, held out): each sentence goes by a hash of its text, so the split is stable."""
    train, held = [], []
    for s in sentences:
        h = int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) / 0x100000000
        (held if h < held_out else train).append(s)
    return train, held


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: hidden states averaged over real tokens, L2-normalised."""
    m = mask.to(hidden.dtype)[..., None]
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)


def _hidden(model: Callable, ids, mask, layers: bool = False):
    """The last hidden state; with ``layers``, every layer's (``hidden_states``: the model
    was built or traced with ``config.output_hidden_states = True``)."""
    out = model(ids, mask)
    get = (lambda k: out[k]) if (isinstance(out, dict) or hasattr(out, "keys")) else \
        (lambda k: getattr(out, k))
    if layers:
        try:
            hs = get("hidden_states")
        except (KeyError, AttributeError):
            hs = None
        if hs is None:
            raise PassError("distill", "layers='all' needs outputs with hidden_states "
                                       "(set config.output_hidden_states = True before tracing)")
        return list(hs)
    try:
        return get("last_hidden_state")
    except (KeyError, AttributeError):
        return out[0] if isinstance(out, (tuple, list)) else out


def embedding_cosine(student: Callable, teacher: Callable, tokenizer, sentences: Sequence[str],
                     batch: int = 64, max_length: int = 128) -> float:
    """Mean cosine between the student's and the teacher's sentence embeddings."""
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            enc = tokenizer(list(sentences[i:i + batch]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            a = mean_pooled(_hidden(student, ids, mask), mask)
            b = mean_pooled(_hidden(teacher, ids, mask), mask)
            total += float((a * b).sum(-1).sum())
            n += len(ids)
    return total / max(n, 1)


@dataclass
class DistillResult:
    steps: int
    seconds: float
    cosine_before: float | None
    cosine_after: float | None
    losses: list[float] = field(default_factory=list)  # per step

    def __str__(self) -> str:
        cos = ""
        if self.cosine_before is not None:
            cos = f", held-out cosine {self.cosine_before:.4f} -> {self.cosine_after:.4f}"
        return f"distilled {self.steps} steps in {self.seconds:.0f} s{cos}"


def distill_embeddings(student: nn.Module, teacher: Callable, tokenizer,
                       sentences: Sequence[str], *, held_out: Sequence[str] | None = None,
                       seconds: float = 600.0, steps: int | None = None, batch: int = 32,
                       max_length: int = 64, lr: float = 1e-4, cosine_weight: float = 1.0,
                       seed: int = 0, threads: int | None = None,
                       frozen: Sequence[str] = ("*embeddings*",), layers: str = "last",
                       log: Callable[[str], Any] | None = None) -> DistillResult:
    """Train ``student`` in place (AdamW; the learning rate warms up over the first 3 % of the
    budget and decays linearly to 10 % of ``lr`` at its end) until ``seconds`` of wall time or
    ``steps`` steps, whichever comes first. Parameters whose name matches a glob in ``frozen``
    keep their values (by default the embedding tables: channel removal leaves them whole,
    and they are most of a small encoder's parameters: MiniLM's 12M of 18M, each step's Adam
    update included). The held-out cosine is measured before and after (not counted in
    ``seconds``). ``layers="all"``: the MSE term runs over every layer's hidden states (both
    models must return ``hidden_states``), a denser signal than the last layer's alone."""
    if layers not in ("last", "all"):
        raise PassError("distill", f"layers={layers!r}: 'last' or 'all'")
    if not sentences:
        raise PassError("distill", "no training sentences")
    params = [p for name, p in student.named_parameters() if p.is_floating_point() and
              not any(fnmatch.fnmatchcase(name, pat) for pat in frozen)]
    if not params:
        raise PassError("distill", "the student has no parameters to train")
    if threads:
        torch.set_num_threads(threads)
    before = embedding_cosine(student, teacher, tokenizer, held_out) if held_out else None
    gen = torch.Generator().manual_seed(seed)
    every = [p for p in student.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in every]
    train_ids = {id(p) for p in params}
    for p in every:  # frozen ones get no gradient at all (an embedding table's is dense)
        p.requires_grad_(id(p) in train_ids)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    was_training = student.training
    student.eval()  # no dropout: the target is the teacher's deterministic output
    losses: list[float] = []
    t0 = time.perf_counter()
    step, last = 0, 0.0
    # a step starts only when it should end inside the budget (the last one's time as the
    # estimate): the wall time never passes ``seconds``
    while (steps is None or step < steps) and time.perf_counter() - t0 + last < seconds:
        t_step = time.perf_counter()
        # the budget's fraction used (steps or wall time, whichever is nearer its end): a
        # linear warm-up over the first 3 %, then a linear decay to 10 % of ``lr``
        frac = (time.perf_counter() - t0) / seconds
        if steps is not None:
            frac = max(frac, step / steps)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (frac + 1e-3) / 0.03) * (1.0 - 0.9 * frac)
        idx = torch.randint(0, len(sentences), (batch,), generator=gen).tolist()
        enc = tokenizer([sentences[i] for i in idx], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        deep = layers == "all"
        with torch.no_grad():
            targets = _hidden(teacher, ids, mask, deep)
        hiddens = _hidden(student, ids, mask, deep)
        if not deep:
            targets, hiddens = [targets], [hiddens]
        if len(targets) != len(hiddens):
            raise PassError("distill", f"the student returns {len(hiddens)} hidden states, "
                                       f"the teacher {len(targets)}")
        real = mask.bool()
        loss = sum(F.mse_loss(h[real], t[real]) for h, t in zip(hiddens, targets)) / len(hiddens)
        hidden, target = hiddens[-1], targets[-1]
        if cosine_weight:
            cos = (mean_pooled(hidden, mask) * mean_pooled(target, mask)).sum(-1)
            loss = loss + cosine_weight * (1.0 - cos).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        last = time.perf_counter() - t_step
        if log is not None and step % 50 == 0:
            log(f"step {step}: loss {losses[-1]:.4f} ({time.perf_counter() - t0:.0f} s)")
    took = time.perf_counter() - t0
    for p, f in zip(every, flags):
        p.requires_grad_(f)
    student.train(was_training)
    after = embedding_cosine(student, teacher, tokenizer, held_out) if held_out else None
    return DistillResult(step, took, before, after, losses)
