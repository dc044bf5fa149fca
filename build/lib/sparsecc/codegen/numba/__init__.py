"""Numba kernels. Importing this package configures numba once (see ``sparsecc.options``)."""

from sparsecc.options import configure_numba

configure_numba()
