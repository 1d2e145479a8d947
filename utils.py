"""Data loading, the loss, image helpers and atomic file writes."""

import dataclasses
import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from fileio.npz import read_npz

IMAGE_SIDE = 28
PIXELS = IMAGE_SIDE * IMAGE_SIDE
TRAIN_OFFSET = 5000  # the original's training images start after the 5,000 validation images
MAX_VALIDATION_EXAMPLES = TRAIN_OFFSET
MAX_TRAIN_EXAMPLES = 60000 - TRAIN_OFFSET
LOSSES = ("mse", "bce")
BINARIZATIONS = ("none", "dynamic", "static")
DATASETS = {
    # name: (environment variable for the data folder, keras.datasets module name)
    "mnist": ("MNIST_DATA_DIR", "mnist"),
    "fashion-mnist": ("FASHION_MNIST_DATA_DIR", "fashion_mnist"),
}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_IDX_MAGIC = {1: 2049, 3: 2051}  # number of dimensions -> magic number for unsigned bytes


class UsageError(Exception):
    """A user mistake in the command line (bad flag value or combination); exit status 2."""


class DataError(Exception):
    """Missing, unreadable or corrupt input (data or model files); exit status 1."""


# ---------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class Split:
    """Images as float32 in [0, 1], shape [count, 784], and their digit labels."""

    images: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass
class Dataset:
    train: Split
    validation: Split
    test: Split

    def split(self, name):
        if name not in ("train", "validation", "test"):
            raise UsageError(f"unknown split {name!r}; use train, validation or test")
        return getattr(self, name)


MAX_IDX_BYTES = 1 << 30  # the most data an IDX file may declare: 1.4 million 28x28 images, 22 times MNIST's
_READ_CHUNK = 1 << 24


def read_idx(path, dimensions=None):
    """Read an IDX file of unsigned bytes (optionally gzip-compressed), checking its magic number and size.

    `dimensions` (3 for images, 1 for labels) makes the magic number check strict.  The header is read first,
    then exactly the bytes it declares (and one more, to detect excess), so a gzip bomb cannot exhaust memory;
    a header declaring more than MAX_IDX_BYTES is rejected before any data is read.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            shape = _idx_shape(path, handle, dimensions)
            needed = math.prod(shape)
            data = _read_at_most(handle, needed + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read ({error}); the file is truncated or corrupt") from None
    header = 4 + 4 * len(shape)
    if len(data) > needed:
        raise DataError(f"{path}: holds more data than the {header + needed} bytes its header {shape} needs; "
                        "the file is corrupt")
    if len(data) < needed:
        raise DataError(f"{path}: {header + len(data)} bytes, but its header {shape} needs {header + needed}; "
                        "the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _idx_shape(path, handle, dimensions):
    """The shape in the IDX header at the start of `handle`, checked; leaves `handle` at the data."""
    magic = handle.read(4)
    if len(magic) < 4:
        raise DataError(f"{path}: too short to be an IDX file")
    magic = int.from_bytes(magic, "big")
    allowed = [_IDX_MAGIC[dimensions]] if dimensions else list(_IDX_MAGIC.values())
    if magic not in allowed:
        raise DataError(f"{path}: wrong magic number {magic}; expected {' or '.join(map(str, allowed))}")
    sizes = handle.read(4 * (magic & 0xFF))  # the magic number's last byte counts the dimensions
    if len(sizes) < 4 * (magic & 0xFF):
        raise DataError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(sizes[i : i + 4], "big") for i in range(0, len(sizes), 4))
    if math.prod(shape) > MAX_IDX_BYTES:
        raise DataError(f"{path}: its header claims {shape}, {math.prod(shape)} bytes, more than the "
                        f"{MAX_IDX_BYTES} an IDX file may hold; the file is corrupt")
    return shape


def _read_at_most(handle, size):
    """Up to `size` bytes of `handle`, read in chunks, so that memory follows the data there, not a claim."""
    data = bytearray()
    while len(data) < size:
        chunk = handle.read(min(size - len(data), _READ_CHUNK))
        if not chunk:
            break
        data += chunk
    return data


def write_idx(path, array):
    """Write a uint8 array as a gzip-compressed IDX file (used by tests and tools)."""
    array = np.asarray(array, dtype=np.uint8)
    header = _IDX_MAGIC[array.ndim].to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())



def _check_pair(images, labels, what):
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{what} images have shape {images.shape}; expected [count, 28, 28]")
    if labels.shape != images.shape[:1]:
        raise DataError(f"{what}: {len(images)} images but labels of shape {labels.shape}")
    _check_bytes(images, f"{what} images")
    _check_bytes(labels, f"{what} labels")


def _check_bytes(array, what):
    """Images and labels, as in IDX files, are unsigned bytes: integers 0..255 of any integer dtype."""
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{what} have dtype {array.dtype}; expected integers 0..255 (uint8)")
    if array.dtype != np.uint8 and array.size and (array.min() < 0 or array.max() > 255):
        raise DataError(f"{what} range from {array.min()} to {array.max()}; expected integers 0..255")


def _read_folder(folder):
    """The (train images, train labels, test images, test labels) in `folder`: four IDX files or mnist.npz."""
    folder = Path(folder)
    if all((folder / name).is_file() for name in IDX_FILES.values()):
        source = folder
        arrays = {key: read_idx(folder / name, 3 if key.endswith("images") else 1) for key, name in IDX_FILES.items()}
    elif (folder / "mnist.npz").is_file():
        source = folder / "mnist.npz"
        arrays = _read_mnist_npz(source)
    else:
        present = [name for name in IDX_FILES.values() if (folder / name).is_file()]
        missing = [name for name in IDX_FILES.values() if name not in present]
        raise DataError(f"{folder}: missing {', '.join(missing)} (expected the four MNIST IDX .gz files or mnist.npz)")
    _check_pair(arrays["train_images"], arrays["train_labels"], f"{source} training")
    _check_pair(arrays["test_images"], arrays["test_labels"], f"{source} test")
    return {key: array.astype(np.uint8, copy=False) for key, array in arrays.items()}


_NPZ_NAMES = {"train_images": "x_train", "train_labels": "y_train", "test_images": "x_test", "test_labels": "y_test"}


def _read_mnist_npz(path):
    """The arrays of a Keras-style mnist.npz: x_train, y_train, x_test and y_test."""
    try:
        arrays = read_npz(path)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    missing = [name for name in _NPZ_NAMES.values() if name not in arrays]
    if missing:
        raise DataError(f"{path}: has no {', '.join(missing)} (expected arrays {', '.join(_NPZ_NAMES.values())})")
    return {key: arrays[name] for key, name in _NPZ_NAMES.items()}


def _keras_download(module_name):
    """Keras's cached or downloaded copy of a dataset, or None when unavailable."""
    import keras  # imported here: reading a local folder should not need Keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, module_name).load_data()
    except Exception:  # no network, blocked download, broken cache: reported by the caller
        return None
    return {"train_images": x_train, "train_labels": y_train, "test_images": x_test, "test_labels": y_test}


