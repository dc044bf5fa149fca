"""The benchmark suite behind ``sparsecc bench``: engines, the grid, reports."""
