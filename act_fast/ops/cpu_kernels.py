"""The compiled CPU kernels (``csrc/`` at the top of the repository): build on first use, load, and
the calls the op bodies make when :func:`act_fast.ops.backend.implementation` says ``"cpu"``.

The C++ kernels are registered as the ops of the ``act_fast_cpu`` library (``torch.ops.
act_fast_cpu.*``), vectorized with ``at::vec::Vectorized`` and parallel with ``at::parallel_for``.
They are bit-identical to :mod:`act_fast.ops.reference` (``torch.equal``) for float32, bfloat16
and float16; for float64 input, conv planes whose spatial dims are not one contiguous block, and
RMSNorm rows whose channels are not contiguous the calls return None and the op bodies run the
reference (its exact result, more slowly). The statistics update (:func:`stats_update`) matches
:func:`act_fast.ops.stats_reference.stats_update_ref` exactly in the histogram, the counts and
min / max, and to float64 rounding in the moments (float64 tile sums and merges, in another order).

Build: never at ``pip install`` time (build isolation would compile against another torch). On the
first op call on a CPU tensor (or ``python -m act_fast.build`` ahead of time) the sources are
compiled with ``torch.utils.cpp_extension`` (ninja and the system C++ compiler, ``-O3
-ffp-contract=off``, the vector instructions of torch's own CPU capability: AVX512, AVX2 or
generic) into ``<cache>/cpu_kernels/<key>/``, where ``<cache>`` is ``$ACT_FAST_CACHE_DIR`` or
``$XDG_CACHE_HOME/act_fast`` (default ``~/.cache/act_fast``) and ``<key>`` names the torch version,
the Python ABI, the machine, the capability and a digest of the sources and flags. Each build runs in
its own temporary folder and its library is moved into place with one atomic rename, so processes
building at the same time never see a half-written file. One line on stderr says a build is
running.

``ACT_FAST_CPU_KERNELS=0`` turns the kernels off (read at every call): the ops run the pure-torch
reference. Without a compiler or ninja, or when the build fails, the reference runs too and one
warning says why.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import site
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

from act_fast.ops.reference import group_norm_ref
from act_fast.ops.stats_reference import HistogramParams, stats_update_ref

ENV_SWITCH = "ACT_FAST_CPU_KERNELS"
ENV_CACHE = "ACT_FAST_CACHE_DIR"
LIBRARY_NAME = "act_fast_cpu"
SOURCES = ("transport.cpp", "norm_transport.cpp", "stats.cpp", "register.cpp")
HEADERS = ("common.h", "bf16_pairs.h")
# Bump when the build recipe changes in a way the sources and flags do not show.
_RECIPE_VERSION = "1"

_BASE_CFLAGS = ["-O3", "-ffp-contract=off"]
_CAPABILITY_CFLAGS = {
    "AVX512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl",
               "-mavx512dq", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}


class CpuKernelsUnavailable(RuntimeError):
    """The compiled CPU kernels cannot be used here; the message says why."""


class _State:
    library: Path | None = None
    failure: str | None = None
    warned: bool = False


_state = _State()
_lock = threading.Lock()


# -- where and how it is built ---------------------------------------------------------------------


def enabled() -> bool:
    """False when ``ACT_FAST_CPU_KERNELS`` turns the compiled kernels off (``0``, ``false``, ``off``, ``no``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def source_dir() -> Path:
    """The folder holding the C++ sources: ``csrc/`` next to the package in a checkout (or an
    editable install), else ``<prefix>/share/act_fast/csrc`` where a wheel installs them. Raises
    :class:`CpuKernelsUnavailable` when none has them."""
    candidates = [Path(__file__).resolve().parents[2] / "csrc", Path(sysconfig.get_path("data")) / "share" / "act_fast" / "csrc"]
    if site.USER_BASE:
        candidates.append(Path(site.USER_BASE) / "share" / "act_fast" / "csrc")
    for folder in candidates:
        if all((folder / name).is_file() for name in SOURCES + HEADERS):
            return folder
    raise CpuKernelsUnavailable(f"the C++ sources ({', '.join(SOURCES + HEADERS)}) are in none of {[str(c) for c in candidates]}")


def capability() -> str:
    """The vector instruction set torch's own CPU kernels use here (``torch.backends.cpu``): the
    kernels are compiled for the same one (``AVX512``, ``AVX2``; anything else: generic code)."""
    return torch.backends.cpu.get_cpu_capability()


def compile_flags() -> tuple[list[str], list[str]]:
    """``(cflags, ldflags)`` of the build on this machine."""
    cflags = _BASE_CFLAGS + _CAPABILITY_CFLAGS.get(capability(), [])
    ldflags: list[str] = []
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for is a header template: it runs in parallel only when compiled with OpenMP
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def cache_root() -> Path:
    """``$ACT_FAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/act_fast``, else ``~/.cache/act_fast``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "act_fast"


def build_key() -> str:
    """Names one build: torch version, Python ABI, machine, capability, digest of sources and flags."""
    digest = hashlib.sha256(_RECIPE_VERSION.encode())
    folder = source_dir()
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    cflags, ldflags = compile_flags()
    digest.update(" ".join(cflags + ["|"] + ldflags).encode())
    return f"torch{torch.__version__}-{sys.implementation.cache_tag}-{platform.machine()}-{capability().lower()}-{digest.hexdigest()[:12]}"


def library_path() -> Path:
    """Where the built library lives (whether or not it exists yet)."""
    return cache_root() / "cpu_kernels" / build_key() / f"{LIBRARY_NAME}.so"


def missing_tools() -> str | None:
    """Why a build cannot start here, or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler: {compiler!r} is not on PATH (install one, or set CXX)"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def _compile(target: Path, verbose: bool) -> None:
    """Builds the library in a private temporary folder next to ``target``, loads it, then moves it
    to ``target`` with one atomic rename (a concurrent builder's identical file may be replaced)."""
    from torch.utils.cpp_extension import load

    folder = source_dir()
    cflags, ldflags = compile_flags()
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        load(
            name=LIBRARY_NAME,
            sources=[str(folder / name) for name in SOURCES],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=str(scratch),
            is_python_module=False,
            verbose=verbose,
        )
        built = [p for p in scratch.iterdir() if p.name.startswith(LIBRARY_NAME + ".") and p.suffix in (".so", ".pyd", ".dylib")]
        if len(built) != 1:
            raise CpuKernelsUnavailable(f"the build left {[p.name for p in scratch.iterdir()]} in {scratch}, expected one {LIBRARY_NAME} library")
        os.replace(built[0], target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    # ninja failures end with the compiler's messages; the first 'error:' line is the useful one
    errors = [line.strip() for line in lines if "error:" in line]
    return (errors[0] if errors else lines[0])[:300]


def load(verbose: bool = False, force: bool = False) -> Path:
    """Loads the compiled kernels, building them first if the cache has no build for this machine
    (``force``: rebuild anyway). Returns the library's path.

    Raises:
        CpuKernelsUnavailable: no compiler or ninja, missing sources, or a failed build (the
            message says why).
    """
    with _lock:
        if _state.library is not None and not force:
            return _state.library
        target = library_path()
        if force or not target.is_file():
            reason = missing_tools()
            if reason is not None:
                raise CpuKernelsUnavailable(reason)
            print(f"act_fast: compiling the CPU kernels ({capability()}) into {target.parent} (once; about a minute)",
                  file=sys.stderr, flush=True)
            start = time.perf_counter()
            try:
                _compile(target, verbose)
            except CpuKernelsUnavailable:
                raise
            except Exception as error:  # compiler or ninja failure, unwritable cache, ...
                raise CpuKernelsUnavailable(f"building the CPU kernels failed: {_first_line(error)}") from error
            build_seconds = time.perf_counter() - start
            if verbose:
                print(f"act_fast: CPU kernels built in {build_seconds:.0f} s", file=sys.stderr, flush=True)
        if not _library_loaded():
            try:
                torch.ops.load_library(str(target))
            except Exception as error:
                raise CpuKernelsUnavailable(f"loading {target} failed: {_first_line(error)}") from error
        _state.library, _state.failure = target, None
        return target


def _library_loaded() -> bool:
    """Whether this process has the ``act_fast_cpu`` ops (a library, once loaded, stays loaded)."""
    try:
        torch.ops.act_fast_cpu.affine_transport  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


def available() -> bool:
    """Whether the ops use the compiled kernels on CPU tensors: False when ``ACT_FAST_CPU_KERNELS``
    turns them off or when they cannot be built (one warning per process says why); builds them on
    the first call."""
    if not enabled():
        return False
    if _state.library is not None:
        return True
    if _state.failure is not None:
        return False
    try:
        load()
        return True
    except CpuKernelsUnavailable as error:
        _state.failure = str(error)
        if not _state.warned:
            _state.warned = True
            warnings.warn(f"act_fast: compiled CPU kernels unavailable, the ops run the pure-torch path ({error})",
                          RuntimeWarning, stacklevel=3)
        return False


def status() -> str:
    """One line: whether the compiled kernels are off, loaded (from where, for which instructions) or
    unavailable (why). Never builds."""
    if not enabled():
        return f"off ({ENV_SWITCH}={os.environ.get(ENV_SWITCH)})"
    if _state.library is not None:
        return f"loaded: {_state.library} ({torch.ops.act_fast_cpu.build_info()})"
    if _state.failure is not None:
        return f"unavailable: {_state.failure}"
    try:
        path = library_path()
    except CpuKernelsUnavailable as error:
        return f"unavailable: {error}"
    return f"built, not loaded yet: {path}" if path.is_file() else f"not built yet (first use builds into {path.parent})"


# -- the calls the op bodies make --------------------------------------------------------------------


def _planes_are_contiguous(x: Tensor) -> bool:
    """Whether the spatial dims of conv features ``[B, C, *spatial]`` form one contiguous block per
    plane: the reference then averages each plane as one contiguous row, as the kernel does."""
    expected = 1
    for size, stride in zip(reversed(x.shape[2:]), reversed(x.stride()[2:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _target(x: Tensor, out: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``(buffer the kernel writes, tensor to copy it into afterwards or None)``: ``out`` itself when
    it is ``x`` (in place) or shares no memory with ``x``; a new buffer when there is no ``out`` or
    when ``out`` overlaps ``x`` in any other way."""
    if out is not None:
        in_place = out.data_ptr() == x.data_ptr() and x.is_contiguous()
        if in_place or out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            return out, None
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), out


def affine_transport(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    channel_dim: int,
    pool_spatial: bool,
    out: Tensor | None = None,
) -> Tensor | None:
    """The transport op on a CPU tensor (arguments validated, ``channel_dim`` non-negative), written
    into ``out`` (contiguous, ``x``'s shape and dtype; may be ``x``) or a new tensor; returns it.
    None when the kernel does not take ``x`` (float64, conv planes that are not one contiguous
    block): the op body then runs the reference."""
    planes = channel_dim != x.ndim - 1 and x.ndim > 2
    if x.dtype == torch.float64 or (planes and not _planes_are_contiguous(x)):
        return None
    buffer, copy_to = _target(x, out)
    torch.ops.act_fast_cpu.affine_transport(x, weight, bias, strength, scalar_strength, lo, hi, map_index, channel_dim, pool_spatial, buffer)
    return buffer if copy_to is None else copy_to.copy_(buffer)


def rms_norm_transport(
    x: Tensor,
    norm_weight: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    eps: float,
    weight_offset: float,
    cast_before_scale: bool,
) -> Tensor | None:
    """The fused RMSNorm + transport op on a CPU tensor ``[..., C]``; returns a new contiguous
    tensor, or None when the kernel does not take ``x`` (float64, channels not contiguous): the op
    body then runs the reference."""
    if x.dtype == torch.float64 or (x.shape[-1] > 1 and x.stride(-1) != 1):
        return None
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.ops.act_fast_cpu.rms_norm_transport(
        x, norm_weight, weight, bias, strength, scalar_strength, lo, hi, map_index, eps, weight_offset, cast_before_scale, out
    )
    return out


def layer_norm_transport(
    x: Tensor,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    eps: float,
) -> Tensor | None:
    """The fused LayerNorm + transport op on a CPU tensor ``[..., C]``; returns a new contiguous
    tensor, or None for float64 (the op body then runs the reference)."""
    if x.dtype == torch.float64:
        return None
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.ops.act_fast_cpu.layer_norm_transport(
        x, norm_weight, norm_bias, weight, bias, strength, scalar_strength, lo, hi, map_index, eps, out
    )
    return out


def group_norm_transport(
    x: Tensor,
    num_groups: int,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    strength: Tensor | None,
    scalar_strength: float,
    lo: Tensor | None,
    hi: Tensor | None,
    map_index: Tensor | None,
    eps: float,
    pool_spatial: bool,
) -> Tensor | None:
    """The fused GroupNorm + transport op on CPU conv features ``[B, C, *spatial]``: torch's own
    GroupNorm (the module's output, exactly), then the compiled transport of it in place (two
    passes, not one). Returns a new contiguous tensor, or None when the kernel does not take the
    input (float64, or a GroupNorm output whose planes are not contiguous): the op body then runs
    the reference."""
    if x.dtype == torch.float64:
        return None
    h = group_norm_ref(x, num_groups, norm_weight, norm_bias, eps)
    out = h if h.is_contiguous() else None
    return affine_transport(h, weight, bias, strength, scalar_strength, lo, hi, map_index, 1, pool_spatial, out)


# Channels per block of the statistics kernel (csrc/stats.cpp, kCols): its bucket indices within a
# block are int32, so it takes up to 2^31 / 64 buckets per channel.
_STATS_BLOCK_CHANNELS = 64
_STATE_DTYPES = {
    "count": torch.int64, "mean": torch.float64, "m2": torch.float64, "vmin": torch.float64, "vmax": torch.float64,
    "nan": torch.int64, "pos_inf": torch.int64, "neg_inf": torch.int64, "hist": torch.int32,
    "centre": torch.float32, "exp_offset": torch.int32,
}


def _compiled_state(state: dict[str, Tensor]) -> bool:
    """Whether the kernel can fold into ``state`` in place: contiguous CPU tensors of its dtypes."""
    return all(
        state[key].dtype == dtype and state[key].is_contiguous() and state[key].device.type == "cpu"
        for key, dtype in _STATE_DTYPES.items()
    )


def stats_update(x: Tensor, state: dict[str, Tensor], params: HistogramParams, row_mask: Tensor | None = None) -> None:
    """Folds ``x [rows, C]`` (CPU) into ``state`` in place, as
    :func:`act_fast.ops.stats_reference.stats_update_ref` (same state keys; ``hist`` holds the int32
    pending counts, which the caller folds before 2^31 rows). One pass of the compiled kernel;
    float64 input, an int64 ``hist``, a non-contiguous state or more than 2^31 / 64 buckets per
    channel run the reference instead."""
    fits = params.num_buckets * _STATS_BLOCK_CHANNELS < 2**31
    if x.dtype == torch.float64 or not fits or not _compiled_state(state):
        stats_update_ref(x, state, params, row_mask)
        return
    if x.shape[1] > 1 and x.stride(1) != 1:
        x = x.contiguous()
    mask = None if row_mask is None else row_mask.to(torch.bool).contiguous()
    torch.ops.act_fast_cpu.stats_update(
        x, mask, state["count"], state["mean"], state["m2"], state["vmin"], state["vmax"], state["nan"],
        state["pos_inf"], state["neg_inf"], state["hist"], state["centre"], state["exp_offset"], *params,
    )
