"""The vLLM general plugin (entry point ``vllm.general_plugins``: ``act_fast = act_fast.vllm.plugin:register``).

vLLM calls :func:`register` once in every process it starts (the front end, the engine core, each
worker). It wraps five vLLM methods; each wrapper does nothing unless the engine's
``additional_config`` has an ``"act_fast"`` entry:

- ``WorkerWrapperBase.init_device`` (every worker): the worker's ``load_model`` is wrapped
  to install the maps in the loaded model before vLLM's first forward (which compiles it), see
  :func:`act_fast.vllm.worker.install_in_worker`.
- ``InputProcessor.__init__`` (front end, before the engine core starts): reads the config and the
  map files, so a malformed config or a missing / damaged file fails engine start naming it.
- ``InputProcessor.process_inputs`` (front end, per request): rejects bad ``act_fast_*`` extra args.
- ``BaseServing._check_model`` (OpenAI server, per request, before any response is sent): the same
  check on ``vllm_xargs``, so a streamed bad request also gets HTTP 400 (not an error event in a
  200 stream).
- ``Request.from_engine_core_request`` (engine core, per request): a steered request gets a cache
  salt derived from its map set and λ, so it only shares prefix-cache blocks with requests steered
  the same way; unsteered requests keep their (absent or own) salt and share with each other.
"""

from __future__ import annotations

import functools
from typing import Any

from act_fast.vllm.config import engine_config, load_map_sets
from act_fast.vllm.requests import RequestSteeringError, parse_request, validate_request

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


def _processor_init(original: Any) -> Any:
    @functools.wraps(original)
    def __init__(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        original(self, vllm_config, *args, **kwargs)
        config = engine_config(vllm_config.additional_config)
        if config is not None:
            load_map_sets(config)  # fail engine start on a missing or damaged file, naming it
        self._act_fast_sets = None if config is None else config.set_names

    return __init__


def _check_request(processor: Any, request_id: str, extra: Any) -> None:
    """Raises the 400-mapped validation error when ``extra`` has bad ``act_fast_*`` arguments for the
    engine of ``processor`` (an ``InputProcessor``)."""
    if not extra:
        return
    sets = getattr(processor, "_act_fast_sets", None)
    try:
        if sets is None:
            if parse_request(extra) is not None:
                raise RequestSteeringError(
                    "this engine has no act_fast map sets; start it with "
                    'additional_config={"act_fast": {"maps": {"name": "file.safetensors"}}}'
                )
        else:
            validate_request(extra, sets)
    except RequestSteeringError as err:
        raise _request_error(f"request {request_id}: {err}") from err


def _process_inputs(original: Any) -> Any:
    @functools.wraps(original)
    def process_inputs(self: Any, *args: Any, **kwargs: Any) -> Any:
        # vLLM 0.32 calls process_inputs(request_id, prompt, params, ...) positionally.
        request_id = kwargs.get("request_id", args[0] if args else "")
        params = kwargs.get("params", args[2] if len(args) > 2 else None)
        _check_request(self, request_id, getattr(params, "extra_args", None))
        return original(self, *args, **kwargs)

    return process_inputs


def _check_model(original: Any) -> Any:
    # The OpenAI server runs process_inputs only once a streamed response has started (HTTP 200, the
    # error as an event); its request checks (_check_model, first in completions, chat and responses)
    # run before any response, so a bad request gets its 400 streamed or not.
    @functools.wraps(original)
    async def _check_model(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        error = await original(self, request, *args, **kwargs)
        processor = getattr(self, "input_processor", None)
        if error is not None or processor is None:
            return error
        try:
            _check_request(processor, getattr(request, "request_id", None) or "", getattr(request, "vllm_xargs", None))
        except ValueError as err:
            return self.create_error_response(str(err), param="vllm_xargs")
        return None

    return _check_model


# -- engine core ---------------------------------------------------------------------------------


def _from_engine_core_request(original: Any) -> Any:
    func = original.__func__

    @functools.wraps(func)
    def from_engine_core_request(cls: type, request: Any, *args: Any, **kwargs: Any) -> Any:
        params = getattr(request, "sampling_params", None)
        try:
            steering = parse_request(getattr(params, "extra_args", None))
        except RequestSteeringError:
            steering = None  # the worker runs it unsteered too
        if steering is not None:
            salt = steering.cache_key()
            request.cache_salt = salt if not request.cache_salt else f"{request.cache_salt}\x00{salt}"
        return func(cls, request, *args, **kwargs)

    return classmethod(from_engine_core_request)


def register() -> None:
    """Installs the wrappers (idempotent; vLLM may call general plugins more than once)."""
    from vllm.entrypoints.serve.engine.serving import BaseServing
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.request import Request
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    _wrap(WorkerWrapperBase, "init_device", _init_device)
    _wrap(InputProcessor, "__init__", _processor_init)
    _wrap(InputProcessor, "process_inputs", _process_inputs)
    _wrap(BaseServing, "_check_model", _check_model)
    _wrap(Request, "from_engine_core_request", _from_engine_core_request)
