"""Sampling loops that drive diffusers components with nsdbench's batching and per-image CPU generators."""
