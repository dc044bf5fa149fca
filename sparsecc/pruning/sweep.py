"""Per-layer sensitivity: prune one layer at a time, measure a user metric, plan budgets."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from sparsecc.passes.prune import PruneOptions, apply_masks, compute_masks, prunable_layers


@dataclass
class SensitivityTable:
    baseline: float
    sparsities: list[float]
    layers: list[str]
    params: dict[str, int]
    metric: dict[tuple[str, float], float]  # (layer, sparsity) -> metric with only it pruned

    def to_markdown(self) -> str:
        head = "| layer | params | " + " | ".join(f"{s:.0%}" for s in self.sparsities) + " |"
        lines = [f"baseline metric: {self.baseline:.4f}", "", head,
                 "|---|---|" + "---|" * len(self.sparsities)]
        for layer in self.layers:
            cells = " | ".join(f"{self.metric[(layer, s)]:.4f}" for s in self.sparsities)
            lines.append(f"| {layer} | {self.params[layer]} | {cells} |")
        return "\n".join(lines)

    def budgets(self, max_drop: float) -> dict[str, float]:
        """Per layer, the highest swept sparsity whose metric stays within ``max_drop`` of the
        baseline (0.0 when none does) — usable as ``prune(overrides=...)``.

        Each budget is measured with only that layer pruned; applied together the drops add up
        (MNIST CNN: every layer within 0.2 points alone, 1.6 points together), so treat them as
        a starting point for fine-tuning, not a guarantee."""
        out = {}
        for layer in self.layers:
            ok = [s for s in self.sparsities if self.baseline - self.metric[(layer, s)] <= max_drop]
            out[layer] = max(ok, default=0.0)
        return out

    def plot(self, path: str | Path, ylabel: str = "metric") -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for layer in self.layers:
            ax.plot([s * 100 for s in self.sparsities],
                    [self.metric[(layer, s)] for s in self.sparsities], marker="o",
                    label=f"{layer} ({self.params[layer]})")
        ax.axhline(self.baseline, color="k", linestyle="--", linewidth=1, label="dense")
        ax.set_xlabel("sparsity of this layer alone (%)")
        ax.set_ylabel(ylabel)
        ax.set_title("Per-layer pruning sensitivity")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def sensitivity(model: nn.Module, metric: Callable[[nn.Module], float],
                sparsities: Sequence[float] = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
                layers: Sequence[str] | None = None, **prune_options) -> SensitivityTable:
    """Prune each layer alone at each sparsity (the others dense) and record ``metric(model)``."""
    opts = PruneOptions(**{**prune_options, "scope": "layer", "sparsity": None})
    found = {name: m.weight.numel() for name, m in prunable_layers(model, opts.exclude,
                                                                    opts.min_params,
                                                                    opts.include_types)}
    names = list(layers) if layers is not None else list(found)
    baseline = float(metric(model))
    results: dict[tuple[str, float], float] = {}
    for layer in names:
        for s in sparsities:
            trial = copy.deepcopy(model)
            layer_opts = PruneOptions(**{**vars(opts), "exclude": tuple(
                n for n in found if n != layer)})
            apply_masks(trial, compute_masks(trial, layer_opts, s))
            results[(layer, s)] = float(metric(trial))
    return SensitivityTable(baseline, list(sparsities), names, {n: found[n] for n in names},
                            results)
