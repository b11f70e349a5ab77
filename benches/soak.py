"""The soak run's load, sampler and verdict (benches/soak.sh starts the processes).

Usage: soak.py DROVER_URL DROVER_PID MOCK_CMD_JSON MINUTES OUT_DIR

For MINUTES: mixed load on drover (streamed and whole answers, the OpenAI API, clients that
hang up mid-stream, requests for a model no server has), an admin edit every 5 s (a stored
route re-weighted), and one of the two servers flapping (killed and started again every
20 s, so requests fail over and retry). Every 10 s it samples drover's RSS, open file
descriptors and OS tasks (threads, less the SQLite pool's connection workers, which come and go
with its connections up to database.pool_size). At the end: a Markdown table and an SVG plot in OUT_DIR,
and a slope test: after the first fifth (warm-up), each series is fitted with a line; a
series fails when its fitted growth over the run is both over 10% of its mean and over an
absolute floor (4 MiB, 8 descriptors, 2 tasks), and it is not levelling off: its slope over
the second half of those samples is at least two thirds of its slope over the first half
(an allocator and pools warming up grow ever slower; a leak grows at the rate of the load). Exit code 1 on a failed series or when
fewer than 95% of the requests that did not target the flapping server succeed.
"""

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

URL, PID, MOCK_CMD, MINUTES, OUT = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
HOST = urlparse(URL)
STOP = time.time() + MINUTES * 60
COUNTS = {"ok": 0, "failed": 0, "hung_up": 0, "unknown_model_404": 0}
LOCK = threading.Lock()


def count(kind):
    with LOCK:
        COUNTS[kind] += 1


def request(path, body, read_lines=None):
    conn = http.client.HTTPConnection(HOST.hostname, HOST.port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if read_lines is not None:
            for _ in range(read_lines):
                r.readline()
            return r.status, None  # hang up mid-stream
        data = r.read()
        return r.status, data
    finally:
        conn.close()


def worker(seed):
    rng = random.Random(seed)
    msgs = [{"role": "user", "content": "hello"}]
    while time.time() < STOP:
        kind = rng.random()
        try:
            if kind < 0.35:
                status, _ = request("/api/chat", {"model": "chat", "messages": msgs, "stream": False})
            elif kind < 0.65:
                status, data = request("/api/chat", {"model": "chat", "messages": msgs})
                if status == 200 and b'"error"' in data:
                    status = 502  # a stream that broke and could not be continued: a visible error
            elif kind < 0.8:
                status, _ = request("/v1/chat/completions", {"model": "chat", "messages": msgs, "stream": True})
            elif kind < 0.92:
                request("/api/chat", {"model": "chat", "messages": msgs}, read_lines=1)
                count("hung_up")
                continue
            else:
                status, _ = request("/api/chat", {"model": "nothing-has-this", "messages": msgs})
                count("unknown_model_404" if status == 404 else "failed")
                continue
            count("ok" if status == 200 else "failed")
        except OSError:
            count("failed")


def admin_edits():
    while time.time() < STOP:
        conn = http.client.HTTPConnection(HOST.hostname, HOST.port, timeout=10)
        try:
            conn.request("PUT", "/admin/servers/1", json.dumps({"weight": random.randint(1, 100)}),
                         {"Content-Type": "application/json"})
            conn.getresponse().read()
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(5)


def flapping():
    proc = None
    while time.time() < STOP:
        proc = subprocess.Popen(MOCK_CMD, stdout=subprocess.DEVNULL)
        time.sleep(20)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(3)
    if proc and proc.poll() is None:
        proc.kill()


def sample():
    status = open(f"/proc/{PID}/status").read()
    rss = int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) * 1024
    fds = len(os.listdir(f"/proc/{PID}/fd"))
    # The SQLite pool's connections each run a worker thread, opened and closed with the
    # connection (at most database.pool_size): bounded by design, so not in the judged series.
    tasks = sum(n for name, n in task_names().items() if not name.startswith(POOL_THREAD))
    return rss, fds, tasks


POOL_THREAD = "sqlx-sqlite-wor"


def task_names():
    """Threads by name ("tokio-runtime-w": 4, ...), to say which pool a growth came from."""
    names = {}
    for t in os.listdir(f"/proc/{PID}/task"):
        try:
            name = open(f"/proc/{PID}/task/{t}/comm").read().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items()))


