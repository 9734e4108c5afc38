"""The vLLM general plugin (entry point ``vllm.general_plugins``: ``act_fast = act_fast.vllm.plugin:register``).

vLLM calls :func:`register` once in every process it starts (the front end, the engine core, each
worker). It first checks the installed vLLM version (:mod:`act_fast.vllm.version`), then wraps
these vLLM methods; each wrapper does nothing unless the engine's ``additional_config`` has an
``"act_fast"`` entry (or the request has ``act_fast_*`` keys):

- ``EngineArgs.create_engine_config`` (front end): ``Path`` values of the ``"act_fast"`` entry
  become ``str`` (vLLM hashes ``additional_config`` with ``json.dumps``).
- ``WorkerWrapperBase.init_device`` (every worker): the worker's ``load_model`` is wrapped
  to install the maps in the loaded model before vLLM's first forward (which compiles it), see
  :func:`act_fast.vllm.worker.install_in_worker`.
- ``InputProcessor.__init__`` (front end, before the engine core starts): reads the config and the
  map files, so a malformed config or a missing / damaged file fails engine start naming it.
- ``InputProcessor.process_inputs`` (front end, per request): refuses bad ``act_fast_*`` extra
  args (a λ outside the engine's ``strength_range`` included) and sets the request's prefix-cache
  salt (:mod:`act_fast.vllm.salt`): steered requests only share KV blocks with requests steered
  alike with the same map files, and no client salt can name a steered request's blocks.
- ``BaseServing._check_model`` (OpenAI server, per request, before any response is sent): the same
  check on ``vllm_xargs``, so a streamed bad request also gets HTTP 400 (not an error event in a
  200 stream).
- ``CompletionRequest`` / ``ChatCompletionRequest.to_beam_search_params`` (OpenAI server): vLLM's
  beam search builds its own ``SamplingParams`` without ``extra_args``, so steering would be
  silently dropped; a beam-search request with ``act_fast_*`` keys is refused instead (HTTP 400).
"""

from __future__ import annotations

import functools
from typing import Any

from act_fast.vllm.config import engine_config, file_digests, load_map_sets, normalise_paths
from act_fast.vllm.requests import KEY_PREFIX, RequestSteeringError, parse_request, validate_chain
from act_fast.vllm.salt import steered_salt, unsteered_salt
from act_fast.vllm.version import check_supported, installed_version, is_supported

_PATCHED = "_act_fast_wrapped"


def _wrap(owner: type, name: str, make: Any) -> None:
    """Replaces ``owner.name`` by ``make(original)`` once per process."""
    original = owner.__dict__[name]
    if getattr(getattr(original, "__func__", original), _PATCHED, False):
        return
    wrapped = make(original)
    setattr(getattr(wrapped, "__func__", wrapped), _PATCHED, True)
    setattr(owner, name, wrapped)


@functools.cache
def _request_error_class() -> type:
    from vllm.exceptions import VLLMValidationError

    class ActFastRequestError(VLLMValidationError, ValueError):
        """A bad ``act_fast_*`` request argument: HTTP 400 from the OpenAI server, a ValueError offline."""

    return ActFastRequestError


def _request_error(message: str) -> Exception:
    return _request_error_class()(message, parameter="vllm_xargs")


# -- worker --------------------------------------------------------------------------------------


def _wrap_load_model(worker: Any) -> None:
    load_model = worker.load_model

    @functools.wraps(load_model)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = load_model(*args, **kwargs)
        config = engine_config(worker.vllm_config.additional_config)
        if config is not None:
            from act_fast.vllm.worker import install_in_worker

            worker._act_fast = install_in_worker(worker.vllm_config, worker.model_runner, config)
        return out

    worker.load_model = wrapped


