"""Speed and accuracy benchmarks of pytorch_utils (not part of the installed package; see benchmarks/README.md)."""
