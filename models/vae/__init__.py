"""The 784-500-100-500-784 VAE with ReLU, LWTA or probabilistic-LWTA hidden layers (network.py)."""
