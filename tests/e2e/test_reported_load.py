"""The load a real llama.cpp server reports (its /slots), read by drover: conftest.py's fleet,
whose llama.cpp runs one slot. A client that reaches llama.cpp directly, not through drover,
fills that slot: drover sees it in /lb-stats and holds its own request until the slot frees,
rather than queue it inside llama.cpp."""

import json
import threading
import time
import urllib.request

import openai

LLAMA_KEY = "llama-upstream-secret"


def llama_row(url, llama):
    with urllib.request.urlopen(f"{url}/lb-stats", timeout=5) as r:
        stats = json.load(r)
    return next(s for s in stats["servers"] if s["url"] == llama)


def wait_for(url, llama, ok, seconds=20):
    deadline = time.time() + seconds
    while True:
        row = llama_row(url, llama)
        if ok(row):
            return row
        assert time.time() < deadline, row
        time.sleep(0.05)


def test_drover_reads_llama_cpp_slots_and_waits_for_one_a_direct_client_holds(fleet, open_fleet):
    idle = wait_for(open_fleet, fleet.llama, lambda r: r["reported_load"] and r["reported_load"]["running"] == 0)
    assert idle["reported_load"]["from"] == "/slots"
    assert idle["reported_load"]["slots"] == 1, idle

    # A client straight to llama.cpp: a long answer, streamed, holding its one slot.
    direct = openai.OpenAI(base_url=f"{fleet.llama}/v1", api_key=LLAMA_KEY, max_retries=0, timeout=120)
    done = threading.Event()

    def long_answer():
        try:
            stream = direct.chat.completions.create(
                model="smollm2", stream=True, max_tokens=400, temperature=0,
                messages=[{"role": "user", "content": "Count from one to two hundred in words."}])
            for _ in stream:
                pass
        finally:
            done.set()

    threading.Thread(target=long_answer, daemon=True).start()
    busy = wait_for(open_fleet, fleet.llama, lambda r: r["reported_load"]["running"] == 1 or done.is_set())
    assert not done.is_set(), "the direct answer ended before drover read the slot busy; make it longer"
    assert busy["status"] == "busy", busy
    assert busy["load_estimate"] == 1 and busy["in_flight"] == 0, busy

    # drover's own request waits in drover's queue while the slot is taken, then is answered.
    client = openai.OpenAI(base_url=f"{open_fleet}/v1", api_key="unused", max_retries=0, timeout=120)
    answer = client.chat.completions.create(model="smol", max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
    assert done.is_set(), "answered while llama.cpp's one slot was still held by the direct client"
    assert answer.choices[0].message.content is not None
