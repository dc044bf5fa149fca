"""The one module that touches llvmlite.binding: host target, IR -> object code, object -> code.

Object code is cached on disk under a key of (IR text hash, CPU name, CPU features, llvmlite
version), so a kernel is compiled once per machine. Loading object code links it into an MCJIT
engine without running LLVM's optimiser again; that is what an artifact's saved code uses.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from sparsecc.errors import CodegenError
from sparsecc.options import env_cache_dir

_LOCK = threading.Lock()
_ENGINES: list = []  # engines own the loaded code; kept alive for the process


@dataclass(frozen=True)
class Host:
    cpu: str
    features: str

    @property
    def vector_width(self) -> int:
        """float32 lanes of the widest vector registers LLVM will use here."""
        feats = set(self.features.split(","))
        if "+avx512f" in feats:
            return 16
        if "+avx2" in feats or "+avx" in feats:
            return 8
        return 4

    @property
    def key(self) -> str:
        digest = hashlib.sha256(f"{self.cpu}|{self.features}".encode()).hexdigest()[:16]
        return f"{self.cpu}-{digest}-llvmlite{llvmlite.__version__}"


@cache
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()  # module asm (emit_specialized's grouped kernels)


@cache
def host() -> Host:
    _init()
    feats = llvm.get_host_cpu_features()
    # Gathers are legal on every AVX2 CPU; LLVM's tuning prefers not to emit them on some Intel
    # parts (a microcode mitigation made them slow), but our spmv kernel asks for one on purpose.
    return Host(llvm.get_host_cpu_name(), feats.flatten())


def _target_machine(h: Host, opt: int = 3):
    _init()
    target = llvm.Target.from_default_triple()
    # The large code model: MCJIT may place a big object's sections > 2 GB apart.
    return target.create_target_machine(cpu=h.cpu, features=h.features, opt=opt,
                                        reloc="pic", codemodel="large")


def _optimize(mod, tm, opt: int = 3) -> None:
    pto = llvm.create_pipeline_tuning_options(speed_level=opt)
    pb = llvm.create_pass_builder(tm, pto)
    pm = pb.getModulePassManager()
    pm.run(mod, pb)


def cache_dir() -> Path:
    d = env_cache_dir() / "llvm"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cached(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _cache(path: Path, obj: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_bytes(obj)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a recompile next time


def compile_ir(ir_text: str, h: Host | None = None, opt: int = 3) -> bytes:
    """Object code for ``ir_text`` for host ``h`` (default: this machine), via the disk cache.

    ``opt`` 0 (no IR optimisation, O1 code generation) is for the specialised kernels:
    straight-line code of thousands of FMAs, already minimal as emitted, where the optimiser
    costs seconds per layer and buys nothing measurable."""
    h = h or host()
    key = hashlib.sha256(f"{h.key}|O{opt}\n{ir_text}".encode()).hexdigest()[:32]
    path = cache_dir() / f"{key}.o"
    hit = _cached(path)
    if hit is not None:
        return hit
    with _LOCK:
        try:
            mod = llvm.parse_assembly(ir_text)
            mod.verify()
        except RuntimeError as e:
            raise CodegenError("llvm", f"generated IR does not verify: {e}") from None
        tm = _target_machine(h, max(opt, 1))
        mod.triple, mod.data_layout = tm.triple, str(tm.target_data)
        if opt > 0:
            _optimize(mod, tm, opt)
        obj = tm.emit_object(mod)
    _cache(path, obj)
    return obj


def assembly(ir_text: str, opt: int = 3) -> str:
    """The host assembly for ``ir_text`` built as ``compile_ir(ir_text, opt=opt)`` builds it
    (for inspection; specialised kernels are built with ``opt=0``)."""
    h = host()
    with _LOCK:
        mod = llvm.parse_assembly(ir_text)
        tm = _target_machine(h, max(opt, 1))
        mod.triple, mod.data_layout = tm.triple, str(tm.target_data)
        if opt > 0:
            _optimize(mod, tm, opt)
        return tm.emit_assembly(mod)


def load_object(obj: bytes, names: list[str]) -> dict[str, int]:
    """Link object code into the process; the address of each exported function in ``names``."""
    return load_objects([obj], names)


def linked_key(key: str, exports: list[str], h: Host | None = None) -> str:
    """The cache key of compile_linked's object for the caller's ``key`` (which must name
    everything the IR is made of) on host ``h``."""
    h = h or host()
    return hashlib.sha256(f"{h.key}|linked|{','.join(exports)}|{key}".encode()).hexdigest()[:32]


def linked_path(ckey: str) -> Path:
    """Where the disk cache keeps compile_linked's object of cache key ``ckey``."""
    return cache_dir() / f"{ckey}.o"


