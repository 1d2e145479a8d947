"""Pictures of trained models, for every family that can draw them."""
