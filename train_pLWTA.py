"""The probabilistic-LWTA VAE: train it with the original's settings, reconstruct validation digits 0-9.

    python train_pLWTA.py    # saved_models/p-lwta/ and saved_models/p-lwta/results/mnist_0.png ... mnist_9.png

Flags override the settings (see --help); the work is func.train_and_reconstruct("p-lwta").
"""

import sys

import experiment

if __name__ == "__main__":
    sys.exit(experiment.main("p-lwta"))
