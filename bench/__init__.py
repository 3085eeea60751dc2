"""nsdbench: exact, versioned, reproducible evaluation of image reconstruction from NSD fMRI."""

__version__ = "0.1.0"