def _init_device(original: Any) -> Any:
    # init_device, not init_worker: vLLM loads the general plugins inside init_worker, so a wrapper of
    # init_worker would miss that very call. init_device comes after it and before load_model.
    @functools.wraps(original)
    def init_device(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        worker = getattr(self, "worker", None)
        if worker is not None and engine_config(self.vllm_config.additional_config) is not None:
            _wrap_load_model(worker)
        return out

    return init_device


# -- front end -----------------------------------------------------------------------------------


def _create_engine_config(original: Any) -> Any:
    @functools.wraps(original)
    def create_engine_config(self: Any, *args: Any, **kwargs: Any) -> Any:
        if engine_config(self.additional_config) is not None:
            check_supported()  # one line naming the supported range, before anything else runs
        self.additional_config = normalise_paths(self.additional_config)
        return original(self, *args, **kwargs)

    return create_engine_config


class _FrontEnd:
    """What the front end needs per request: set names, λ range and map-file digests."""

    def __init__(self, additional_config: Any) -> None:
        config = engine_config(additional_config)
        self.config = config
        if config is not None:
            load_map_sets(config)  # fail engine start on a missing or damaged file, naming it
            self.digests = file_digests(config)

    def check(self, request_id: str, extra: Any) -> tuple[tuple[int, float], ...]:
        """The request's ``(slot, λ)`` chain (empty: unsteered); raises the 400-mapped validation
        error for a bad request."""
        try:
            if self.config is None:
                if extra and parse_request(extra) is not None:
                    raise RequestSteeringError(
                        "this engine has no act_fast map sets; start it with "
                        'additional_config={"act_fast": {"maps": {"name": "file.safetensors"}}}'
                    )
                return ()
            return validate_chain(extra, self.config.set_names, self.config.strength_range)
        except RequestSteeringError as err:
            raise _request_error(f"request {request_id}: {err}") from err

    def salt(self, client_salt: str | None, chain: tuple[tuple[int, float], ...]) -> str | None:
        """The prefix-cache salt of a request steered by ``chain`` (the whole ordered chain)."""
        if not chain:
            return unsteered_salt(client_salt)
        names = self.config.set_names
        return steered_salt(client_salt, [(names[slot - 1], self.digests[names[slot - 1]], lam) for slot, lam in chain])


def _processor_init(original: Any) -> Any:
    @functools.wraps(original)
    def __init__(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        original(self, vllm_config, *args, **kwargs)
        self._act_fast = _FrontEnd(vllm_config.additional_config)

    return __init__


def _process_inputs(original: Any) -> Any:
    @functools.wraps(original)
    def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        # vLLM 0.32 calls process_inputs(request_id, prompt, params, ...) positionally.
        request_id = kwargs.get("request_id", args[0] if args else "")
        params = kwargs.get("params", args[2] if len(args) > 2 else None)
        front = getattr(self, "_act_fast", None)
        extra = getattr(params, "extra_args", None)
        chain = front.check(request_id, extra) if front is not None else ()
        request = original(self, *args, **kwargs)
        if front is not None and front.config is not None and hasattr(request, "cache_salt"):
            request.cache_salt = front.salt(request.cache_salt, chain)
        return request

    return process_inputs


def _check_model(original: Any) -> Any:
    # The OpenAI server runs process_inputs only once a streamed response has started (HTTP 200, the
    # error as an event); its request checks (_check_model, first in completions, chat and responses)
    # run before any response, so a bad request gets its 400 streamed or not.
    @functools.wraps(original)
    async def _check_model(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        error = await original(self, request, *args, **kwargs)
        front = getattr(getattr(self, "input_processor", None), "_act_fast", None)
        xargs = getattr(request, "vllm_xargs", None)
        if error is not None or front is None or not xargs:
            return error
        try:
            front.check(getattr(request, "request_id", None) or "", xargs)
        except ValueError as err:
            return self.create_error_response(str(err), param="vllm_xargs")
        return None

    return _check_model


def _to_beam_search_params(original: Any) -> Any:
    @functools.wraps(original)
    def to_beam_search_params(self: Any, *args: Any, **kwargs: Any) -> Any:
        keys = sorted(k for k in (getattr(self, "vllm_xargs", None) or {}) if isinstance(k, str) and k.startswith(KEY_PREFIX))
        if keys:
            raise _request_error(
                f"act_fast steering ({', '.join(keys)}) cannot be combined with use_beam_search: vLLM's beam search "
                "runs its own requests without vllm_xargs, so the steering would be silently dropped"
            )
        return original(self, *args, **kwargs)

    return to_beam_search_params


def register() -> None:
    """Installs the wrappers (idempotent; vLLM may call general plugins more than once)."""
    from vllm.engine.arg_utils import EngineArgs

    _wrap(EngineArgs, "create_engine_config", _create_engine_config)
    if not is_supported(installed_version()):
        return  # only the check above: engines with an "act_fast" entry fail at start, naming the range
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.serve.engine.serving import BaseServing
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    _wrap(WorkerWrapperBase, "init_device", _init_device)
    _wrap(InputProcessor, "__init__", _processor_init)
    _wrap(InputProcessor, "process_inputs", _process_inputs)
    _wrap(BaseServing, "_check_model", _check_model)
    _wrap(CompletionRequest, "to_beam_search_params", _to_beam_search_params)
    _wrap(ChatCompletionRequest, "to_beam_search_params", _to_beam_search_params)
