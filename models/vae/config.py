"""Settings of the VAE family (free of TensorFlow)."""

import dataclasses

import utils
from settings import setting
from utils import UsageError

LAYER_STRUCTURES = ("none", "lwta", "p-lwta")
MAX_BLOCK_SIZE = 16  # the competition's cost grows with the block size; see network.check_block_size


@dataclasses.dataclass(frozen=True)
class Config:
    """The VAE's architecture and objective."""

    layer_structure: str = setting("none", "hidden units: ReLU (none), deterministic LWTA or probabilistic LWTA",
                                   choices=LAYER_STRUCTURES)
    block_size: int = setting(2, "units per LWTA block, a divisor of the layer widths", minimum=1,
                              maximum=MAX_BLOCK_SIZE)
    lwta_hidden_only: bool = setting(False, "apply the competition to the two hidden layers only, not to the mean "
                                            "and log-variance heads (default: all four, as in the original)")
    hidden_units: int = setting(500, "width of both hidden layers", minimum=1, maximum=65536)
    latent_dim: int = setting(100, "latent dimensions", minimum=1, maximum=65536)
    loss: str = setting("mse", "mse: the original's squared error + KL (Gaussian decoder, variance 1/2); "
                               "bce: Bernoulli", choices=utils.LOSSES)
    beta: float = setting(1.0, "weight of the KL term in the objective", minimum=0.0, maximum=1e6)
    kl_warmup_steps: int = setting(0, "grow the KL weight linearly from 0 to --beta over this many steps",
                                   minimum=0, maximum=2**31 - 1)

    def validate(self):
        """Raise UsageError when the LWTA blocks do not divide the layers, naming the width that fails."""
        if self.layer_structure == "none":
            return
        widths = [("--hidden-units", self.hidden_units)]
        if not self.lwta_hidden_only:
            widths.append(("--latent-dim", self.latent_dim))
        for flag, width in widths:
            if width % self.block_size:
                hint = (" or pass --lwta-hidden-only so that the mean and log-variance heads do not compete"
                        if flag == "--latent-dim" else "")
                raise UsageError(f"{flag} {width} is not a multiple of the LWTA block size {self.block_size} "
                                 f"(--block-size); choose a multiple{hint}")

    def network_arguments(self):
        """The arguments of network.VAE."""
        return {"layer_structure": self.layer_structure, "block_size": self.block_size,
                "hidden_units": self.hidden_units, "latent_dim": self.latent_dim, "input_dim": utils.PIXELS,
                "lwta_hidden_only": self.lwta_hidden_only}

    def run_name(self):
        """The model's default folder name: its layer structure."""
        return self.layer_structure
