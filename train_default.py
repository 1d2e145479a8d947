"""The default VAE (ReLU hidden units): train it with the original's settings, reconstruct validation digits 0-9.

    python train_default.py    # saved_models/default/ and saved_models/default/results/mnist_0.png ... mnist_9.png

Flags override the settings (see --help); the work is func.train_and_reconstruct("default").
"""

import sys

import experiment

if __name__ == "__main__":
    sys.exit(experiment.main("default"))
