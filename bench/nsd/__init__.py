"""The NSD data layer: layout, loader (trials, images, captions, ROIs, cached betas), splits, synthetic NSD."""

from nsdbench.nsd.loader import NSD, open_nsd

__all__ = ["NSD", "open_nsd"]
