"""Steering inside a vLLM worker: installed after the model is loaded, buffers filled every step.

vLLM 0.32 has two model runners, and both are hooked on their instance (no class is changed):

- **V1** (``vllm.v1.worker.gpu_model_runner.GPUModelRunner``; the CPU runner subclasses it, and it
  is what vLLM uses on CPU): ``_prepare_inputs(scheduler_output, num_scheduled_tokens)`` lays the
  step's tokens out in ``input_batch.req_ids`` order.
- **V2** (``vllm.v1.worker.gpu.model_runner.GPUModelRunner``, vLLM's default on GPU):
  ``prepare_inputs(...)`` returns an ``InputBatch`` whose ``req_ids`` / ``num_scheduled_tokens``
  give the layout.

In both, ``execute_model(scheduler_output, ...)`` is wrapped to learn each new request's
``sampling_params.extra_args`` and forget finished requests, and to zero reused KV-cache blocks
that a steered request wrote (see :class:`WorkerSteering`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm.logger import init_logger

from act_fast.vllm.buffers import TokenControl
from act_fast.vllm.config import DIGEST_FIELD, CONFIG_KEY, EngineSteeringConfig, load_map_sets, maps_digest
from act_fast.vllm.requests import RequestSteeringError, chain_width, validate_chain
from act_fast.vllm.sites import install_sites, plan_sites

logger = init_logger("vllm.act_fast")  # under "vllm" so that vLLM's log handler prints it


class UnsupportedEngineError(ValueError):
    """An engine configuration under which per-token steering would be applied to the wrong tokens."""


def _check_engine(vllm_config: Any, runner: Any) -> None:
    """Refuses configurations whose forward does not see the step's tokens as one batch laid out
    request after request (micro-batching, prefill context parallelism, pipeline stages, adaptive
    draft verification), and Inductor freezing, which would bake λ into the compiled graph."""
    parallel = vllm_config.parallel_config
    problems = []
    if getattr(parallel, "use_ubatching", False):
        problems.append("micro-batching (enable_dbo / ubatch_size > 1)")
    if getattr(parallel, "prefill_context_parallel_size", 1) > 1:
        problems.append("prefill context parallelism")
    if getattr(parallel, "pipeline_parallel_size", 1) > 1:
        problems.append("pipeline parallelism")
    # vLLM sets runner.adaptive_verification only after load; what it is built from is known now.
    speculative = getattr(vllm_config, "speculative_config", None)
    if (
        getattr(runner, "adaptive_verification", None) is not None
        or getattr(getattr(runner, "speculator", None), "enable_adaptive_verification", False)
        or getattr(speculative, "enable_adaptive_verification", False)
    ):
        problems.append("adaptive speculative verification")
    inductor = getattr(vllm_config.compilation_config, "inductor_compile_config", None) or {}
    if inductor.get("freezing") or (inductor.get("max_autotune") and vllm_config.device_config.device.type == "cpu"):
        problems.append("Inductor freezing (max_autotune on CPU), which would fold the steering buffers into constants")
    if problems:
        raise UnsupportedEngineError(f"act_fast steering does not support {', '.join(problems)}")


FLAGGED_KEPT = 1024  # flagged request ids kept for inspection (the warnings are the record)


def _fresh(groups: Any, num_computed_tokens: int, block_sizes: list[int]) -> list[int]:
    """Block ids of ``groups`` (one list per KV-cache group) past the blocks holding the
    ``num_computed_tokens`` already computed tokens (prefix-cache hits, shared with other requests)."""
    ids: list[int] = []
    for g, blocks in enumerate(groups or ()):
        size = block_sizes[g] if g < len(block_sizes) else block_sizes[-1]
        ids.extend(blocks[-(-num_computed_tokens // size) :])
    return ids


class WorkerSteering:
    """The engine's map sets installed in the worker's model, and the per-request state.

    **KV-cache hygiene.** vLLM's CPU attention (and its other paged kernels) computes each KV tile
    rounded up to whole token groups, masks the logits past the sequence with −inf and then
    multiplies the softmax weights, 0 there, with the stale V rows of the block: 0 · NaN = NaN. vLLM
    hands a freed block to the next request as it is (last freed, first reused, without zeroing
    unless the model has Mamba layers), so a request whose steering made its activations non-finite
    leaves NaN rows that poison the attention of whichever request gets the block next. The worker
    therefore remembers every block a steered request was given (``tainted``) and zeroes such a
    block, in every layer, before the step in which vLLM hands it out again as a new block (never a
    block shared as a prefix-cache hit). Unsteered traffic never pays for it. Where the runner's KV
    cache is readable by block (CPU), a reused block is first checked: a steered request that left
    inf / NaN in it is flagged (a warning naming the request, its chain of map sets and λ; ``flagged``).
    """

    def __init__(
        self, config: EngineSteeringConfig, control: TokenControl, zero_blocks: Any = None, block_sizes: Any = None,
        non_finite: Any = None,
    ) -> None:
        self.set_names = config.set_names
        self.strength_range = config.strength_range
        self.control = control
        self.requests: dict[str, tuple[tuple[int, float], ...]] = {}  # req_id -> (slot, λ) chain of steered requests
        self.tainted: set[int] = set()  # blocks a steered request was given since they were last zeroed
        self._zero_blocks = zero_blocks  # callable(list[int]) zeroing KV-cache blocks in every layer
        self._block_sizes = block_sizes  # callable() -> block size of each KV-cache group
        self._non_finite = non_finite  # callable(list[int]) -> the blocks holding inf / NaN, or None
        self._writers: dict[int, tuple[str, tuple[tuple[int, float], ...]]] = {}  # tainted block -> (req_id, (slot, λ) chain) of its last steered owner
        # req_id -> ((map set, λ), ...) chain of the last FLAGGED_KEPT requests that went non-finite (oldest dropped first)
        self.flagged: dict[str, tuple[tuple[str, float], ...]] = {}

    def track(self, scheduler_output: Any) -> None:
        """Learns the step's new requests, forgets the finished ones, and zeroes reused blocks that
        a steered request wrote before this step runs."""
        given: list[tuple[str, Any, int]] = []  # (req_id, block ids per group, computed tokens)
        for new in getattr(scheduler_output, "scheduled_new_reqs", ()):
            params = getattr(new, "sampling_params", None)
            extra = getattr(params, "extra_args", None) if params is not None else None
            try:
                chain = validate_chain(extra, self.set_names, self.strength_range)
            except RequestSteeringError as err:  # the front end rejects these; never fail a step here
                logger.warning("act_fast: request %s runs unsteered: %s", new.req_id, err)
                chain = ()
            if chain:
                self.requests[new.req_id] = chain
            else:
                self.requests.pop(new.req_id, None)
            given.append((new.req_id, getattr(new, "block_ids", None), int(getattr(new, "num_computed_tokens", 0))))
        cached = getattr(scheduler_output, "scheduled_cached_reqs", None)
        if cached is not None:
            resumed = getattr(cached, "resumed_req_ids", set()) or set()
            for i, req_id in enumerate(getattr(cached, "req_ids", ())):
                blocks = cached.new_block_ids[i] if i < len(cached.new_block_ids) else None
                computed = int(cached.num_computed_tokens[i]) if req_id in resumed else 0
                given.append((req_id, blocks, computed))
        for req_id in getattr(scheduler_output, "finished_req_ids", ()):
            self.requests.pop(req_id, None)
        if self._zero_blocks is not None and given:
            self._hygiene(given)

    def _hygiene(self, given: list[tuple[str, Any, int]]) -> None:
        sizes = self._block_sizes()
        reused = []
        for _, groups, computed in given:
            reused.extend(b for b in _fresh(groups, computed, sizes) if b in self.tainted)
        if reused:
            reused = sorted(set(reused))
            if self._non_finite is not None:
                self._flag(self._non_finite(reused))
            self._zero_blocks(reused)
            self.tainted.difference_update(reused)
            for b in reused:
                self._writers.pop(b, None)
        for req_id, groups, _ in given:
            if req_id in self.requests:
                chain = self.requests[req_id]
                for b in (b for blocks in groups or () for b in blocks if b != 0):  # 0: vLLM's null block
                    self.tainted.add(b)
                    self._writers[b] = (req_id, chain)

    def _flag(self, blocks: list[int]) -> None:
        for b in blocks:
            writer = self._writers.get(b)
            if writer is None or writer[0] in self.flagged:
                continue
            req_id, chain = writer
            setting = tuple((self.set_names[slot - 1], strength) for slot, strength in chain)
            self.flagged[req_id] = setting
            if len(self.flagged) > FLAGGED_KEPT:
                del self.flagged[next(iter(self.flagged))]
            logger.warning(
                "act_fast: request %s (map sets and λ %s) drove the model to inf/NaN: its output is not meaningful and its KV "
                "blocks held non-finite values (zeroed before reuse, no other request reads them); its maps overflow at this λ",
                req_id, ", ".join(f"{name!r}: {strength}" for name, strength in setting),
            )

    def fill(self, req_ids: list[str], tokens_per_request: np.ndarray) -> None:
        """Per-token λ and slot (a ``[S]`` chain of them with several map sets) for a step whose
        requests run in ``req_ids`` order."""
        num = len(tokens_per_request)
        shape = (num,) if self.control.width == 0 else (num, self.control.width)
        slots = np.zeros(shape, dtype=np.int32)
        strengths = np.zeros(shape, dtype=np.float32)
        if self.requests:
            for i, req_id in enumerate(req_ids[:num]):
                chain = self.requests.get(req_id, ())
                if self.control.width == 0:
                    if chain:
                        slots[i], strengths[i] = chain[0]
                    continue
                for k, (slot, strength) in enumerate(chain):
                    slots[i, k], strengths[i, k] = slot, strength
        self.control.fill(slots, strengths, tokens_per_request)


def _hook_v1(runner: Any, steering: WorkerSteering) -> None:
    prepare = runner._prepare_inputs

    def _prepare_inputs(scheduler_output: Any, num_scheduled_tokens: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        steering.fill(list(runner.input_batch.req_ids), num_scheduled_tokens)
        return prepare(scheduler_output, num_scheduled_tokens, *args, **kwargs)

    runner._prepare_inputs = _prepare_inputs


def _hook_v2(runner: Any, steering: WorkerSteering) -> None:
    prepare = runner.prepare_inputs

    def prepare_inputs(*args: Any, **kwargs: Any) -> Any:
        batch = prepare(*args, **kwargs)
        steering.fill(list(batch.req_ids), np.asarray(batch.num_scheduled_tokens)[: batch.num_reqs])
        return batch

    runner.prepare_inputs = prepare_inputs


def _hook_execute(runner: Any, steering: WorkerSteering) -> None:
    execute = runner.execute_model

    def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("dummy_run", False):
            steering.track(scheduler_output)
        return execute(scheduler_output, *args, **kwargs)

    runner.execute_model = execute_model


def _block_zeroer(runner: Any) -> tuple[Any, Any, Any]:
    """``(zero(block_ids), block_sizes(), non_finite(block_ids) or None)`` with vLLM's own block zeroing of the runner (the one it
    uses for Mamba caches): the CPU runner zeroes ``kv_cache[block]`` of every full-attention layer,
    the GPU runners a precomputed list of block segments, built here on first use."""
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as RunnerV2

    def zero(block_ids: list[int]) -> None:
        if isinstance(runner, RunnerV2):
            if runner.kv_block_zeroer is None:
                runner._init_kv_zero_meta()
            runner.kv_block_zeroer.zero_block_ids(block_ids)
            return
        if type(runner).__name__ != "CPUModelRunner" and not hasattr(runner, "_kv_block_zeroer"):
            runner._init_kv_zero_meta()
        runner._zero_block_ids(block_ids)

    def block_sizes() -> list[int]:
        return [group.kv_cache_spec.block_size for group in runner.kv_cache_config.kv_cache_groups]

    def non_finite(block_ids: list[int]) -> list[int]:
        return non_finite_blocks(runner.kv_caches, block_ids)

    return zero, block_sizes, (non_finite if type(runner).__name__ == "CPUModelRunner" else None)


def non_finite_blocks(kv_caches: list[torch.Tensor], block_ids: list[int]) -> list[int]:
    """The blocks of ``block_ids`` holding inf or NaN in any layer's cache (``[num_blocks, ...]``,
    a block on dim 0, as vLLM's CPU cache). The largest magnitude of each block is inf or NaN
    exactly then (``amax`` propagates NaN): a fraction of the time of ``isfinite(...).any()``.
    float8 caches are widened first (torch has no float8 ``amax`` on CPU); a cache of raw bytes
    (float8 stored as uint8) cannot be read here and is not checked (its blocks are still zeroed)."""
    index = torch.tensor(block_ids, dtype=torch.long)
    bad = torch.zeros(len(block_ids), dtype=torch.bool)
    for kv in kv_caches:
        if not kv.is_floating_point():
            continue
        blocks = kv.index_select(0, index.to(kv.device)).flatten(1)
        if blocks.element_size() == 1:
            blocks = blocks.float()
        bad |= ~torch.isfinite(blocks.abs_().amax(1)).cpu()
    return [b for b, is_bad in zip(block_ids, bad.tolist()) if is_bad]


def install_in_worker(vllm_config: Any, runner: Any, config: EngineSteeringConfig) -> WorkerSteering:
    """Loads and checks the map sets, installs them in ``runner.model`` and hooks the runner.

    Must run after the model is loaded and before its first forward (vLLM compiles it then).

    Raises:
        SteeringConfigError: a map file is missing or damaged (names the file).
        SiteError: maps that do not fit the model (names the file and the site).
        UnsupportedEngineError: an engine configuration steering cannot follow.
        TypeError: a model runner this version of act_fast does not know.
    """
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as RunnerV2
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner as RunnerV1

    if not isinstance(runner, (RunnerV1, RunnerV2)):
        raise TypeError(f"act_fast steering supports vLLM's V1 and V2 model runners, not {type(runner).__qualname__}")
    _check_engine(vllm_config, runner)
    map_sets = load_map_sets(config)
    model = runner.get_model()
    plans = plan_sites(model, map_sets, {n: str(p) for n, p in config.map_files.items()}, vllm_config.model_config.get_hidden_size())
    device = next(model.parameters()).device
    # one set: [tokens] buffers; several: [tokens, S] chains (S = min(sets, 4))
    width = chain_width(len(config.set_names)) if len(config.set_names) > 1 else 0
    control = TokenControl(runner.max_num_tokens, device, width)
    install_sites(model, plans, map_sets, control)
    steering = WorkerSteering(config, control, *_block_zeroer(runner))
    _hook_execute(runner, steering)
    (_hook_v2 if isinstance(runner, RunnerV2) else _hook_v1)(runner, steering)
    # vLLM keys its compile cache on the config hash, which covers additional_config: make that
    # hash depend on the maps' contents, not only on their paths.
    entry = {**vllm_config.additional_config[CONFIG_KEY], DIGEST_FIELD: maps_digest(config)}
    vllm_config.additional_config = {**vllm_config.additional_config, CONFIG_KEY: entry}
    modes = {p.mode for p in plans}
    logger.info(
        "act_fast: steering %d sites (%s) with map sets %s; per-token buffers for %d tokens",
        len(plans), ", ".join(f"{sum(p.mode == m for p in plans)} {m}" for m in sorted(modes)), list(config.set_names), control.max_tokens,
    )
    return steering