def load_raw(dataset="mnist", data_dir=None):
    """The raw uint8 arrays of `dataset` from `data_dir`, its environment variable, or Keras.

    Order: the folder given by `data_dir`; else the folder in the dataset's
    environment variable (MNIST_DATA_DIR or FASHION_MNIST_DATA_DIR); else Keras's
    cache or download.  A folder that was given but is missing or broken is an
    error, not a reason to fall back.  A folder's images and labels must be
    integers 0..255 (uint8, or another integer dtype within that range): floats,
    NaN, negative or larger values, strings and Python objects are a DataError.
    """
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; use {' or '.join(DATASETS)}")
    variable, module_name = DATASETS[dataset]
    folder = data_dir or os.environ.get(variable)
    if folder:
        if not Path(folder).is_dir():
            source = "--data-dir" if data_dir else variable
            raise DataError(f"data folder {folder} (from {source}) does not exist")
        return _read_folder(folder)
    arrays = _keras_download(module_name)
    if arrays is None:
        raise DataError(
            f"could not load {dataset}: no --data-dir, {variable} is not set, and keras.datasets.{module_name} "
            "found no cached copy and could not download one; pass --data-dir with the four IDX .gz files"
        )
    return arrays


def _as_pixels(images):
    return (images.reshape(len(images), PIXELS) / np.float32(255.0)).astype(np.float32)


def load_dataset(dataset="mnist", data_dir=None, train_examples=10000, validation_examples=1000):
    """The original's splits: validation = first images of the training file, training from image 5,000."""
    if not 1 <= validation_examples <= MAX_VALIDATION_EXAMPLES:
        raise UsageError(f"--validation-examples must be between 1 and {MAX_VALIDATION_EXAMPLES}, got {validation_examples}")
    if not 1 <= train_examples <= MAX_TRAIN_EXAMPLES:
        raise UsageError(f"--train-examples must be between 1 and {MAX_TRAIN_EXAMPLES}, got {train_examples}")
    arrays = load_raw(dataset, data_dir)
    train_images, train_labels = arrays["train_images"], arrays["train_labels"]
    if len(train_images) < TRAIN_OFFSET + train_examples:
        raise DataError(f"the training file holds {len(train_images)} images; {TRAIN_OFFSET + train_examples} are needed")
    train = slice(TRAIN_OFFSET, TRAIN_OFFSET + train_examples)
    return Dataset(
        train=Split(_as_pixels(train_images[train]), train_labels[train].astype(np.int64)),
        validation=Split(_as_pixels(train_images[:validation_examples]), train_labels[:validation_examples].astype(np.int64)),
        test=Split(_as_pixels(arrays["test_images"]), arrays["test_labels"].astype(np.int64)),
    )


