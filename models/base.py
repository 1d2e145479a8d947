"""What every model family provides to the shared training loop, model directories, evaluation and pictures."""

import dataclasses

import keras

# The commands a family may serve, beyond training.
COMMANDS = ("reconstruct", "evaluate", "sample", "latent", "export")


@dataclasses.dataclass(frozen=True)
class ImportanceModel:
    """What importance-weighted evaluation needs: a Gaussian q(z|x) and log p(x|z), with p(z) = N(0, I).

    `encode(x) -> (mean, log_variance)`; `log_likelihood(x [n, 1, D], z [n, samples, latent]) -> [n, samples]`.
    """

    encode: object
    log_likelihood: object


class Family:
    """A model family: its network, its training objective and what it supports.

    Subclasses set `name` and `commands` (those of COMMANDS they serve) and
    override the methods below; the training loop, the checkpoint format,
    evaluation and pictures are shared.
    """

    name = None
    commands = ()

    def build(self, config):
        """A new keras.Model for the RunConfig `config` (weights drawn from Keras's global seed)."""
        raise NotImplementedError

    def objective(self, model, config, images, seed, step):
        """(training objective to minimise, {metric: batch mean}) for one batch, noise drawn from `seed`.

        The metrics hold "loss", the number recorded as the training loss, and its parts.
        """
        raise NotImplementedError

    def validation_metrics(self, model, config, images, seed):
        """{metric: mean over `images`} in inference mode, with the same names as :meth:`objective`'s."""
        raise NotImplementedError

    def metric_names(self):
        """The names of the metrics, "loss" first."""
        return ("loss",)

    def validation_only_metrics(self):
        """Names of metrics that :meth:`validation_metrics` adds to those of :meth:`metric_names`."""
        return ()

    def extra_state(self, model):
        """{name: tf.Variable} of training state beyond the weights and the optimizer, saved in checkpoints."""
        return {}

    def reconstruct(self, model, images, sample=False, seed=1):
        """Inference-mode reconstructions of `images`, as pixel probabilities (NumPy)."""
        raise NotImplementedError

    def encode_mean(self, model, images):
        """The posterior mean (or code) of `images` (NumPy), for latent-space plots."""
        raise NotImplementedError

    def decode(self, model, z):
        """Pixel probabilities (NumPy) of latent points `z`."""
        raise NotImplementedError

    def sample_prior(self, model, count, seed):
        """`count` latent points drawn from the prior (NumPy)."""
        raise NotImplementedError

    def latent_dim(self, model):
        raise NotImplementedError

    def importance_model(self, model, config):
        """An ImportanceModel for :mod:`evaluation.importance`."""
        raise NotImplementedError

    def export_model(self, model):
        """A keras.Model to save as a .keras archive: it maps images to reconstructions."""
        return model


def optimizer(learning_rate):
    """Adam with TF1's epsilon (Keras's default is 1e-7); named, so that its variables' paths are stable."""
    return keras.optimizers.Adam(learning_rate, epsilon=1e-8, name="adam")
