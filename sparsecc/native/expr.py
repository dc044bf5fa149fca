"""Sizes as expressions in the batch size N, evaluated in Python or emitted as LLVM IR.

The native library is built once and runs at any batch: every size, offset and work count it
uses is one of these, computed from N when ``run`` is called.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

I64 = ir.IntType(64)


@dataclass(frozen=True)
class E:
    op: str  # "c" constant | "n" the batch | "+" | "*" | "cdiv" | "fdiv" | "max" | "min"
    args: tuple = ()
    value: int = 0

    def __add__(self, o) -> E:
        o = lift(o)
        if self.op == "c" and o.op == "c":
            return const(self.value + o.value)
        if o.op == "c" and o.value == 0:
            return self
        if self.op == "c" and self.value == 0:
            return o
        return E("+", (self, o))

    __radd__ = __add__

    def __mul__(self, o) -> E:
        o = lift(o)
        if self.op == "c" and o.op == "c":
            return const(self.value * o.value)
        for p, q in ((self, o), (o, self)):
            if p.op == "c" and p.value == 1:
                return q
            if p.op == "c" and p.value == 0:
                return const(0)
        return E("*", (self, o))

    __rmul__ = __mul__

    def __sub__(self, o) -> E:
        return self + lift(o) * -1

    def cdiv(self, o) -> E:
        o = lift(o)
        if self.op == "c" and o.op == "c":
            return const(-(-self.value // o.value))
        return self if o.op == "c" and o.value == 1 else E("cdiv", (self, o))

    def fdiv(self, o) -> E:
        o = lift(o)
        if self.op == "c" and o.op == "c":
            return const(self.value // o.value)
        return self if o.op == "c" and o.value == 1 else E("fdiv", (self, o))

    def max(self, o) -> E:
        o = lift(o)
        if self.op == "c" and o.op == "c":
            return const(max(self.value, o.value))
        return E("max", (self, o))

    def gt(self, o) -> E:
        """1 where self > o, else 0."""
        o = lift(o)
        if self.op == "c" and o.op == "c":
            return const(int(self.value > o.value))
        return E("gt", (self, o))

    def __call__(self, n: int) -> int:
        """The value at batch ``n``."""
        if self.op == "c":
            return self.value
        if self.op == "n":
            return n
        x, y = (a(n) for a in self.args)
        return {"+": lambda: x + y, "*": lambda: x * y, "cdiv": lambda: -(-x // y),
                "fdiv": lambda: x // y, "max": lambda: max(x, y), "gt": lambda: int(x > y),
                "min": lambda: min(x, y)}[self.op]()

    def emit(self, b: ir.IRBuilder, n: ir.Value, memo: dict) -> ir.Value:
        if self.op == "c":
            return I64(self.value)
        if self.op == "n":
            return n
        hit = memo.get(self)
        if hit is not None:
            return hit
        x, y = (a.emit(b, n, memo) for a in self.args)
        if self.op == "+":
            v = b.add(x, y)
        elif self.op == "*":
            v = b.mul(x, y)
        elif self.op == "cdiv":
            v = b.sdiv(b.sub(b.add(x, y), I64(1)), y)  # operands are >= 0 here
        elif self.op == "fdiv":
            v = b.sdiv(x, y)
        elif self.op == "max":
            v = b.select(b.icmp_signed(">", x, y), x, y)
        elif self.op == "gt":
            v = b.zext(b.icmp_signed(">", x, y), I64)
        else:
            v = b.select(b.icmp_signed("<", x, y), x, y)
        memo[self] = v
        return v

    def is_const(self) -> bool:
        return self.op == "c"

    def __repr__(self) -> str:
        if self.op == "c":
            return str(self.value)
        if self.op == "n":
            return "N"
        return f"({self.args[0]!r} {self.op} {self.args[1]!r})"


def const(v: int) -> E:
    return E("c", (), int(v))


def lift(v) -> E:
    return v if isinstance(v, E) else const(int(v))


N = E("n")


def dim(d) -> E:
    """A plan dimension (an int or Sym(k)) as an expression."""
    from sparsecc.ir.plan import Sym

    if isinstance(d, E):
        return d
    return N * d.k if isinstance(d, Sym) else const(d)


def numel(shape) -> E:
    out = const(1)
    for d in shape:
        out = out * dim(d)
    return out


def linear(e: E) -> tuple[int, int]:
    """(a, b) with e(n) <= a*n + b for every n >= 1, exact when e is affine; from e(1), e(2)
    and checked on larger n (sizes here are affine in N or bounded by the slope found)."""
    a = max(e(3) - e(2), 0)  # the slope past batch 1 (a padded stride is affine from 2 on)
    b = max(max(e(n) - a * n for n in (1, 2, 3)), 0)
    for n in (4, 7, 64, 1000):
        if e(n) > a * n + b:
            raise ValueError(f"size {e!r} is not affine in the batch")
    return a, b
