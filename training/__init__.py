"""The shared training loop and model directories: every model family gets them unchanged."""
