"""A/B of one sparse conv's kernel: the model ``conv -> relu`` (90 % magnitude-pruned,
random input) compiled twice in one process, the base with ``--base-set`` and the variant
with ``--set`` (as bench/op_ab.py: environment variables or module constants), each conv
call timed on its own, rounds alternating. Prints both builds' calls (median ms), the
kernel's GFLOP/s of its sparse FLOPs and the paired ratio of the kernel times (variant /
base, median and quartiles over the rounds: a slow spell of the machine falls on both).

Usage:
  .venv/bin/python bench/conv_ab.py --c 64 --hw 56 --base-set sparsecc.native.lower.AVX2_WIDE=False
  .venv/bin/python bench/conv_ab.py --c 256 --o 64 --hw 56 --k 1 \\
      --set sparsecc.native.lower.AVX2_PANEL_X_BYTES=20480
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("SPARSECC_ADAPTIVE_THREADS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from op_ab import applied, split_calls  # noqa: E402

import sparsecc  # noqa: E402


class _Conv(torch.nn.Module):
    def __init__(self, c: int, o: int, k: int, stride: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, o, k, stride, k // 2)

    def forward(self, x):
        return torch.relu(self.conv(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--c", type=int, default=64, help="input channels")
    ap.add_argument("--o", type=int, default=0, help="output channels (default: --c)")
    ap.add_argument("--hw", type=int, default=56, help="input height and width")
    ap.add_argument("--k", type=int, default=3, help="kernel size")
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="the variant's setting (repeatable)")
    ap.add_argument("--base-set", action="append", default=[], metavar="NAME=VALUE",
                    help="the base's setting (repeatable)")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = _Conv(a.c, a.o or a.c, a.k, a.stride).eval()
    w = model.conv.weight.data
    w[w.abs() <= w.abs().flatten().kthvalue(int(0.9 * w.numel())).values] = 0
    x = np.random.default_rng(0).standard_normal((a.batch, a.c, a.hw, a.hw)).astype(np.float32)
    ex = (torch.from_numpy(x),)
    names: list[dict[int, str]] = [{}, {}]
    builds = []
    for i, settings in enumerate((a.base_set, a.set)):
        with split_calls({0}, names[i]), applied(settings):
            builds.append(sparsecc.compile(model, ex))
    with torch.no_grad():
        want = model(ex[0]).numpy()
    for b in builds:
        got = b.native.run([x])[0]
        if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise SystemExit(f"output off torch's by {np.abs(got - want).max():.3g}")
    per: list[list[dict]] = [[], []]
    for _ in range(a.rounds):
        for i, b in enumerate(builds):
            b.native.run([x])
            per[i].append(b.native.profile([x], repeats=0, warm=False))
    flops = 2.0 * a.batch * (-(-a.hw // a.stride)) ** 2 * int((w != 0).sum())
    kernel = []
    for i, label in enumerate(("base", "variant")):
        med = {k: float(np.median([p.get(k, 0.0) for p in per[i]])) for k in per[i][0]}
        calls = "  ".join(f"{names[i].get(k, k)}: {v * 1e3:.3f}" for k, v in sorted(med.items())
                          if v > 0)
        print(f"{label} ({builds[i].native.lib.labels.get(0, '')}): {calls}")
        kernel.append(np.array([sum(v for k, v in p.items() if " sp_" in names[i].get(k, ""))
                                for p in per[i]]))
    r = kernel[1] / kernel[0]
    t0, t1 = np.median(kernel[0]), np.median(kernel[1])
    print(f"kernel: base {t0 * 1e3:.3f} ms ({flops / t0 / 1e9:.1f} GFLOP/s), variant "
          f"{t1 * 1e3:.3f} ms ({flops / t1 / 1e9:.1f} GFLOP/s); variant / base, paired: median "
          f"{np.median(r):.3f}, quartiles {np.percentile(r, 25):.3f}-{np.percentile(r, 75):.3f}")


if __name__ == "__main__":
    main()
