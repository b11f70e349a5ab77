"""Real clients through a real drover: the `ollama`, `openai`, `anthropic` and `httpx` Python
packages, streaming and not, over plain HTTP and over TLS (HTTP/1.1 and HTTP/2), with API keys.

Backends: the mock Ollama server (target/debug/examples/mock_ollama) for the Ollama API,
and llama.cpp's server (PyPI xllamacpp) with SmolLM2-135M as an openai-kind server doing
real inference, started with an API key of its own that drover sends (servers: api_key).
Answers are kept to a few tokens: the model shares two cores with the rest.
"""

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import anthropic
import httpx
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


class Fleet:
    """drover's plain and TLS addresses, the test certificate, and an API key it accepts."""

    def __init__(self, url, https, cert, key, llama):
        self.url, self.https, self.cert, self.key, self.llama = url, https, cert, key, llama

    def ollama(self, **kw) -> ollama.Client:
        return ollama.Client(host=self.url, headers={"Authorization": f"Bearer {self.key}"}, **kw)

    def openai(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=60, **kw)


def make_certificate(directory: str) -> str:
    cert = os.path.join(directory, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", os.path.join(directory, "key.pem"), "-out", cert],
        check=True, capture_output=True,
    )
    return cert


@pytest.fixture(scope="module")
def fleet():
    procs = []
    tmp = tempfile.mkdtemp(prefix="drover-e2e-")
    try:
        mock_port, llama_port, drover_port, metrics_port = free_port(), free_port(), free_port(), free_port()
        tls_port = free_port()
        cert = make_certificate(tmp)
        llama_key = "llama-upstream-secret"
        mock = subprocess.Popen([str(TARGET / "examples" / "mock_ollama"), str(mock_port), "qwen3:14b,llama3:latest"])
        procs.append(mock)
        llama = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "e2e" / "llama_server.py"), str(llama_port), llama_key],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "llama.log"), "w"),
        )
        procs.append(llama)
        wait_http(f"http://127.0.0.1:{mock_port}/api/version", 20, mock)
        wait_http(f"http://127.0.0.1:{llama_port}/health", 120, llama)
        config = f"""
server:
  listen: "127.0.0.1:{drover_port}"
  metrics_listen: "127.0.0.1:{metrics_port}"
  tls: {{ listen: "127.0.0.1:{tls_port}", cert: "{cert}", key: "{tmp}/key.pem" }}
database: {{ url: "sqlite://{tmp}/drover.db" }}
pingora: {{ upgrade_sock: "{tmp}/upgrade.sock", pid_file: "{tmp}/drover.pid" }}
load_balancer: {{ health_check_interval: 300ms }}
auth: {{ require_keys: true }}
servers:
  - "http://127.0.0.1:{mock_port}"
  - {{ url: "http://127.0.0.1:{llama_port}", kind: openai, api_key: "{llama_key}" }}
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
        wait_http(f"{url}/health", 20, drover)
        made = urllib.request.Request(
            f"{url}/admin/keys",
            data=json.dumps({"name": "e2e", "models": ["*"]}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(made, timeout=5) as r:
            key = json.load(r)["key"]
        time.sleep(1)  # one health round: inventories known
        yield Fleet(url, f"https://localhost:{tls_port}", cert, key, f"http://127.0.0.1:{llama_port}")
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_ollama_client_chat_and_stream(fleet):
    client = fleet.ollama()
    answer = client.chat(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "chat"  # as Ollama does: the name it was asked for
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
    client = fleet.ollama()
    names = {m.model for m in client.list().models}
    assert {"chat:latest", "smol:latest", "qwen3:14b", "llama3:latest"} <= names
    client.chat(model="chat", messages=[{"role": "user", "content": "warm"}])
    time.sleep(0.8)
    loaded = {m.model for m in client.ps().models}
    assert "qwen3:14b" in loaded and "chat:latest" in loaded


def test_ollama_client_sees_ollama_errors(fleet):
    client = fleet.ollama()
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="missing", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    assert "available models" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=fleet.url).chat(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401


def test_openai_client_against_real_inference(fleet):
    # The llama.cpp server wants its own key, which only drover has.
    r = httpx.post(f"{fleet.llama}/v1/chat/completions", json={"model": "smollm2", "messages": [], "max_tokens": 1})
    assert r.status_code == 401
    client = fleet.openai()
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
    client = fleet.openai()
    done = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert done.model == "qwen3:14b"
    chunks = list(
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    ids = {m.id for m in client.models.list()}
    assert {"chat:latest", "smol:latest"} <= ids
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{fleet.url}/v1", api_key="drv_wrong", max_retries=0).models.list()


def test_ollama_client_against_llama_cpp_through_translation(fleet):
    # llama.cpp speaks only OpenAI's API; drover translates Ollama's both ways.
    client = fleet.ollama()
    answer = client.chat(model="smol", messages=[{"role": "user", "content": "Say hi"}], options={"num_predict": 3})
    assert answer.model == "smol" and answer.done and answer.done_reason in ("stop", "length")
    assert answer.message.role == "assistant" and answer.message.content
    assert answer.eval_count and answer.eval_count <= 3 and answer.prompt_eval_count > 0
    assert answer.total_duration > 0
    parts = list(
        client.chat(model="smol", messages=[{"role": "user", "content": "Say hi"}], stream=True, options={"num_predict": 3})
    )
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts)
    gen = client.generate(model="smol", prompt="Once upon a time", options={"num_predict": 3, "temperature": 0})
    assert gen.done and gen.response
    shown = client.show("smol")
    assert "completion" in shown.capabilities
    assert any(k.endswith("context_length") and v == 512 for k, v in shown.modelinfo.items()), shown.modelinfo
    assert "smol:latest" in {m.model for m in client.list().models}


def test_anthropic_and_responses_clients(fleet):
    claude = anthropic.Anthropic(base_url=fleet.url, api_key=fleet.key, max_retries=0)
    message = claude.messages.create(model="chat", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert message.model == "qwen3:14b"
    assert message.content[0].text.endswith("from mock")
    with claude.messages.stream(model="chat", max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
    assert text.startswith("tok0 tok1")
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="missing", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "not_found_error"

    answer = fleet.openai().responses.create(model="chat", input="hi")
    assert answer.output_text.endswith("from mock")


def test_tls_with_real_clients_http1_and_http2(fleet):
    # Clients that trust only the test certificate.
    trust = ssl.create_default_context(cafile=fleet.cert)
    with httpx.Client(verify=trust, http2=True) as h2:
        r = h2.get(f"{fleet.https}/api/tags", headers={"Authorization": f"Bearer {fleet.key}"})
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        assert any(m["name"] == "chat:latest" for m in r.json()["models"])
        r = h2.post(
            f"{fleet.https}/api/chat",
            headers={"Authorization": f"Bearer {fleet.key}"},
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        )
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        assert r.json()["model"] == "chat"
        assert r.headers["x-drover-model"] == "qwen3:14b"
    client = ollama.Client(host=fleet.https, verify=trust, headers={"Authorization": f"Bearer {fleet.key}"})
    parts = list(client.chat(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert parts[-1].done
    tls_openai = openai.OpenAI(
        base_url=f"{fleet.https}/v1", api_key=fleet.key, max_retries=0, http_client=httpx.Client(verify=trust)
    )
    assert tls_openai.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}]).model
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{fleet.https}/health")  # the system's CAs do not vouch for a self-signed certificate


def test_ollama_client_manages_models_through_drover(fleet):
    client = fleet.ollama()
    # A pull through drover: the real client reads the merged progress to its final success.
    progress = list(client.pull("chat", stream=True))
    assert progress[-1].status == "success"
    assert any(p.total == 1000 and p.completed == 500 for p in progress)
    assert client.pull("chat").status == "success"
    # Copy where the source is, then delete the copy (drover's admin: a loopback client here).
    assert client.copy("chat", "chat-copy").status == "success"
    assert "chat-copy:latest" in {m.model for m in client.list().models}
    assert client.delete("chat-copy").status == "success"
    assert "chat-copy:latest" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("chat-copy")
    assert e.value.status_code == 404
    # A model the registry lacks: the client raises with the server's words.
    with pytest.raises(ollama.ResponseError) as e:
        list(client.pull("missing-model", stream=True))
    assert "file does not exist" in e.value.error
