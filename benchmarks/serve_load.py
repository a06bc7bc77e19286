"""Load test of `lnmt-serve`: N concurrent clients, one sentence per request.

    python benchmarks/serve_load.py tests/fixtures/checkpoints/attention.ckpt --requests 300 --clients 1,8,32
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --pid 1234      # a server already running

Starts the server itself (`python -m lightning_nmt.serve MODEL --port <free> [--server-args ...]`) unless given
`--url`, then for each client count runs `--requests` requests (bounded by `--max-seconds` too) from that many
threads, each with its own keep-alive connection, sentences from `--src` (e.g. the offline benchmark's test set) or
the embedded en->fr sample. Reports per client
count: sentences/s, p50/p99 latency, failed requests, the server's batches, and its RSS (VmRSS of /proc/PID/status)
at the start, after every `--rss-every` requests, and at the end; JSON lines with `--out FILE`.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sentences(n: int, seed: int, src: str | None = None) -> list[str]:
    """The non-empty lines of `src` (plain or .gz), else source sentences of the embedded sample (the fixtures'
    training data), or a fixed set if it is missing."""
    if src:
        opener = gzip.open if src.endswith(".gz") else open
        with opener(src, "rt", encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    try:
        sys.path.insert(0, str(ROOT))
        from lightning_nmt.data.sample import generate_pairs

        return [en for en, _ in generate_pairs(n, seed)]
    except Exception as err:  # the data package being refactored must not stop a load test
        print(f"(embedded sample unavailable: {err}; using fixed sentences)", file=sys.stderr)
        fixed = json.loads((ROOT / "tests/fixtures/checkpoints/translations.json").read_text())["lines"]
        return [line for line in fixed if line.strip()][:8]


def get(host: str, port: int, path: str) -> dict:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def start_server(model: str, extra: list[str], timeout: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "lightning_nmt.serve", model, "--port", str(port), "--log-level", "warning",
               *extra]
    server = subprocess.Popen(command, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}: {' '.join(command)}")
        try:
            if get("127.0.0.1", port, "/health").get("status") == "ok":
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the server did not answer /health within {timeout:g} s")
        time.sleep(0.2)


def run_level(host: str, port: int, clients: int, requests: int, max_seconds: float, lines: list[str],
              pid: int | None, rss_every: int, beam_size: int | None) -> dict:
    """`requests` requests (fewer if `max_seconds` runs out) from `clients` threads."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    failures: list[str] = []
    rss_samples: list[tuple[int, float | None]] = []
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        nonlocal issued
        connection = http.client.HTTPConnection(host, port, timeout=120)
        while True:
            with lock:
                if issued >= requests or time.monotonic() > deadline:
                    break
                number = issued
                issued += 1
            body = {"src": [lines[number % len(lines)]]}
            if beam_size:
                body["beam_size"] = beam_size
            started = time.perf_counter()
            try:
                connection.request("POST", "/translate", json.dumps(body), {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = response.read()
                ok = response.status == 200 and json.loads(answer)["translations"][0][0]["tgt"] is not None
                failure = None if ok else f"{response.status} {answer[:200]!r}"
            except Exception as err:  # counted as a failure; a new connection for the next request
                failure = f"{type(err).__name__}: {err}"
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=120)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if failure:
                    failures.append(failure)
                if len(latencies) % rss_every == 0:
                    rss_samples.append((len(latencies), rss_mib(pid)))
        connection.close()

    before = get(host, port, "/stats")
    rss_start = rss_mib(pid)
    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max_seconds + 300)
    wall = time.perf_counter() - started
    after = get(host, port, "/stats")
    done = sorted(latencies)

    def quantile(q: float) -> float | None:
        return round(done[min(len(done) - 1, int(q * len(done)))] * 1000, 1) if done else None

    return {
        "clients": clients, "requests": len(done), "failed": len(failures), "seconds": round(wall, 2),
        "sentences_per_s": round((len(done) - len(failures)) / wall, 1) if wall else None,
        "p50_ms": quantile(0.50), "p99_ms": quantile(0.99),
        "batches": after["batches"] - before["batches"],
        "sentences_per_batch": round((after["sentences"] - before["sentences"]) / max(1, after["batches"]
                                                                                       - before["batches"]), 2),
        "rss_start_mib": rss_start, "rss_first_mib": rss_samples[0][1] if rss_samples else None,
        "rss_first_at": rss_samples[0][0] if rss_samples else None,
        "rss_last_sample_mib": rss_samples[-1][1] if rss_samples else None,
        "rss_last_sample_at": rss_samples[-1][0] if rss_samples else None,
        "rss_end_mib": rss_mib(pid), "rss_samples": rss_samples, "first_failures": failures[:3],
        "timed_out": len(done) < requests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="checkpoint or CTranslate2 directory to serve (unless --url)")
    parser.add_argument("--url", help="a running server instead (give --pid to read its RSS)")
    parser.add_argument("--pid", type=int, help="the running server's process id (with --url)")
    parser.add_argument("--requests", type=int, default=5000, help="requests per client count (default: 5000)")
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated (default: 1,8,32)")
    parser.add_argument("--max-seconds", type=float, default=300, help="time bound per client count (default: 300)")
    parser.add_argument("--rss-every", type=int, default=1000, help="sample the RSS every N requests (default: 1000)")
    parser.add_argument("--beam-size", type=int, help="beam size of the requests (default: the server's)")
    parser.add_argument("--sentences", type=int, default=1000, help="distinct sentences cycled through")
    parser.add_argument("--src", help="cycle through the lines of this file (.gz too), e.g. the test set the offline "
                                      "benchmark translates (default: the embedded en->fr sample)")
    parser.add_argument("--server-args", default="", help="extra lnmt-serve options, e.g. '--max-wait-ms 5'")
    parser.add_argument("--startup-timeout", type=float, default=180)
    parser.add_argument("--out", help="append one JSON line per client count to this file")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.url is None):
        parser.error("give a MODEL to serve, or --url of a running server")

    server, pid = None, args.pid
    url = args.url
    if url is None:
        server, url = start_server(args.model, args.server_args.split(), args.startup_timeout)
        pid = server.pid
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or 80
    lines = sentences(args.sentences, seed=20261204, src=args.src)
    try:
        model = get(host, port, "/models")["models"][0]
        print(f"server {url} (pid {pid}): {model['name']} ({model['type']}, {model['backend']}), "
              f"limits {model['limits']}; {os.cpu_count()} CPUs here")
        header = (f"{'clients':>7} {'requests':>8} {'failed':>6} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'batches':>7} {'sent/batch':>10} {'RSS MiB: start':>14} {'first':>14} {'last':>14} {'end':>7}")
        print(header)
        for clients in (int(c) for c in args.clients.split(",")):
            result = run_level(host, port, clients, args.requests, args.max_seconds, lines, pid, args.rss_every,
                               args.beam_size)
            first = f"{result['rss_first_mib'] or 0:.1f}@{result['rss_first_at']}"
            last = f"{result['rss_last_sample_mib'] or 0:.1f}@{result['rss_last_sample_at']}"
            print(f"{clients:>7} {result['requests']:>8} {result['failed']:>6} {result['sentences_per_s']:>8} "
                  f"{result['p50_ms']:>8} {result['p99_ms']:>8} {result['batches']:>7} "
                  f"{result['sentences_per_batch']:>10} {result['rss_start_mib'] or 0:>14.1f} {first:>14} "
                  f"{last:>14} {result['rss_end_mib'] or 0:>7.1f}" + ("  (time bound reached)"
                                                                     if result["timed_out"] else ""))
            if len(result["rss_samples"]) > 2:
                print("        RSS MiB after each " + f"{args.rss_every}: " +
                      ", ".join(f"{mib:.1f}" for _, mib in result["rss_samples"] if mib is not None))
            if result["first_failures"]:
                print(f"        failures, first ones: {result['first_failures']}")
            if args.out:
                with open(args.out, "a") as handle:
                    handle.write(json.dumps({"url": url, "model": model["name"], **result}) + "\n")
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
