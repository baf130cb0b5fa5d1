"""Benchmark: two-stage collection search at 10^4 to 10^6 items, on the CPU.

Builds synthetic collections of the real shapes (36 regions per item, D = 256 as the demo
model's `embed_dim`), stores their region vectors in a float16 `RegionStore` (memory-mapped,
appended in shards of `--shard` items, streamed: never the whole collection in memory) and
their global vectors in a `FirstStageIndex` (the kind `choose_kind` picks), then searches them
with `TwoStageSearch` and a randomly initialised SCAN model built from the demo config (a GRU
over a vocabulary of the Flickr8k-800 captions). For each size it prints:

- build rates, items/s: the store's appends and the first stage's build, separately;
- bytes per item on disk (the store) and in the first stage (its saved index);
- the time to open the store (it reads headers only);
- per-query p50/p99 latency of the first stage (query encoding + index search), of the re-rank
  (reading the shortlist's region vectors + SCAN scores) and of the whole `search` call;
- resident memory after searching (VmRSS; VmHWM is the peak, reached while building);
- up to `--exhaustive-max` items, exhaustive SCAN search over every item, its latency, the
  speed-up of two stages over it, and how many of its top k the two stages find (recall@k);
- with `--pq`, up to `--pq-max` items: the same collection stored as PQ codes, its bytes per
  item, re-rank latency, and the top-k overlap of the PQ re-ranking with the float16 one over
  the same shortlists (so that only the codec differs).

Synthetic items are clustered, so that ranking is not pure noise: each item has a topic (one of
`--topics` unit centres) that half of its regions are near, the others near random centres;
its global vector is the normalised mean of its regions (the model's global head is not used:
it is random here, and the mean keeps the query and the items in one space).

    python benchmarks/search.py --sizes 10000 100000 1000000 --queries 50 --pq
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scan.config import load_config
from scan.data.vocab import build_vocabulary
from scan.models.loading import TrainedModel
from scan.models.scan import build_model
from scan.models.tokenizers import VocabularyTokenizer
from scan.search.first_stage import FirstStageIndex
from scan.search.store import RegionStore
from scan.search.two_stage import TwoStageSearch, global_text_vector, rank, score_rows

CONFIG = Path(__file__).resolve().parents[1] / "src" / "scan" / "configs" / "demo_flickr8k.yaml"
CAPTIONS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k-800" / "captions.txt"
)  # ../shared beside the repo
BUILT_IN_QUERIES = [
    "a dog runs on the beach",
    "two children play in the snow",
    "a man rides a bicycle down the street",
    "a woman in a red dress is walking",
    "a group of people stand in front of a building",
    "a black dog jumps over a log",
    "a boy in a blue shirt is swimming",
    "a girl climbs a rock wall",
]
NOISE_BANK = 65536  # region noise is drawn from a bank of this many vectors: gathers are cheaper than RNG


def rss() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process, in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) // 1024
    return values


def percentiles(times: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    array = np.asarray(times) * 1e3
    return float(np.percentile(array, 50)), float(np.percentile(array, 99))


class Collection:
    """Deterministic synthetic region vectors: batch b is the same whenever it is drawn."""

    def __init__(self, dim: int, regions: int, topics: int, noise: float, noise_rank: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((topics, dim)).astype(np.float32)  # (C, D)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        # Low-rank noise, as real region features vary along a few directions, not all D.
        basis = np.linalg.qr(rng.standard_normal((dim, noise_rank)))[0].T.astype(np.float32)  # (rank, D)
        bank = rng.standard_normal((NOISE_BANK, noise_rank)).astype(np.float32) @ basis  # (B, D)
        self.bank = bank * (noise / np.sqrt(noise_rank))  # each noise vector has norm ~noise
        self.regions, self.seed = regions, seed

    def batch(self, index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(count, R, D) float16 unit region vectors and their (count, D) float32 global vectors."""
        rng = np.random.default_rng([self.seed, index])
        R, D = self.regions, self.centres.shape[1]
        out = np.empty((count, R, D), dtype=np.float16)  # (n, R, D)
        globals_ = np.empty((count, D), dtype=np.float32)  # (n, D)
        for start in range(0, count, 2048):  # float32 work in small blocks
            n = min(2048, count - start)
            topic = rng.integers(0, len(self.centres), n)  # (n,)
            own = rng.random((n, R)) < 0.5  # (n, R): half the regions show the item's topic
            region_topic = np.where(own, topic[:, None], rng.integers(0, len(self.centres), (n, R)))
            block = self.centres[region_topic] + self.bank[rng.integers(0, NOISE_BANK, (n, R))]  # (n, R, D)
            block /= np.linalg.norm(block, axis=2, keepdims=True)
            out[start : start + n] = block
            mean = block.mean(axis=1)  # (n, D)
            globals_[start : start + n] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        return out, globals_


