"""Steering inside vLLM: map sets per engine, map set and λ per request, in vLLM's compiled mode.

Installing ``act_fast[vllm]`` registers :func:`act_fast.vllm.plugin.register` as a vLLM general
plugin. Engines started with ``additional_config={"act_fast": {"maps": {name: map_file}}}`` steer
each request by its ``SamplingParams.extra_args`` (server: ``vllm_xargs``) ``act_fast_maps`` (a
map-set name) and ``act_fast_strength`` (λ, inside the engine's ``"strength_range"``, default
[-10, 10]). Engines without that entry are left untouched.
"""

from act_fast.vllm.config import CONFIG_KEY, MAPS_FIELD, SteeringConfigError
from act_fast.vllm.requests import MAPS_KEY, STRENGTH_KEY, RequestSteeringError

__all__ = ["CONFIG_KEY", "MAPS_FIELD", "MAPS_KEY", "STRENGTH_KEY", "RequestSteeringError", "SteeringConfigError"]
