"""Evaluation of trained models; the defaults here are free of TensorFlow, for the command line."""

DEFAULT_IMPORTANCE_SAMPLES = 5000
DEFAULT_CHUNK_SIZE = 25000  # images x importance samples decoded per compiled call
MAX_CHUNK_IMAGES = 64  # each image of a call gets its own noise draw in the compiled graph
