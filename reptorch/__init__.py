"""reptorch: Reptile meta-learning (Nichol, Achiam & Schulman, 2018) in PyTorch."""

__version__ = "0.1.0"
