"""Loading the user's model and tokenizer by hub name or local folder, with one-line errors (no
network, not cached, no such folder, not a causal LM)."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from act_fast.cli.common import DTYPES, CliError, one_line
from act_fast.maps import SteeringMaps, model_fingerprint

_OFFLINE_HINT = (
    "not a local folder, and the Hugging Face hub is unreachable (no network, or HF_HUB_OFFLINE=1) and the model is "
    "not in the local cache, or no model of that name exists"
)


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def _hub(name: str) -> dict[str, bool]:
    """:func:`act_fast.hub.hub_kwargs`, failing at once (not after transformers' retries) when the
    hub is unreachable and the model is not cached."""
    from act_fast.hub import HubUnreachable, hub_kwargs

    try:
        return hub_kwargs(name)
    except HubUnreachable as err:
        raise CliError(f"cannot load model {name!r}: {err}") from None


def load_config(name: str) -> Any:
    """The model's ``transformers`` config (cheap: no weights), or a one-line :class:`CliError`."""
    try:
        from transformers import AutoConfig
    except ImportError:
        raise CliError("this command needs transformers: pip install 'act_fast[transformers]'") from None
    path = Path(name).expanduser()
    if _looks_local(name):
        if not path.exists():
            raise CliError(f"no model folder at {path}")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise CliError(f"{path} is not a model folder (no config.json)")
    try:
        return AutoConfig.from_pretrained(str(path) if _looks_local(name) else name, **_hub(name))
    except CliError:
        raise
    except Exception as err:  # noqa: BLE001 -- hub, network and config errors all mean "cannot load"
        where = f"model folder {path}" if _looks_local(name) else f"model {name!r}"
        hint = "" if _looks_local(name) else f": {_OFFLINE_HINT}"
        raise CliError(f"cannot load {where} ({type(err).__name__}: {one_line(err)[:300]}){hint}") from None


def is_causal_lm(config: Any) -> bool:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING


def fingerprint_of_config(config: Any) -> tuple[str, str]:
    """:func:`act_fast.maps.model_fingerprint` of a model with this config, before loading it."""
    return model_fingerprint(SimpleNamespace(config=config))


def check_maps_fit(maps: SteeringMaps, config: Any, path: str, *, allow_other: bool) -> None:
    """Refuses maps fitted on another model (type or config fingerprint), before the weights load."""
    model_type, fingerprint = fingerprint_of_config(config)
    if allow_other:  # the user said so: steer() need not warn again
        warnings.filterwarnings("ignore", message=r".*were fitted on a .* model with another config")
    if maps.model_type and model_type and maps.model_type != model_type:
        raise CliError(f"{path} holds maps for a {maps.model_type!r} model; this model is {model_type!r}")
    if not allow_other and maps.model_fingerprint and fingerprint and maps.model_fingerprint != fingerprint:
        raise CliError(
            f"{path} holds maps fitted on another {model_type} model (config fingerprint {maps.model_fingerprint[:12]}…, "
            f"this model's {fingerprint[:12]}…); pass --allow-model-mismatch to apply them anyway"
        )


def load_model(name: str, device: str, dtype: str = "auto", *, causal: bool = False, config: Any = None) -> tuple[Any, nn.Module]:
    """``(tokenizer, model)`` in eval mode on ``device``.

    Causal LMs load with ``AutoModelForCausalLM`` (so site names match between ``collect``,
    ``fit``, ``generate`` and ``bench``); other models (encoders) with ``AutoModel`` unless
    ``causal`` is required. The tokenizer gets a pad token (eos) when it has none.
    """
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    config = load_config(name) if config is None else config
    causal_lm = is_causal_lm(config)
    if causal and not causal_lm:
        raise CliError(f"{name} is not a causal LM (model_type {getattr(config, 'model_type', '?')!r}); this command generates text")
    source = str(Path(name).expanduser()) if _looks_local(name) else name
    transformers.utils.logging.disable_progress_bar()  # the commands report their own progress
    kind = "dtype" if tuple(int(v) for v in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"
    kwargs = {kind: "auto" if dtype == "auto" else DTYPES[dtype]}
    try:
        hub = _hub(name)
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        model = (AutoModelForCausalLM if causal_lm else AutoModel).from_pretrained(source, **kwargs, **hub)
    except CliError:
        raise
    except Exception as err:  # noqa: BLE001
        hint = "" if _looks_local(name) else f": {_OFFLINE_HINT}"
        raise CliError(f"cannot load {name!r} ({type(err).__name__}: {one_line(err)[:300]}){hint}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CliError(f"the tokenizer of {name!r} has neither a pad nor an eos token; batches cannot be padded")
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = model.to(device)
    except torch.OutOfMemoryError:
        raise CliError(f"{name} does not fit in {device} memory; try --dtype bfloat16 or another device") from None
    return tokenizer, model.eval()
