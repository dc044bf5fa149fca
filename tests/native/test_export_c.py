"""`sparsecc export-c`: the library and header build, link into a C program with the system cc,
and compute what torch computes; bad calls return an error, never crash."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import sparsecc
from sparsecc import zoo
from sparsecc.cli import main as cli_main
from sparsecc.codegen.llvm import jit

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no system C compiler")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "c" / "run_model.c"


def _build_example(lib_dir: Path) -> Path:
    exe = lib_dir / "run_model"
    subprocess.run(["cc", "-O2", "-I", str(lib_dir), str(EXAMPLE), "-L", str(lib_dir),
                    "-lsparsecc_model", f"-Wl,-rpath,{lib_dir}", "-o", str(exe)], check=True)
    return exe


def _run(exe: Path, batch: int, inputs: list[np.ndarray], tmp: Path) -> list[np.ndarray]:
    files = []
    for i, a in enumerate(inputs):
        files.append(tmp / f"in{i}.bin")
        np.ascontiguousarray(a).tofile(files[-1])
    res = subprocess.run([str(exe), str(batch), *map(str, files), str(tmp / "out")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return sorted(tmp.glob("out*.bin"))


def exported_matches_torch(path: Path, model, shape: tuple, batches, tmp: Path) -> None:
    """The artifact at ``path`` exported as a C library (`sparsecc export-c`), built with the
    example program and run at ``batches`` (samples of ``shape``) against torch; skips the
    test where no C compiler is found."""
    from sparsecc.cli import main as cli_main

    assert cli_main(["export-c", str(path), str(tmp / "lib")]) == 0
    try:
        exe = _build_example(tmp / "lib")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no C compiler: {exc}")
    for batch in batches:
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            want = model(x).numpy()
        out, = _run(exe, batch, [x.numpy()], tmp)
        np.testing.assert_allclose(np.fromfile(out, np.float32).reshape(want.shape), want,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,sparsity,tail,split", [("mnist_cnn", 0.9, "0", False),
                                                      ("tiny_transformer", 0.9, None, False),
                                                      ("mobilenet_v2_block", None, None, True),
                                                      ("mnist_cnn", 0.9, None, True),
                                                      ("mnist_cnn", 0.9, "16K", True)])
def test_c_example_matches_torch(name, sparsity, tail, split, tmp_path, seed, monkeypatch):
    """tail: SPARSECC_TAIL_BYTES ("0": no tail); ``split``: the program runs its last layers
    over the whole batch after the chunks (module._emit_run's boundary region; MNIST's CNN
    from its 14 x 14 maps and the MobileNetV2 block from its 16 x 16 ones,
    lower.TAIL_SMALL_MAPS_ONLY with AVX-512; MNIST's earlier at 16K), MNIST's 7 x 7 maps
    packed at batch 16 with AVX-512 (lower.PACK)."""
    if tail:
        monkeypatch.setenv("SPARSECC_TAIL_BYTES", tail)
    model = zoo.ZOO[name]()
    if sparsity:
        model = sparsecc.prune(model, sparsity, scope="layer")
    cm = sparsecc.compile(model, zoo.example_input(model, 1, seed=seed))
    if tail is None and jit.host().vector_width == 8:
        split = False  # (TAIL_SMALL_MAPS_ONLY is AVX-512's)
    assert split == bool(cm.native.lib.program.tail), cm.native.lib.program.tail
    art = cm.save(tmp_path / "m.scc")
    assert cli_main(["export-c", str(art), str(tmp_path / "lib")]) == 0
    exe = _build_example(tmp_path / "lib")
    for batch in (1, 8, 16):
        x = zoo.example_input(model, batch, seed=seed + batch)
        with torch.no_grad():
            ref = model(x)
        outs = _run(exe, batch, [x.numpy()], tmp_path)
        ref = ref if isinstance(ref, tuple) else (ref,)
        assert len(outs) == len(ref)
        for path, r in zip(outs, ref):
            got = np.fromfile(path, np.float32).reshape(r.shape)
            np.testing.assert_allclose(got, r.numpy(), rtol=1e-4, atol=1e-5)


def test_exports_only_the_api(tmp_path):
    model = zoo.mlp()
    cm = sparsecc.compile(model, torch.randn(1, 784), sparsity=0.9)
    from sparsecc.native.export import API, export_c

    so, hdr = export_c(cm.plan, tmp_path, prefix="mlp_a")
    syms = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True,
                          text=True, check=True).stdout.split()
    exported = {s for s in syms if s.startswith("mlp_a")}
    assert exported == {f"mlp_a_{n}" for n in API}
    assert all(line.split()[-1].startswith("mlp_a") for line in
               subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True,
                              text=True).stdout.splitlines() if line.strip())
    # two models, two prefixes, one program
    export_c(cm.plan, tmp_path, prefix="mlp_b")
    prog = tmp_path / "two.c"
    prog.write_text(textwrap.dedent("""
        #include <stdio.h>
        #include <string.h>
        #include "mlp_a.h"
        #include "mlp_b.h"
        int main(void) {
            static float x[2 * 784], ya[2 * 10], yb[2 * 10];
            for (int i = 0; i < 2 * 784; i++) x[i] = (float)(i % 17) / 17.0f;
            const void *in[1] = {x};
            void *oa[1] = {ya}, *ob[1] = {yb};
            mlp_a *a = mlp_a_create(1);
            mlp_b *b = mlp_b_create(2);
            if (mlp_a_run(a, 2, in, oa) || mlp_b_run(b, 2, in, ob)) return 1;
            /* errors: a bad batch, null pointers, a null model */
            if (mlp_a_run(a, 0, in, oa) == 0 || strlen(mlp_a_error(a)) == 0) return 2;
            if (mlp_a_run(a, 2, NULL, oa) == 0) return 3;
            const void *nul[1] = {NULL};
            if (mlp_a_run(a, 2, nul, oa) == 0) return 4;
            if (mlp_a_run(NULL, 2, in, oa) == 0) return 5;
            if (mlp_a_run(a, 2, in, oa) != 0 || mlp_a_error(a)[0] != 0) return 6;
            int64_t dims[8];
            if (mlp_a_input_shape(0, 3, dims) != 2 || dims[0] != 3 || dims[1] != 784) return 7;
            if (mlp_a_input_shape(5, 3, dims) != -1 || mlp_a_input_dtype(0) != 0) return 8;
            mlp_a_destroy(a);
            mlp_b_destroy(b);
            mlp_a_destroy(NULL);
            return memcmp(ya, yb, sizeof ya) != 0;
        }
    """))
    subprocess.run(["cc", "-O2", "-I", str(tmp_path), str(prog), "-L", str(tmp_path),
                    "-lmlp_a", "-lmlp_b", f"-Wl,-rpath,{tmp_path}", "-o",
                    str(tmp_path / "two")], check=True)
    res = subprocess.run([str(tmp_path / "two")], capture_output=True, timeout=60)
    assert res.returncode == 0, (res.returncode, res.stderr)


def test_export_refuses_a_bad_prefix_and_reports_it(tmp_path, capsys):
    model = zoo.mlp()
    art = sparsecc.compile(model, torch.randn(1, 784)).save(tmp_path / "m.scc")
    assert cli_main(["export-c", str(art), str(tmp_path), "--prefix", "9bad-name"]) == 2
    assert "prefix" in capsys.readouterr().err


def test_c_example_runs_an_int8_model(tmp_path, seed):
    """An int8 artifact (MNIST CNN at 90 %, every conv and linear in int8) exports and runs
    from C exactly as it runs from Python."""
    model = sparsecc.prune(zoo.mnist_cnn(), 0.9, scope="layer")
    cal = [zoo.example_input(model, 8, seed=seed + i) for i in range(3)]
    cm = sparsecc.compile(model, cal[0][:1], quantize="int8", calibration=cal,
                          recipe={"quantize": {"min_macs_per_input": 0.0, "direct_max_k": 0}})
    assert {op.kind for op in cm.plan.ops} >= {"qconv2d", "qlinear"}
    art = cm.save(tmp_path / "q.scc")
    assert cli_main(["export-c", str(art), str(tmp_path / "lib")]) == 0
    exe = _build_example(tmp_path / "lib")
    for batch in (1, 8):
        x = zoo.example_input(model, batch, seed=seed + 10 + batch).numpy()
        (path,) = _run(exe, batch, [x], tmp_path)
        got = np.fromfile(path, np.float32).reshape(batch, -1)
        np.testing.assert_array_equal(got, cm(x))
