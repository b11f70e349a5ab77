module drover/ollama_decode

go 1.19
