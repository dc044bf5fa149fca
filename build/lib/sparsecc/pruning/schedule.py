"""Sparsity schedules for gradual pruning."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3.

    Masks are recomputed every ``frequency`` steps between ``start_step`` and ``end_step``; the
    sparsity is ``initial_sparsity`` before ``start_step`` and ``final_sparsity`` after.
    """

    final_sparsity: float
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int = 1000
    frequency: int = 100

    def __post_init__(self):
        for name in ("final_sparsity", "initial_sparsity"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v} must be in [0, 1]")
        if self.end_step < self.start_step:
            raise ValueError(f"end_step={self.end_step} is before start_step={self.start_step}")
        if self.frequency < 1:
            raise ValueError(f"frequency={self.frequency} must be >= 1")

    def sparsity(self, step: int) -> float:
        if step < self.start_step:
            return self.initial_sparsity
        if step >= self.end_step or self.end_step == self.start_step:
            return self.final_sparsity
        frac = (step - self.start_step) / (self.end_step - self.start_step)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1 - frac) ** 3

    def updates_at(self, step: int) -> bool:
        """Whether the masks are recomputed at ``step``."""
        if step < self.start_step or step > self.end_step:
            return step == self.end_step
        return (step - self.start_step) % self.frequency == 0 or step == self.end_step
