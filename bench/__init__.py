"""The embedlens benchmark suite: `python bench/run.py` (see docs/performance.md)."""
