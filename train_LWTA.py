"""The deterministic-LWTA VAE: train it with the original's settings, reconstruct validation digits 0-9.

    python train_LWTA.py    # saved_models/original/lwta/ and its results/mnist_0.png ... mnist_9.png

Flags override the settings (see --help); the work is experiments.runs.train_and_reconstruct("lwta").
"""

import sys

from experiments import cli

if __name__ == "__main__":
    sys.exit(cli.main("lwta"))