def binarize(images, seed):
    """One Bernoulli draw per pixel with the grey level as probability (NumPy, seeded)."""
    rng = np.random.default_rng(seed)
    return (rng.random(images.shape, dtype=np.float32) < images).astype(np.float32)


# ---------------------------------------------------------------------------
# Loss: everything in nats per image


def pixel_losses(x, logits, loss="mse"):
    """-log p(x_d|z) of each pixel, less :func:`reconstruction_loss`'s constant: the squared error between x and
    sigmoid(logits) (``mse``) or the binary cross-entropy (``bce``)."""
    import tensorflow as tf

    if loss == "mse":
        return tf.square(x - tf.sigmoid(logits))
    if loss == "bce":
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")


def reconstruction_loss(x, logits, loss="mse", sum_pixels=None):
    """-log p(x|z) per image, summed over pixels, constant included.

    ``mse``: Gaussian decoder with mean sigmoid(logits) and variance 1/2, i.e.
    the squared error plus (D/2) log(pi); the original's objective.
    ``bce``: Bernoulli decoder, the binary cross-entropy summed over pixels.
    `sum_pixels` sums over the last axis (default: tf.reduce_sum).
    """
    import tensorflow as tf

    losses = pixel_losses(x, logits, loss)
    total = sum_pixels(losses) if sum_pixels else tf.reduce_sum(losses, axis=-1)
    return total + 0.5 * x.shape[-1] * math.log(math.pi) if loss == "mse" else total


def sum_last_axis(values):
    """Sum over the last axis, as a product with a vector of ones.

    XLA on the CPU runs a long sum over the last axis of a fused elementwise
    expression as a slow reduce-window (seen in TensorFlow's profiler); a
    matrix-vector product with ones runs as one fast kernel.
    """
    import tensorflow as tf

    return tf.linalg.matvec(values, tf.ones(values.shape[-1:], values.dtype))


def kl_divergence(mean, log_variance):
    """KL(N(mean, exp(log_variance)) || N(0, I)) per image, summed over latent dimensions."""
    import tensorflow as tf

    return 0.5 * tf.reduce_sum(tf.exp(log_variance) + tf.square(mean) - 1.0 - log_variance, axis=-1)


def negative_elbo(x, mean, log_variance, logits, loss="mse", beta=1.0):
    """(reconstruction + beta * kl, reconstruction, kl), each per image in nats."""
    reconstruction = reconstruction_loss(x, logits, loss)
    kl = kl_divergence(mean, log_variance)
    return reconstruction + beta * kl, reconstruction, kl


def to_original_scale(negative_elbo_nats, loss="mse"):
    """The original's per-pixel number, (squared error + KL) / 784, from the mse negative ELBO."""
    if loss != "mse":
        raise ValueError("only the mse objective has the original's per-pixel scale")
    return (negative_elbo_nats - 0.5 * PIXELS * math.log(math.pi)) / PIXELS


# ---------------------------------------------------------------------------
# Images


def to_uint8(pixels):
    """Probabilities in [0, 1] to 8-bit grey levels."""
    return np.clip(np.rint(np.asarray(pixels) * 255.0), 0, 255).astype(np.uint8)


def tile_images(images, columns, gap=0):
    """Arrange [count, 784] images into one grid array, row by row, `gap` pixels of background (0) apart."""
    images = np.asarray(images).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    rows = -(-len(images) // columns)
    pitch = IMAGE_SIDE + gap
    grid = np.zeros((rows * pitch - gap, columns * pitch - gap), dtype=images.dtype)
    for index, image in enumerate(images):
        top, left = (pitch * place for place in divmod(index, columns))
        grid[top : top + IMAGE_SIDE, left : left + IMAGE_SIDE] = image
    return grid


MAX_ENLARGEMENT = 16  # --scale: at 16 a 10 x 10 sample grid is already 4768 pixels wide


def enlarge(pixels, factor):
    """A 2-D picture with every pixel repeated `factor` x `factor` times (nearest neighbour), for print."""
    return np.repeat(np.repeat(np.asarray(pixels), factor, axis=0), factor, axis=1)


def save_grayscale_png(path, pixels):
    """Write a 2-D array of probabilities in [0, 1] as an 8-bit grayscale PNG, atomically."""
    from PIL import Image

    from fileio.atomic import atomic_write

    image = Image.fromarray(to_uint8(pixels))  # 2-D uint8 -> mode "L"
    atomic_write(path, lambda temporary: image.save(temporary, format="PNG"))


def save_figure(figure, path, **kwargs):
    """Save a matplotlib figure atomically (format from the suffix)."""
    from fileio.atomic import atomic_write

    atomic_write(path, lambda temporary: figure.savefig(temporary, format=Path(path).suffix[1:], **kwargs))
