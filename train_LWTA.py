"""The deterministic-LWTA VAE: train it with the original's settings, reconstruct validation digits 0-9.

    python train_LWTA.py    # saved_models/lwta/ and saved_models/lwta/results/mnist_0.png ... mnist_9.png

Flags override the settings (see --help); the work is func.train_and_reconstruct("lwta").
"""

import sys

import experiment

if __name__ == "__main__":
    sys.exit(experiment.main("lwta"))
