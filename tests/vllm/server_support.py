"""An OpenAI-compatible vLLM server on 127.0.0.1 for the tests, and small clients for it
(completions, streamed or not, and the server's memory)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    base: str  # http://127.0.0.1:PORT
    model: str
    process: subprocess.Popen
    log: Path

    def rss_by_process(self) -> dict[str, int]:
        """Resident memory of the server and of every process it started (the engine core, workers),
        by process name (``VLLM::EngineCore``, ``VLLM::Worker``, ...; pid appended on a clash)."""
        import psutil

        root = psutil.Process(self.process.pid)
        rss = {}
        for proc in [root, *root.children(recursive=True)]:
            try:
                name = "server" if proc.pid == root.pid else proc.name()
                rss[name if name not in rss else f"{name}-{proc.pid}"] = proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return rss

    def rss_bytes(self) -> int:
        """Resident memory of the server and every process it started, together."""
        return sum(self.rss_by_process().values())


@contextmanager
def running_server(checkpoint: Path, log_path: Path, *args: str) -> Iterator[Server]:
    """Starts the server (``test_server.serve_command``) on a free port with ``args`` after the model,
    waits until ``/health`` answers, stops it on exit. Fails the test with the log's tail when it exits
    or is not healthy within :data:`START_TIMEOUT_S`."""
    from test_server import serve_command

    port = free_port()
    command = [*serve_command(), str(checkpoint), "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(base):
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server is not healthy after {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        yield Server(base, str(checkpoint), proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def complete(server: Server, prompt: str, xargs: dict | None, max_tokens: int, stream: bool = False) -> tuple[int, list[int] | None, str]:
    """One ``/v1/completions`` request, greedy, with the token ids returned: ``(HTTP status, token ids
    or None, body text)``. A streamed answer is read to its end; its token ids are the chunks' in
    order; an error event in it gives ``(HTTP status, None, the event)``."""
    body = {"model": server.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "return_token_ids": True, "stream": stream}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    request = urllib.request.Request(f"{server.base}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as err:
        return err.code, None, err.read().decode()
    if not stream:
        return status, json.loads(text)["choices"][0]["token_ids"], text
    tokens: list[int] = []
    for line in text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[len("data: "):])
        if "error" in event:
            return status, None, line
        for choice in event.get("choices", []):
            tokens.extend(choice.get("token_ids") or [])
    return status, tokens, text
