"""Benchmark: `scan serve` under load on loopback, and killed mid-load then restarted.

Starts `scan serve` as a separate process (the way a user runs it) on an index, then runs
`--clients` concurrent clients (threads, each with its own keep-alive HTTP connection) that
send `--queries` text searches in all (`GET /api/search`, k = 10) drawn from the Flickr8k-800
captions, and prints: errors (any non-200 answer or failed connection; must be 0), per-request
latency p50/p99 as the clients saw it, queries per second, and how many first-stage calls the
server made (fewer than queries when it batched them). `--max-batch 1 8` runs the same load once
per batching setting, each against a fresh server.

With `--kill-restart`, one more run SIGKILLs the server halfway through the load, starts it
again on the same index and lets the clients go on: it prints how many requests failed while the
server was down, checks that the index files are byte for byte what they were before, and that a
fixed set of probe queries gets the same results (ids and scores) after the restart as before.

The index is the demo's (`--index reports/flickr8k-demo/index`) or a synthetic one of
`--synthetic N` photos (36 regions, D = 256 float16, clustered as in benchmarks/search.py, with a
randomly initialised demo model; built once into `--work` and reused):

    python benchmarks/serve_load.py --index reports/flickr8k-demo/index --queries 1000 --kill-restart
    python benchmarks/serve_load.py --synthetic 100000 --work /tmp/serve-load --queries 1000 --max-batch 1 8
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import BUILT_IN_QUERIES, CAPTIONS, Collection, make_model


def queries_from_captions(count: int) -> list[str]:
    if CAPTIONS.is_file():
        lines = CAPTIONS.read_text(encoding="utf-8").splitlines()[1:]
        captions = list(dict.fromkeys(line.partition(",")[2].strip().rstrip(" .") for line in lines if line.strip()))
    else:
        captions = BUILT_IN_QUERIES
    return [captions[i % len(captions)] for i in range(count)]


# ------------------------------------------------------------------ a synthetic index


def build_synthetic(size: int, work: Path) -> Path:
    """An index of `size` synthetic photos in `work` (reused when complete)."""
    import torch
    from safetensors.torch import save_file

    from scan import checkpoint as ckpt
    from scan.config import dump_config
    from scan.search.index import MANIFEST_FILE, Index

    folder = work / f"synthetic-{size}.index"
    done = work / f"synthetic-{size}.done"
    if done.exists() and (folder / MANIFEST_FILE).exists():
        return folder
    model, _ = make_model(256, seed=0)
    model_folder = work / "synthetic-model"
    if not (model_folder / ckpt.MODEL_FILE).exists():
        model_folder.mkdir(parents=True, exist_ok=True)
        (model_folder / ckpt.CONFIG_FILE).write_text(dump_config(model.config), encoding="utf-8")
        model.tokenizer.save(model_folder / ckpt.VOCAB_FILE)
        state = {name: tensor.contiguous() for name, tensor in model.model.state_dict().items()}
        save_file(state, str(model_folder / ckpt.MODEL_FILE))
    from scan.models.loading import load_model

    loaded = load_model(model_folder, device="cpu")
    index = Index.open(folder, model=loaded) if (folder / MANIFEST_FILE).exists() else Index.create(folder, loaded)
    data = Collection(dim=256, regions=36, topics=2000, noise=1.0, noise_rank=16, seed=0)
    chunk = 8192
    began = time.perf_counter()
    for start in range(len(index), size, chunk):
        count = min(chunk, size - start)
        vectors, _ = data.batch(start // chunk, count)
        names = [f"photos/{i:07d}.jpg" for i in range(start, start + count)]
        hashes = [hashlib.sha256(name.encode()).hexdigest() for name in names]
        index.add_features(torch.from_numpy(vectors.astype(np.float32)), None, names, hashes, encoded=True)
        print(f"  synthetic index: {start + count} / {size} photos ({time.perf_counter() - began:.0f} s)", flush=True)
    done.write_text("")
    return folder


# ------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """`scan serve INDEX` in a process of its own."""

    def __init__(self, index: Path, port: int, max_batch: int, log: Path) -> None:
        self.index, self.port, self.max_batch, self.log = index, port, max_batch, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start and wait until it answers; returns the seconds that took."""
        began = time.perf_counter()
        command = [sys.executable, "-m", "scan", "serve", str(self.index), "--port", str(self.port)]
        command += ["--max-batch", str(self.max_batch), "--no-access-log"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        while True:
            try:
                self.get("/api/health")
                return time.perf_counter() - began
            except OSError:
                if self.process.poll() is not None:
                    raise SystemExit(f"the server exited with {self.process.returncode}; see {self.log}") from None
                time.sleep(0.1)

    def get(self, path: str) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise OSError(f"{response.status}: {body[:200]!r}")
            return json.loads(body)
        finally:
            connection.close()

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ the load


def run_load(server: Server, queries: list[str], clients: int, kill_at: int | None = None) -> dict[str, object]:
    """Send `queries` from `clients` threads; with `kill_at`, kill and restart the server after that many."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_query = iter(range(len(queries)))
    done_count = [0]
    restarted = threading.Event()
    down = threading.Event()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while True:
            with lock:
                number = next(next_query, None)
            if number is None:
                break
            path = "/api/search?" + urllib.parse.urlencode({"q": queries[number], "k": 10})
            began = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
                problem = f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as error:
                ok, problem = False, f"{type(error).__name__}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                if down.is_set() and not restarted.is_set():
                    restarted.wait(120)
            elapsed = time.perf_counter() - began
            with lock:
                done_count[0] += 1
                if ok:
                    latencies.append(elapsed)
                else:
                    errors.append(problem)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    restart_s = None
    if kill_at is not None:
        while done_count[0] < kill_at:
            time.sleep(0.01)
        down.set()
        server.kill()
        restart_s = server.start()
        restarted.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    array = np.asarray(latencies) * 1e3
    return {
        "queries": len(queries),
        "ok": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "p50_ms": float(np.percentile(array, 50)) if len(array) else float("nan"),
        "p99_ms": float(np.percentile(array, 99)) if len(array) else float("nan"),
        "qps": len(latencies) / wall,
        "wall_s": wall,
        "restart_s": restart_s,
    }


def index_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".lock"):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def probe(server: Server, texts: list[str]) -> list[list[tuple[int, float]]]:
    answers = []
    for text in texts:
        hits = server.get("/api/search?" + urllib.parse.urlencode({"q": text, "k": 10}))["hits"]
        answers.append([(hit["id"], hit["score"]) for hit in hits])
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", help="an index folder (e.g. the demo's)")
    parser.add_argument("--synthetic", type=int, help="or build (once) a synthetic index of this many photos")
    parser.add_argument("--work", default="/tmp/scan-serve-load", help="where the synthetic index and logs go")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[8], help="server batching settings to run")
    parser.add_argument("--kill-restart", action="store_true", help="also kill the server mid-load and restart it")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if bool(args.index) == bool(args.synthetic):
        parser.error("give --index or --synthetic N")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    index = Path(args.index) if args.index else build_synthetic(args.synthetic, work)
    queries = queries_from_captions(args.queries)
    print(f"index {index}; {args.clients} clients, {args.queries} queries (k = 10) on loopback; {os.cpu_count()} CPUs")
    print("| max batch | errors | p50 ms | p99 ms | queries/s | first-stage calls | server RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    figures: dict[str, object] = {"index": str(index), "clients": args.clients, "runs": []}
    for max_batch in args.max_batch:
        server = Server(index, free_port(), max_batch, work / "server.log")
        try:
            server.start()
            for text in queries[:20]:  # warm up: first calls load lazily
                server.get("/api/search?" + urllib.parse.urlencode({"q": text, "k": 10}))
            before = server.get("/api/health")
            result = run_load(server, queries, args.clients)
            after = server.get("/api/health")
            assert server.process is not None
            result.update(
                max_batch=max_batch,
                batches=after["batches"] - before["batches"],
                rss_mb=rss_mb(server.process.pid),
            )
        finally:
            server.stop()
        figures["runs"].append(result)  # type: ignore[union-attr]
        print(
            f"| {max_batch} | {result['errors']} | {result['p50_ms']:.1f} | {result['p99_ms']:.1f} | "
            f"{result['qps']:.1f} | {result['batches']} | {result['rss_mb']:.0f} |"
        )

    if args.kill_restart:
        server = Server(index, free_port(), args.max_batch[-1], work / "server.log")
        digest = index_digest(index)
        texts = queries[:10]
        try:
            server.start()
            answers = probe(server, texts)
            result = run_load(server, queries, args.clients, kill_at=len(queries) // 2)
            same = probe(server, texts) == answers
        finally:
            server.stop()
        intact = index_digest(index) == digest
        figures["kill_restart"] = {**result, "same_answers": same, "index_unchanged": intact}
        print(
            f"\nkilled (SIGKILL) after {len(queries) // 2} of {len(queries)} queries and restarted in "
            f"{result['restart_s']:.1f} s: {result['errors']} requests failed while it was down "
            f"({', '.join(result['error_kinds']) or 'none'}), {result['ok']} answered; "  # type: ignore[arg-type]
            f"index files unchanged: {intact}; probe queries answer the same after the restart: {same}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