def make_model(dim: int, seed: int) -> tuple[TrainedModel, list[str]]:
    """A randomly initialised SCAN of the demo config, a vocabulary tokenizer, and the queries."""
    if CAPTIONS.is_file():
        lines = CAPTIONS.read_text(encoding="utf-8").splitlines()[1:]
        captions = [line.partition(",")[2].strip() for line in lines if line.strip()]
    else:
        captions = BUILT_IN_QUERIES * 4
    config = load_config(CONFIG, [f"model.embed_dim={dim}"])
    tokenizer = VocabularyTokenizer(build_vocabulary(captions, threshold=config.data.vocab_threshold))
    config.model.vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    model = build_model(config.model).eval()
    queries = list(dict.fromkeys(c.rstrip(" .") for c in captions))  # distinct, in file order
    return TrainedModel(model=model, tokenizer=tokenizer, config=config, folder=CONFIG.parent), queries


def build_store(
    folder: Path, data: Collection, size: int, shard: int, codec: str, pq_subquantizers: int | None
) -> tuple[RegionStore, np.ndarray | None, float]:
    """Append `size` items in shards; the global vectors (float16 store only) and the seconds spent appending."""
    options = {"codec": "pq", "pq_subquantizers": pq_subquantizers} if codec == "pq" else {}
    store = RegionStore.create(
        folder, num_regions=data.regions, dim=data.centres.shape[1], model_fingerprint="benchmark", **options
    )
    globals_ = np.empty((size, data.centres.shape[1]), dtype=np.float32) if codec == "float16" else None
    appending = 0.0
    for index, start in enumerate(range(0, size, shard)):
        count = min(shard, size - start)
        vectors, batch_globals = data.batch(index, count)
        names = [f"{i:07d}" for i in range(start, start + count)]
        began = time.perf_counter()
        ids = store.append(
            vectors, [f"photos/{n}.jpg" for n in names], [f"{i:064x}" for i in range(start, start + count)]
        )
        appending += time.perf_counter() - began
        assert ids == list(range(start, start + count))
        if globals_ is not None:
            globals_[start : start + count] = batch_globals
        del vectors
    return store, globals_, appending


def time_searches(
    search: TwoStageSearch, queries: list[str], k: int, shortlist: int
) -> tuple[dict[str, list[float]], list[np.ndarray]]:
    """Per-query seconds of each stage and of whole searches, and each query's shortlist."""
    times: dict[str, list[float]] = {"first": [], "rerank": [], "total": []}
    shortlists = []
    for text in queries:
        began = time.perf_counter()
        words, lengths = search.encode_query(text)  # (1, W, D), (1,)
        query = global_text_vector(words, torch.ones(words.shape[:2], dtype=torch.bool), None).numpy()  # (1, D)
        _, candidates = search.index.search(query, shortlist)  # (1, s)
        middle = time.perf_counter()
        regions = torch.from_numpy(search.store.vectors(candidates[0].tolist()).astype(np.float32))  # (s, R, D)
        scores = score_rows(search.model, regions, words, lengths)[:, 0]  # (s,)
        rank(scores, candidates[0], k)
        ended = time.perf_counter()
        search.search(text, k=k, shortlist=shortlist)
        times["first"].append(middle - began)
        times["rerank"].append(ended - middle)
        times["total"].append(time.perf_counter() - ended)
        shortlists.append(candidates[0])
    return times, shortlists


