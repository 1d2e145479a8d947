"""Speed measurements behind bench.py."""
