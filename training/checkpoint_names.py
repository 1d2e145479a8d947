"""The names inside checkpoint.npz, shared by the reader and the migration of older formats."""

FORMAT = 2  # format 1 named arrays by their position (see training/migration.py)
FIRST_COLUMNS = ("step", "training_loss", "validation_loss", "elapsed_seconds")  # of the metrics history
MODEL, OPTIMIZER, STATE = "model/", "optimizer/", "state/"  # prefixes of variable paths
PARTIAL = "partial/"  # the per-step metrics of a validation interval cut short
