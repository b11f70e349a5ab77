"""Real clients through a real drover: the `ollama`, `openai`, `anthropic` and `httpx` Python
packages, streaming and not, over plain HTTP and over TLS (HTTP/1.1 and HTTP/2), with API keys.
The fleet they run against is in conftest.py.
"""

import ssl
import time

import anthropic
import httpx
import ollama
import openai
import pytest


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
    # Embeddings from llama.cpp (a second server, started to serve them), new API and old.
    emb = client.embed(model="smol-embed", input=["hello", "world"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 576 and emb.model == "smol-embed"
    assert len(client.embeddings(model="smol-embed", prompt="hello").embedding) == 576
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

    # llama.cpp, whatever of the two APIs it has: natively, or as chat completions through drover.
    small = claude.messages.create(model="smol", max_tokens=3, messages=[{"role": "user", "content": "Say hi"}])
    assert small.type == "message" and small.content and small.content[0].text
    with claude.messages.stream(model="smol", max_tokens=3, messages=[{"role": "user", "content": "Say hi"}]) as s:
        assert "".join(s.text_stream)
    small = fleet.openai().responses.create(model="smol", input="Say hi", max_output_tokens=3)
    assert small.output_text


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
