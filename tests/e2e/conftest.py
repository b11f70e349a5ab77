"""The fleet every client test runs against: a mock Ollama server and llama.cpp's server
(PyPI xllamacpp, SmolLM2-135M, an openai-kind server doing real inference, with an API key of
its own that drover sends) behind one drover that requires API keys (`fleet`, with TLS too),
and behind a second drover with keys off (`open_fleet`), for libraries whose users point them
at an Ollama address without a key. Started once per test session.
"""

import json
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


def run_drover(tmp: str, name: str, body: str, procs: list, server: str = "") -> str:
    """A drover of its own (listener, database and upgrade socket under `tmp`) with the config
    `body` beside them and `server` added to its server section; added to `procs`; its
    address once it answers."""
    port = free_port()
    config = f"""
server: {{ listen: "127.0.0.1:{port}", metrics_listen: "127.0.0.1:{free_port()}"{server} }}
database: {{ url: "sqlite://{tmp}/{name}.db" }}
pingora: {{ upgrade_sock: "{tmp}/{name}.sock", pid_file: "{tmp}/{name}.pid" }}
{body}"""
    path = os.path.join(tmp, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(config)
    proc = subprocess.Popen([str(TARGET / "drover"), "serve", "-c", path],
                            stderr=open(os.path.join(tmp, f"{name}.log"), "w"))
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", 20, proc)
    return url


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


@pytest.fixture(scope="session")
def fleet():
    procs = []
    tmp = tempfile.mkdtemp(prefix="drover-e2e-")
    try:
        mock_port, llama_port = free_port(), free_port()
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
        # The same model serving embeddings (llama.cpp serves only those when asked to).
        embed_port = free_port()
        embedder = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "e2e" / "llama_server.py"), str(embed_port), "", "--embeddings"],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "embed.log"), "w"),
        )
        procs.append(embedder)
        wait_http(f"http://127.0.0.1:{mock_port}/api/version", 20, mock)
        wait_http(f"http://127.0.0.1:{llama_port}/health", 120, llama)
        wait_http(f"http://127.0.0.1:{embed_port}/health", 120, embedder)
        fleet_yaml = f"""
load_balancer: {{ health_check_interval: 300ms }}
servers:
  - "http://127.0.0.1:{mock_port}"
  - {{ url: "http://127.0.0.1:{llama_port}", kind: openai, api_key: "{llama_key}" }}
  - {{ url: "http://127.0.0.1:{embed_port}", kind: openai }}
routes:
  - {{ virtual_model_name: chat, server_url: "http://127.0.0.1:{mock_port}", actual_model_name: "qwen3:14b" }}
  - {{ virtual_model_name: smol, server_url: "http://127.0.0.1:{llama_port}", actual_model_name: smollm2 }}
  - {{ virtual_model_name: smol-embed, server_url: "http://127.0.0.1:{embed_port}", actual_model_name: smollm2-embed }}
"""

        tls = f', tls: {{ listen: "127.0.0.1:{tls_port}", cert: "{cert}", key: "{tmp}/key.pem" }}'
        url = run_drover(tmp, "drover", "auth: { require_keys: true }\n" + fleet_yaml, procs, server=tls)
        open_url = run_drover(tmp, "open", fleet_yaml, procs)
        made = urllib.request.Request(
            f"{url}/admin/keys",
            data=json.dumps({"name": "e2e", "models": ["*"]}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(made, timeout=5) as r:
            key = json.load(r)["key"]
        time.sleep(1)  # one health round: inventories known
        fleet = Fleet(url, f"https://localhost:{tls_port}", cert, key, f"http://127.0.0.1:{llama_port}")
        fleet.open_url = open_url
        fleet.mock = f"http://127.0.0.1:{mock_port}"
        yield fleet
    finally:
        for p in procs:
            p.kill()
            p.wait()




@pytest.fixture(scope="session")
def open_fleet(fleet):
    """drover with API keys off, in front of the same servers: its address."""
    return fleet.open_url
