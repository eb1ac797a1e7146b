"""Figures, one module per area of the chain."""