def top_k(search: TwoStageSearch, text: str, candidates: np.ndarray, k: int) -> set[int]:
    """The k best of `candidates` by SCAN with the search's store."""
    words, lengths = search.encode_query(text)
    regions = torch.from_numpy(search.store.vectors(candidates.tolist()).astype(np.float32))
    scores = score_rows(search.model, regions, words, lengths)[:, 0]
    return {int(candidates[i]) for i in rank(scores, candidates, k)}


def set_threads(count: int) -> None:
    """Intra-op threads of torch and faiss (OpenMP)."""
    import faiss

    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)


def run_size(size: int, args: argparse.Namespace, model: TrainedModel, queries: list[str]) -> dict[str, object]:
    folder = args.work / f"n{size}"
    data = Collection(args.dim, args.regions, args.topics, args.noise, args.noise_rank, args.seed)
    row: dict[str, object] = {"size": size}
    print(f"\n== {size} items: {args.regions} x {args.dim} float16 regions, shards of {args.shard}", flush=True)

    set_threads(args.build_threads)
    store, globals_, appending = build_store(folder / "float16", data, size, args.shard, "float16", None)
    assert globals_ is not None
    row["store_rate"] = size / appending
    row["store_bytes"] = store.bytes_on_disk() / size
    print(f"store: {size / appending:,.0f} items/s appending, {row['store_bytes']:,.0f} bytes/item", flush=True)
    began = time.perf_counter()
    index = FirstStageIndex.build(globals_, np.arange(size, dtype=np.int64))
    row["index_rate"] = size / (time.perf_counter() - began)
    row["kind"] = index.kind
    print(f"first stage: {index.kind}, built at {row['index_rate']:,.0f} items/s", flush=True)
    # Kept for the first stage's recall against exact search below, but on disk: the resident
    # memory measured after searching is the search's, not the benchmark's copy (1 GB at 10^6).
    np.save(folder / "globals.npy", globals_)
    del globals_
    truth_vectors = np.load(folder / "globals.npy", mmap_mode="r")  # (N, D)
    del store

    began = time.perf_counter()
    store = RegionStore.open(folder / "float16")
    row["open_ms"] = (time.perf_counter() - began) * 1e3
    search = TwoStageSearch(model, store, index, head=None)
    set_threads(args.search_threads)
    chosen = [queries[i % len(queries)] for i in range(args.queries)]
    time_searches(search, chosen[:2], args.k, args.shortlist)  # warm up
    times, shortlists = time_searches(search, chosen, args.k, args.shortlist)
    for stage in ("first", "rerank", "total"):
        row[stage] = percentiles(times[stage])
    memory = rss()
    row["rss"], row["hwm"] = memory["VmRSS"], memory["VmHWM"]
    print(
        f"open {row['open_ms']:.0f} ms; per query p50/p99 ms: first stage {row['first'][0]:.1f}/{row['first'][1]:.1f}, "  # type: ignore[index]
        f"re-rank {row['rerank'][0]:.1f}/{row['rerank'][1]:.1f}, total {row['total'][0]:.1f}/{row['total'][1]:.1f}; "  # type: ignore[index]
        f"RSS {memory['VmRSS']} MB (anon {memory['RssAnon']}, file {memory['RssFile']}), peak {memory['VmHWM']} MB",
        flush=True,
    )

    # How many of the exact cosine top-`shortlist` the approximate index finds (flat: all).
    if index.kind != "flat":
        unit_queries = []
        for text in chosen:
            words, _ = search.encode_query(text)
            unit_queries.append(global_text_vector(words, torch.ones(words.shape[:2], dtype=torch.bool), None).numpy())
        queries_array = np.concatenate(unit_queries)  # (Q, D)
        exact_ids = []
        for start in range(0, size, 100_000):  # exact scores in blocks, bounded memory
            block = truth_vectors[start : start + 100_000] @ queries_array.T  # (b, Q)
            exact_ids.append(block)
        scores = np.concatenate(exact_ids)  # (N, Q)
        best = np.argsort(-scores, axis=0)[: args.shortlist].T  # (Q, s)
        row["first_recall"] = float(
            np.mean([len(set(b) & set(s)) / len(b) for b, s in zip(best, shortlists, strict=True)])
        )
        print(f"first stage recall@{args.shortlist} against exact cosine: {row['first_recall']:.3f}", flush=True)
        del scores

    if size <= args.exhaustive_max:
        exhaustive_times, recalls = [], []
        for text in chosen[: args.exhaustive_queries]:
            began = time.perf_counter()
            hits = search.search(text, k=args.k, exhaustive=True)
            exhaustive_times.append(time.perf_counter() - began)
            two = {h.id for h in search.search(text, k=args.k, shortlist=args.shortlist)}
            recalls.append(len(two & {h.id for h in hits}) / len(hits))
        row["exhaustive"] = percentiles(exhaustive_times)[0]
        row["speedup"] = row["exhaustive"] / row["total"][0]  # type: ignore[index]
        row["recall_vs_exhaustive"] = float(np.mean(recalls))
        print(
            f"exhaustive SCAN ({len(exhaustive_times)} queries): p50 {row['exhaustive']:.0f} ms, "
            f"two stages {row['speedup']:.0f}x faster, recall@{args.k} of two stages against it "
            f"{row['recall_vs_exhaustive']:.2f}",
            flush=True,
        )

    saved = index.save(folder / "first_stage.faiss")
    row["index_bytes"] = sum(p.stat().st_size for p in FirstStageIndex.files(saved)) / size

    if args.pq and size <= args.pq_max:
        del truth_vectors
        set_threads(args.build_threads)
        pq_store, _, pq_appending = build_store(folder / "pq", data, size, args.shard, "pq", args.pq_subquantizers)
        set_threads(args.search_threads)
        sample = np.arange(0, size, max(1, size // 1000))[:1000]
        exact = store.vectors(sample).astype(np.float32)  # (s, R, D)
        row["pq_error"] = float(
            np.linalg.norm(pq_store.vectors(sample).astype(np.float32) - exact) / np.linalg.norm(exact)
        )
        pq_search = TwoStageSearch(model, RegionStore.open(folder / "pq"), index, head=None)
        pq_times, _ = time_searches(pq_search, chosen, args.k, args.shortlist)
        overlap = [
            len(top_k(search, text, cands, args.k) & top_k(pq_search, text, cands, args.k)) / args.k
            for text, cands in zip(chosen, shortlists, strict=True)
        ]
        row["pq_bytes"] = pq_store.bytes_on_disk() / size
        row["pq_rate"] = size / pq_appending
        row["pq_rerank"] = percentiles(pq_times["rerank"])[0]
        row["pq_total"] = percentiles(pq_times["total"])[0]
        row["pq_overlap"] = float(np.mean(overlap))
        print(
            f"PQ (M = {pq_store._manifest['pq']['subquantizers']}): {row['pq_bytes']:,.0f} bytes/item "
            f"({row['store_bytes'] / row['pq_bytes']:.1f}x smaller), appends at {row['pq_rate']:,.0f} items/s "  # type: ignore[operator]
            f"(training included), re-rank p50 {row['pq_rerank']:.1f} ms, total p50 {row['pq_total']:.1f} ms; "
            f"relative reconstruction error {row['pq_error']:.3f}; "
            f"top-{args.k} overlap with the float16 re-ranking of the same shortlists {row['pq_overlap']:.3f}",
            flush=True,
        )
    if not args.keep:
        shutil.rmtree(folder)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256, help="D: the demo model's embed_dim")
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--shard", type=int, default=25_000, help="items per append")
    parser.add_argument("--topics", type=int, default=1000, help="cluster centres of the synthetic regions")
    parser.add_argument("--noise", type=float, default=1.0, help="norm of each region's noise (centres have 1)")
    parser.add_argument("--noise-rank", type=int, default=32, help="dimensions the region noise spans")
    parser.add_argument("--pq", action="store_true", help="also store the regions as PQ codes and compare")
    parser.add_argument("--pq-max", type=int, default=100_000, help="largest size stored as PQ too")
    parser.add_argument("--pq-subquantizers", type=int, default=None, help="M (default D // 8)")
    parser.add_argument("--exhaustive-max", type=int, default=100_000)
    parser.add_argument("--exhaustive-queries", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1, help="torch/faiss threads to build")
    parser.add_argument(
        "--search-threads",
        type=int,
        default=1,
        help="torch/faiss threads to search: a query is a few ms of small products, where OpenMP's "
        "fork and join cost more than they save (and stall when another process holds a core)",
    )
    args = parser.parse_args(argv)

    created = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="scan-search-bench-")) if created else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work).free
    needed = max(args.sizes) * args.regions * args.dim * 2 * 1.1
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, {platform.machine()}"
    )
    import faiss

    print(
        f"cores {os.cpu_count()}; threads: torch {torch.get_num_threads()}, faiss (OpenMP) {faiss.omp_get_max_threads()} "
        f"available; building with {args.build_threads}, searching with {args.search_threads}; faiss {faiss.__version__}"
    )
    print(f"work folder {args.work}: {free / 2**30:.1f} GiB free, the largest store needs {needed / 2**30:.1f} GiB")
    if free < needed:
        sys.exit(f"not enough free space in {args.work} for {max(args.sizes)} items")
    model, queries = make_model(args.dim, args.seed)
    print(
        f"model: random SCAN of {CONFIG.name}, embed_dim {args.dim}; vocabulary {len(model.tokenizer)} words; {len(queries)} queries to draw from"
    )
    rows = []
    try:
        for size in args.sizes:
            rows.append(run_size(size, args, model, queries))
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)

    print(f"\nSummary (ms per query, {args.queries} queries, shortlist {args.shortlist}, k {args.k}):")
    header = (
        f"{'items':>9} {'kind':>5} {'store it/s':>10} {'index it/s':>10} {'B/item':>7} {'idx B/it':>8} {'open ms':>7} "
        f"{'1st p50':>7} {'1st p99':>7} {'rr p50':>6} {'rr p99':>6} {'tot p50':>7} {'tot p99':>7} {'RSS MB':>6} "
        f"{'exh p50':>8} {'speedup':>7}"
    )
    print(header)
    for row in rows:
        exhaustive = (
            f"{row['exhaustive']:>8.0f} {row['speedup']:>6.0f}x" if "exhaustive" in row else f"{'-':>8} {'-':>7}"
        )
        print(
            f"{row['size']:>9,} {row['kind']:>5} {row['store_rate']:>10,.0f} {row['index_rate']:>10,.0f} "
            f"{row['store_bytes']:>7,.0f} {row['index_bytes']:>8,.0f} {row['open_ms']:>7.1f} "
            f"{row['first'][0]:>7.1f} {row['first'][1]:>7.1f} {row['rerank'][0]:>6.1f} {row['rerank'][1]:>6.1f} "  # type: ignore[index]
            f"{row['total'][0]:>7.1f} {row['total'][1]:>7.1f} {row['rss']:>6} {exhaustive}"  # type: ignore[index]
        )
    if any("pq_bytes" in row for row in rows):
        print(
            f"\n{'items':>9} {'f16 B/item':>10} {'PQ B/item':>9} {'PQ it/s':>8} {'PQ rr p50':>9} {'PQ tot p50':>10} {'rel error':>9} {'top-k overlap':>13}"
        )
        for row in rows:
            if "pq_bytes" in row:
                print(
                    f"{row['size']:>9,} {row['store_bytes']:>10,.0f} {row['pq_bytes']:>9,.0f} {row['pq_rate']:>8,.0f} "
                    f"{row['pq_rerank']:>9.1f} {row['pq_total']:>10.1f} {row['pq_error']:>9.3f} {row['pq_overlap']:>13.3f}"
                )


if __name__ == "__main__":
    main()
