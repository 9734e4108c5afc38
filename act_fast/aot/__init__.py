"""Ahead-of-time compilation of this package's Triton kernels for NVIDIA GPUs, on any machine.

- :mod:`.record`: records the specialization of every kernel launch (the interpreter or a GPU);
- :mod:`.workloads`: the representative public-op calls, production shapes included;
- :mod:`.compile`: compiles specs for ``sm_80`` / ``sm_90`` with the ptxas in Triton's wheel;
- :mod:`.ptx`: registers, spills, float64 work and global access widths of the result;
- :mod:`.checks`: the assertions; :mod:`.pipeline`: record → compile → check → report;
- ``python -m act_fast.aot``: the command (``--all`` records the whole test suite).

Nothing here is imported by the package itself.
"""
