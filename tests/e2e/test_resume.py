"""Streams whose server dies mid-answer, read by real clients: the `ollama`, `openai` and
`anthropic` packages' own stream parsers (and their accumulating helpers) must see one
well-formed answer. The first server of each model breaks every stream after a few lines;
the continuation comes from a second mock server, or from llama.cpp doing real inference on
an assistant prefill. Its own drover (keys off) in front; llama.cpp from conftest.py's fleet.
"""

import subprocess
import tempfile

import anthropic
import ollama
import openai
import pytest

from conftest import TARGET, free_port, run_drover, wait_http

FULL = "tok0 tok1 tok2 tok3 tok4 tok5 "


@pytest.fixture(scope="module")
def resuming(fleet):
    procs = []
    tmp = tempfile.mkdtemp(prefix="drover-resume-")
    try:
        breaking, whole = free_port(), free_port()
        models = "m:1b,smollm2"
        # Six tokens at 10 ms; the first server breaks each stream after three lines.
        for p, extra in ((breaking, ["3"]), (whole, [])):
            mock = subprocess.Popen([str(TARGET / "examples" / "mock_ollama"), str(p), models, "10", "6", *extra])
            procs.append(mock)
            wait_http(f"http://127.0.0.1:{p}/api/version", 20, mock)
        config = f"""
load_balancer: {{ health_check_interval: 300ms, max_fails: 1000 }}
servers:
  - {{ url: "{fleet.llama}", kind: openai, api_key: "llama-upstream-secret" }}
routes:
  - {{ virtual_model_name: m, server_url: "http://127.0.0.1:{breaking}", actual_model_name: "m:1b", priority: 1 }}
  - {{ virtual_model_name: m, server_url: "http://127.0.0.1:{whole}", actual_model_name: "m:1b", priority: 2 }}
  - {{ virtual_model_name: real, server_url: "http://127.0.0.1:{breaking}", actual_model_name: smollm2, priority: 1 }}
  - {{ virtual_model_name: real, server_url: "{fleet.llama}", actual_model_name: smollm2, priority: 2 }}
"""
        yield run_drover(tmp, "resume", config, procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_ollama_client_reads_one_answer(resuming):
    client = ollama.Client(host=resuming)
    parts = list(client.chat(model="m", messages=[{"role": "user", "content": "count"}], stream=True))
    assert "".join(p.message.content for p in parts) == FULL
    assert parts[-1].done and parts[-1].eval_count == 6
    assert sum(1 for p in parts if p.done) == 1
    parts = list(client.generate(model="m", prompt="count: ", stream=True))
    assert "".join(p.response for p in parts) == FULL and parts[-1].done


def test_openai_client_and_its_stream_helper_read_one_answer(resuming):
    client = openai.OpenAI(base_url=f"{resuming}/v1", api_key="none", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "count"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FULL
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage.completion_tokens == 6
    # The accumulating helper rebuilds the message from the deltas.
    with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "count"}]) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == FULL
    assert final.choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].text or "" for c in client.completions.create(model="m", prompt="count: ", stream=True))
    assert text == FULL


def test_openai_responses_stream_helper_reads_one_answer(resuming):
    client = openai.OpenAI(base_url=f"{resuming}/v1", api_key="none", max_retries=0)
    with client.responses.stream(model="m", input="count") as s:
        deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert deltas == FULL
    assert final.output_text == FULL
    assert final.usage.output_tokens == 6


def test_anthropic_client_and_its_stream_helper_read_one_answer(resuming):
    claude = anthropic.Anthropic(base_url=resuming, api_key="none", max_retries=0)
    with claude.messages.stream(model="m", max_tokens=32, messages=[{"role": "user", "content": "count"}]) as s:
        message = s.get_final_message()
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == FULL
    assert message.usage.output_tokens == 6


def test_llama_cpp_continues_an_assistant_prefill(resuming):
    """The continuation from real inference: llama.cpp takes the text so far as a prefill."""
    client = openai.OpenAI(base_url=f"{resuming}/v1", api_key="none", max_retries=0, timeout=120)
    chunks = list(client.chat.completions.create(
        model="real", messages=[{"role": "user", "content": "Count to ten."}], stream=True, max_tokens=4))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("tok0 tok1 tok2 ")
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason is not None
    assert len({c.id for c in chunks}) == 1