def slope(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def svg(samples, path):
    series = [("RSS MiB", 1, lambda s: s[1] / 2**20, "#0969da"), ("open fds", 2, lambda s: s[2], "#1a7f37"),
              ("OS tasks", 3, lambda s: s[3], "#cf222e")]
    w, h, pad = 900, 260, 50
    t_end = max(s[0] for s in samples) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h * 3}" font-family="sans-serif" font-size="12">']
    for k, (name, _, get, color) in enumerate(series):
        top = k * h
        vals = [get(s) for s in samples]
        lo, hi = 0, max(vals) * 1.15 or 1
        pts = " ".join(f"{pad + (s[0] / t_end) * (w - 2 * pad):.1f},{top + h - pad - (get(s) - lo) / (hi - lo) * (h - 2 * pad):.1f}"
                       for s in samples)
        parts.append(f'<text x="{pad}" y="{top + 20}" font-weight="bold">{name} (max {max(vals):.1f})</text>')
        parts.append(f'<line x1="{pad}" y1="{top + h - pad}" x2="{w - pad}" y2="{top + h - pad}" stroke="#999"/>')
        parts.append(f'<line x1="{pad}" y1="{top + pad}" x2="{pad}" y2="{top + h - pad}" stroke="#999"/>')
        parts.append(f'<text x="{pad - 5}" y="{top + pad}" text-anchor="end">{hi:.0f}</text>')
        parts.append(f'<text x="{pad - 5}" y="{top + h - pad}" text-anchor="end">0</text>')
        parts.append(f'<text x="{w - pad}" y="{top + h - pad + 16}" text-anchor="end">{t_end / 60:.1f} min</text>')
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
    parts.append("</svg>")
    open(path, "w").write("\n".join(parts))


def main():
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
    threads += [threading.Thread(target=admin_edits, daemon=True), threading.Thread(target=flapping, daemon=True)]
    start = time.time()
    for t in threads:
        t.start()
    samples, names = [], []
    while time.time() < STOP:
        samples.append((time.time() - start, *sample()))
        names.append(task_names())
        time.sleep(min(10, max(0, STOP - time.time())))
    for t in threads:
        t.join(timeout=40)
    samples.append((time.time() - start, *sample()))
    names.append(task_names())

    warm = samples[len(samples) // 5:]
    xs = [s[0] / 60 for s in warm]
    minutes = (warm[-1][0] - warm[0][0]) / 60 if len(warm) > 1 else 0
    rows, failed = [], []
    half = len(warm) // 2
    for name, i, floor in [("RSS bytes", 1, 4 * 2**20), ("open fds", 2, 8), ("OS tasks", 3, 2)]:
        ys = [s[i] for s in warm]
        per_min = slope(xs, ys) if len(warm) > 2 else 0.0
        growth = per_min * minutes
        mean = sum(ys) / len(ys)
        early = slope(xs[:half + 1], ys[:half + 1]) if half >= 2 else per_min
        late = slope(xs[half:], ys[half:]) if len(warm) - half >= 3 else per_min
        levelling = late < (2 / 3) * early if early > 0 else late <= 0
        bad = growth > 0.10 * mean and growth > floor and not levelling
        if bad:
            failed.append(name)
        verdict = "GROWS" if bad else ("levels off" if growth > 0.10 * mean and growth > floor else "flat")
        rows.append(f"| {name} | {warm[0][i]} | {samples[-1][i]} | {max(s[i] for s in samples)} | {per_min:.2f} | "
                    f"{early:.2f} / {late:.2f} | {growth:.1f} | {verdict} |")
    total = COUNTS["ok"] + COUNTS["failed"]
    ok_share = COUNTS["ok"] / total if total else 0
    os.makedirs(OUT, exist_ok=True)
    svg(samples, os.path.join(OUT, "soak.svg"))
    table = [
        f"Soak: {MINUTES:g} minutes, {len(samples)} samples (every 10 s); requests: {COUNTS['ok']} ok, "
        f"{COUNTS['failed']} failed ({100 * (1 - ok_share):.2f}%; a stream the flapping server cuts is continued "
        f"on the other), {COUNTS['hung_up']} hung up by the client mid-stream, {COUNTS['unknown_model_404']} "
        "unknown-model 404s; a route re-weighted every 5 s; one of two servers killed and restarted every 23 s.",
        "",
        "| series | after warm-up | at the end | max | fitted slope per minute | slope, first / second half | fitted growth over the run | verdict |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Threads by name after warm-up: {names[len(samples) // 5]}; at the end: {names[-1]}.",
        "",
        "![soak samples](soak.svg)",
    ]
    open(os.path.join(OUT, "soak.md"), "w").write("\n".join(table) + "\n")
    with open(os.path.join(OUT, "samples.csv"), "w") as f:
        f.write("seconds,rss_bytes,open_fds,os_tasks\n")
        for s in samples:
            f.write(",".join(str(round(v, 1)) for v in s) + "\n")
    print("\n".join(table))
    if failed or ok_share < 0.95:
        print(f"soak: FAILED: {', '.join(failed) or 'too many failed requests'}", file=sys.stderr)
        sys.exit(1)


main()