def compile_linked(key: str, make_texts, exports: list[str], allowed,
                   prebuilt: dict[str, bytes] | None = None) -> tuple[str, bytes]:
    """(cache key, object code) of the IR modules ``make_texts()`` returns, linked into one,
    every definition but ``exports`` made internal, optimised at O3. ``key`` identifies the
    texts: a hit in ``prebuilt`` (an artifact's objects) or the disk cache skips producing
    them. ``allowed`` matches the undefined symbols the object may keep (libm, libgomp, ...);
    any other is a CodegenError."""
    h = host()
    ckey = linked_key(key, exports, h)
    if prebuilt and ckey in prebuilt:
        return ckey, prebuilt[ckey]
    path = linked_path(ckey)
    hit = _cached(path)
    if hit is not None:
        return ckey, hit
    texts = make_texts()
    with _LOCK:
        tm = _target_machine(h, 3)
        try:
            mods = [llvm.parse_assembly(t) for t in texts]
        except RuntimeError as e:
            raise CodegenError("llvm", f"generated IR does not parse: {e}") from None
        main = mods[0]
        for m in mods:
            m.triple, m.data_layout = tm.triple, str(tm.target_data)
        for m in mods[1:]:
            main.link_in(m)
        keep = set(exports)
        for f in main.functions:
            if not f.is_declaration and f.name not in keep:
                f.linkage = "internal"
        for g in main.global_variables:
            if not g.is_declaration and g.name not in keep:
                g.linkage = "internal"
        try:
            main.verify()
        except RuntimeError as e:
            raise CodegenError("llvm", f"linked IR does not verify: {e}") from None
        _optimize(main, tm, 3)
        undefined = sorted(f.name for f in main.functions if f.is_declaration
                           and not f.name.startswith("llvm.") and not allowed(f.name))
        undefined += sorted(g.name for g in main.global_variables if g.is_declaration)
        if undefined:
            raise CodegenError("llvm", f"the library would need symbols {undefined[:8]}")
        obj = tm.emit_object(main)
    _cache(path, obj)
    return ckey, obj


def load_objects(objs: list[bytes], names: list[str], owner=None) -> dict[str, int]:
    """Link objects into one engine (they may call each other; but MCJIT may misalign a second
    object's sections there: objects with 64-byte constants go one per engine); the address
    of each exported function in ``names``.
    With ``owner``, the engine (and its code) is freed when ``owner`` is garbage-collected
    (a model's library); without, it lives as long as the process."""
    h = host()
    with _LOCK:
        tm = _target_machine(h)
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        try:
            for obj in objs:
                engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        except RuntimeError as e:
            raise CodegenError("llvm", f"object code does not load: {e}") from None
        engine.finalize_object()
        addrs = {n: engine.get_function_address(n) for n in names}
        if owner is None:
            _ENGINES.append(engine)
        else:
            import weakref

            weakref.finalize(owner, _close_engine, engine)
    missing = [n for n, a in addrs.items() if not a]
    if missing:
        raise CodegenError("llvm", f"object code lacks functions {missing}")
    return addrs


def _close_engine(engine) -> None:
    with _LOCK:
        engine.close()
