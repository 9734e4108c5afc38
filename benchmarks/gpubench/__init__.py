"""Helpers of ``benchmarks/run_gpu.py``: timing, model configs, sections, report."""
