"""Real clients through a real drover: the `ollama` and `openai` Python packages, streaming and not.

Backends: the mock Ollama server (target/debug/examples/mock_ollama) for the Ollama API,
and llama.cpp's server (PyPI xllamacpp) with SmolLM2-135M as an openai-kind server doing
real inference. Answers are kept to a few tokens: the model shares two cores with the rest.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import ollama
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {seconds}s")


@pytest.fixture(scope="module")
def fleet():
    procs = []
    tmp = tempfile.mkdtemp(prefix="drover-e2e-")
    try:
        mock_port, llama_port, drover_port, metrics_port = free_port(), free_port(), free_port(), free_port()
        mock = subprocess.Popen([str(TARGET / "examples" / "mock_ollama"), str(mock_port), "qwen3:14b,llama3:latest"])
        procs.append(mock)
        llama = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "e2e" / "llama_server.py"), str(llama_port)],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "llama.log"), "w"),
        )
        procs.append(llama)
        wait_http(f"http://127.0.0.1:{mock_port}/api/version", 20, mock)
        wait_http(f"http://127.0.0.1:{llama_port}/v1/models", 120, llama)
        config = f"""
server: {{ listen: "127.0.0.1:{drover_port}", metrics_listen: "127.0.0.1:{metrics_port}" }}
database: {{ url: "sqlite://{tmp}/drover.db" }}
pingora: {{ upgrade_sock: "{tmp}/upgrade.sock", pid_file: "{tmp}/drover.pid" }}
load_balancer: {{ health_check_interval: 300ms }}
servers:
  - "http://127.0.0.1:{mock_port}"
  - {{ url: "http://127.0.0.1:{llama_port}", kind: openai }}
routes:
  - {{ virtual_model_name: chat, server_url: "http://127.0.0.1:{mock_port}", actual_model_name: "qwen3:14b" }}
  - {{ virtual_model_name: smol, server_url: "http://127.0.0.1:{llama_port}", actual_model_name: smollm2 }}
"""
        path = os.path.join(tmp, "drover.yaml")
        with open(path, "w") as f:
            f.write(config)
        drover = subprocess.Popen(
            [str(TARGET / "drover"), "serve", "-c", path], stderr=open(os.path.join(tmp, "drover.log"), "w")
        )
        procs.append(drover)
        url = f"http://127.0.0.1:{drover_port}"
        wait_http(f"{url}/status", 20, drover)
        time.sleep(1)  # one health round: inventories known
        yield url
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_ollama_client_chat_and_stream(fleet):
    client = ollama.Client(host=fleet)
    answer = client.chat(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "qwen3:14b"
    assert answer.message.content.endswith("from mock")
    assert answer.done

    parts = list(client.chat(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert len(parts) == 5
    assert parts[-1].done and parts[-1].eval_count == 4
    assert "".join(p.message.content for p in parts).startswith("tok0 tok1")

    gen = client.generate(model="chat", prompt="hi")
    assert gen.response.endswith("from mock")
    emb = client.embed(model="chat", input="hi")
    assert len(emb.embeddings[0]) == 3


def test_ollama_client_lists_the_fleet(fleet):
    client = ollama.Client(host=fleet)
    names = {m.model for m in client.list().models}
    assert {"chat", "smol", "qwen3:14b", "llama3:latest"} <= names
    client.chat(model="chat", messages=[{"role": "user", "content": "warm"}])
    time.sleep(0.8)
    loaded = {m.model for m in client.ps().models}
    assert "qwen3:14b" in loaded and "chat" in loaded


def test_ollama_client_sees_ollama_errors(fleet):
    client = ollama.Client(host=fleet)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="missing", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    assert "available models" in e.value.error


def test_openai_client_against_real_inference(fleet):
    client = openai.OpenAI(base_url=f"{fleet}/v1", api_key="unused", max_retries=0, timeout=60)
    done = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=3
    )
    assert done.choices[0].message.content
    assert done.usage.completion_tokens <= 3

    stream = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Say hi"}], max_tokens=3, stream=True
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert 1 <= len(pieces) <= 3


def test_openai_client_through_ollama_and_errors(fleet):
    client = openai.OpenAI(base_url=f"{fleet}/v1", api_key="unused", max_retries=0)
    done = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert done.model == "qwen3:14b"
    chunks = list(
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    ids = {m.id for m in client.models.list()}
    assert {"chat", "smol"} <= ids
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(ollama.ResponseError) as e:
        # Ollama's native API cannot go to the openai-kind llama.cpp server, and drover says so.
        ollama.Client(host=fleet).chat(model="smol", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503
    assert "openai-kind server cannot serve" in e.value.error
