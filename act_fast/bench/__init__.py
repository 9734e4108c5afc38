"""Measuring steering overhead: the timer shared with ``benchmarks/`` and the prefill / decode
throughput of a steered vs unsteered causal LM (``act-fast bench``)."""
