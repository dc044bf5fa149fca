"""Structured (channel) pruning: dependency graph, rules per op, physical removal."""
