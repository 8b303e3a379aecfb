"""Side-by-side benchmark on the default model and the same texts: the raw in-process encoder (the
ceiling), our Triton ensemble over gRPC, Infinity over HTTP with each of its CPU engines (torch,
optimum, ctranslate2; the best is "Infinity"), and sentence-transformers in-process with its PyTorch
and its ONNX backend. Every system first embeds a few texts of each kind, compared with our encoder
(cosine >= 0.999, else a note).

    python -m tembed_bench.compare                # ~12-15 min on 2 cores
    python -m tembed_bench.compare --quick        # a smoke run
    python -m tembed_bench.compare --check-only   # start each system, check its vectors, no benchmark

Writes docs/BENCHMARKS.md (between the compare markers), docs/benchmarks.png and prints a JSON
summary as its last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import data, systems
from .data import Item

START, END = "<!-- compare:start -->", "<!-- compare:end -->"


@dataclass
class Load:
    requests: int
    texts: int
    tokens: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def drive(
    embed: Callable[[list[Item]], float | None],
    reqs: list[list[Item]],
    tokens: dict[str, int],
    concurrency: int,
    cap_s: float,
    desc: str,
) -> Load:
    """Send ``reqs`` with ``concurrency`` in flight; stop starting new ones after ``cap_s``."""
    lat: list[float] = []
    done: list[list[Item]] = []
    t0 = time.perf_counter()

    def one(req: list[Item]) -> None:
        if time.perf_counter() - t0 > cap_s:
            return
        s = time.perf_counter()
        took = embed(req)  # a float: the system timed itself (a worker process, without the pipe)
        lat.append(took if isinstance(took, float) else time.perf_counter() - s)
        done.append(req)

    with tqdm(total=len(reqs), desc=desc, leave=False) as bar:
        if concurrency == 1:
            for r in reqs:
                one(r)
                bar.update()
        else:
            with ThreadPoolExecutor(concurrency) as pool:
                for _ in pool.map(one, reqs):
                    bar.update()
    secs = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return Load(
        requests=len(done),
        texts=sum(len(r) for r in done),
        tokens=sum(tokens[i.text] for r in done for i in r),
        seconds=secs,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
    )


def token_counts(repo: Path, items: list[Item]) -> dict[str, int]:
    """Real tokens per text (prompt included, after truncation), from our tokenizer."""
    from tembed_serving.contract import Layout
    from tembed_serving.profile import ModelProfile
    from tembed_serving.textproc import TextEncoder

    layout = Layout(repo, systems.MODEL)
    raw_tok = TextEncoder(ModelProfile.load(layout.profile_file), layout.tokenizer_file)
    out = {}
    for it in items:
        out[it.text] = int(raw_tok([it.text], it.input_type).token_count[0])
    return out


@dataclass
class Plan:
    load_texts: int = 768
    batch: int = 16  # texts per request under load (and the in-process batch size)
    load_concurrency: int = 8
    queries: int = 200  # single short queries per latency run
    cap_s: float = 60.0  # per phase

    @classmethod
    def quick(cls) -> Plan:
        return cls(load_texts=128, queries=40, cap_s=15.0)


def bench_system(sys_, plan: Plan, load_reqs, queries, tokens, warm: list[list[Item]]) -> dict:
    for r in warm:  # first calls build ORT/torch kernels and arenas
        sys_.embed(r)
    res: dict = {"name": sys_.name}
    conc = plan.load_concurrency if sys_.concurrent else 1
    res["load"] = drive(sys_.embed, load_reqs, tokens, conc, plan.cap_s, f"{sys_.name}: load x{conc}")
    res["query_c1"] = drive(sys_.embed, queries, tokens, 1, plan.cap_s, f"{sys_.name}: queries x1")
    if sys_.concurrent:
        c = plan.load_concurrency
        res[f"query_c{c}"] = drive(sys_.embed, queries, tokens, c, plan.cap_s, f"{sys_.name}: queries x{c}")
    return res


def row(res: dict, ceiling: dict | None, c: int) -> dict:
    load: Load = res["load"]
    out = {
        "system": res["name"],
        "texts_per_s": round(load.texts_per_s, 1),
        "tokens_per_s": round(load.tokens_per_s),
        "load_p50_ms": round(load.p50_ms, 1),
        "load_p99_ms": round(load.p99_ms, 1),
        "q_c1_p50_ms": round(res["query_c1"].p50_ms, 2),
        "q_c1_p99_ms": round(res["query_c1"].p99_ms, 2),
        "min_cos": round(res.get("cosine", float("nan")), 5),
    }
    if f"query_c{c}" in res:
        out[f"q_c{c}_p50_ms"] = round(res[f"query_c{c}"].p50_ms, 2)
        out[f"q_c{c}_p99_ms"] = round(res[f"query_c{c}"].p99_ms, 2)
    if ceiling is not None:
        # tokens/s: a time cap may stop systems at different requests, whose texts differ in length.
        out["x_ceiling"] = round(load.tokens_per_s / ceiling["load"].tokens_per_s, 3)
    return out


def markdown(rows: list[dict], plan: Plan, notes: list[str]) -> str:
    c = plan.load_concurrency
    head = (
        "| system | texts/s | tokens/s | × ceiling (tokens/s) | load P50 / P99 ms | query c=1 P50 / P99 ms"
        f" | query c={c} P50 / P99 ms | min cosine to ours |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = ""
    for r in rows:
        qc = f"{r[f'q_c{c}_p50_ms']} / {r[f'q_c{c}_p99_ms']}" if f"q_c{c}_p50_ms" in r else "n/a (in-process)"
        body += (
            f"| {r['system']} | {r.get('texts_per_s', '')} | {r.get('tokens_per_s', '')} | {r.get('x_ceiling', '')} |"
            f" {r.get('load_p50_ms', '')} / {r.get('load_p99_ms', '')} | {r.get('q_c1_p50_ms', '')} /"
            f" {r.get('q_c1_p99_ms', '')} | {qc} | {r.get('min_cos', '')} |\n"
        )
    return (
        f"{START}\n## Side by side: multilingual-e5-small on CPU\n\n"
        f"`python -m tembed_bench.compare` on {os.cpu_count()} cores ({platform.processor() or platform.machine()}),"
        f" {time.strftime('%Y-%m-%d %H:%M')}. Load: {plan.load_texts} mixed texts (40% short queries, 30% English"
        f" passages, 22% Chinese paragraphs, 8% long documents truncated at 512 tokens) in requests of"
        f" {plan.batch}, {c} in flight for the servers and one at a time in-process. Queries: {plan.queries}"
        " single short queries. Same thread budget for everyone (ORT/torch threads = cores). Triton serves the"
        " exported repository as `tembed export` writes it. Infinity runs each of its CPU engines in turn (torch,"
        " optimum = ONNX Runtime, ctranslate2), with the model's mean pooling; its best engine per column is the"
        " **Infinity** row. Every system's vectors are compared with our encoder's on a few texts of each kind"
        " (last column).\n\n"
        + head
        + body
        + "\n"
        + "".join(f"- {n}\n" for n in notes)
        + "\n![throughput and latency](benchmarks.png)\n"
        + END
    )


def write_doc(path: Path, section: str, start: str = START, end: str = END) -> None:
    """``section`` (which begins with ``start`` and ends with ``end``) in place of the one between those
    markers in ``path``, or appended: reruns update their own section and leave the rest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def plot(rows: list[dict], path: Path, c: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["system"].replace(" (", "\n(") for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.bar(names, [r["texts_per_s"] for r in rows], color="tab:blue")
    a.set_title("throughput at saturation (texts/s, higher is better)")
    a.tick_params(axis="x", labelsize=7)
    x = np.arange(len(rows))
    b.bar(x - 0.2, [r["q_c1_p50_ms"] for r in rows], 0.4, label="c=1 P50")
    b.bar(x + 0.2, [r.get(f"q_c{c}_p99_ms", 0) for r in rows], 0.4, label=f"c={c} P99")
    b.set_xticks(x, names, fontsize=7)
    b.set_yscale("log")
    b.set_title("single short query latency (ms, log)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


INFINITY_ENGINES = ("torch", "optimum", "ctranslate2")  # the CPU engines Infinity 0.0.78 offers


def check_items() -> list[list[Item]]:
    """A few texts of each kind, one request per kind (input types differ)."""
    pools = data.pools()
    return [pools["short"][:3], pools["en_passage"][:2], pools["zh_paragraph"][:2], pools["long"][:1]]


def min_cosine(sys_, reference: list[np.ndarray], items: list[list[Item]]) -> float:
    got = [np.asarray(sys_.vectors(r), dtype=np.float32) for r in items]
    cos = [
        float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
        for ga, gb in zip(got, reference)
        for a, b in zip(ga, gb)
    ]
    return min(cos)


def best_of(rows: list[dict], c: int) -> dict | None:
    """Infinity's best engine per column (the highest throughput, the lowest latencies), each cell
    naming its engine: the peer's best is what the targets compare with."""
    inf = [r for r in rows if r["system"].startswith("Infinity (")]
    if len(inf) < 2:
        return None
    engine = {id(r): r["system"][len("Infinity (") : -1] for r in inf}
    out: dict = {"system": "**Infinity** (best engine per column)"}
    for key, pick in (
        ("texts_per_s", max),
        ("tokens_per_s", max),
        ("x_ceiling", max),
        ("load_p50_ms", min),
        ("load_p99_ms", min),
        ("q_c1_p50_ms", min),
        ("q_c1_p99_ms", min),
        (f"q_c{c}_p50_ms", min),
        (f"q_c{c}_p99_ms", min),
    ):
        have = [r for r in inf if key in r]
        if have:
            r = pick(have, key=lambda r: r[key])
            out[key] = f"{r[key]} ({engine[id(r)]})"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    ap.add_argument("--check-only", action="store_true", help="start each system and check its vectors; no benchmark")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument(
        "--systems", default="raw,triton,infinity,st,st-onnx", help="comma list of raw,triton,infinity,st,st-onnx"
    )
    ap.add_argument(
        "--infinity-engines",
        default=",".join(INFINITY_ENGINES),
        help=f"comma list of Infinity's engines to run, each in turn (of {','.join(INFINITY_ENGINES)})",
    )
    ap.add_argument(
        "--queue-delay-us",
        type=int,
        default=None,
        help="Triton dynamic batcher delay (export flag; default: the export's)",
    )
    ap.add_argument("--work", type=Path, default=systems.ROOT / ".cache" / "bench")
    ap.add_argument("--doc", type=Path, default=systems.ROOT / "docs" / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    wanted = args.systems.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    repo = systems.export_repo(
        args.work / f"repo-t{args.threads}-d{'default' if args.queue_delay_us is None else args.queue_delay_us}-i32",
        threads=args.threads,
        queue_delay_us=args.queue_delay_us,
    )

    load_reqs = data.requests(data.mixed(plan.load_texts), plan.batch)
    queries = [[q] for q in data.short_queries(plan.queries)]
    warm = load_reqs[:2] + queries[:3]
    tokens = token_counts(repo, [i for r in load_reqs + queries for i in r])
    raw = systems.Raw(repo, threads=args.threads)
    probe = check_items()
    reference = [raw.vectors(r) for r in probe]  # our encoder: what the server serves
    results: list[dict] = []
    checks: dict[str, float] = {}
    notes: list[str] = []

    def attempt(label: str, make: Callable[[], contextlib.AbstractContextManager]) -> None:
        if label.split(" ")[0] not in wanted:
            return
        try:
            with make() as sys_:
                cos = checks[sys_.name] = min_cosine(sys_, reference, probe)
                print(f"{sys_.name}: min cosine to our encoder {cos:.6f}", flush=True)
                if cos < 0.999:
                    notes.append(f"{sys_.name}: vectors differ from ours (min cosine {cos:.4f} on {len(probe)} kinds)")
                if not args.check_only:
                    results.append({**bench_system(sys_, plan, load_reqs, queries, tokens, warm), "cosine": cos})
        except Exception as exc:  # one failing system must not cost the others' numbers
            msg = f"{label} failed: {type(exc).__name__}: {str(exc).strip()[-600:]}"
            print(msg, flush=True)
            notes.append(msg.replace("\n", " "))

    attempt("raw", lambda: contextlib.nullcontext(raw))
    attempt("triton", lambda: systems.triton_server(repo, args.work / "tritonserver.log"))
    folder = args.work / "e5-with-onnx"  # the model folder + onnx/model.onnx: Infinity's optimum, ST's ONNX
    for engine in args.infinity_engines.split(","):
        attempt(
            f"infinity ({engine})",
            lambda engine=engine: systems.infinity_server(
                engine,
                args.work / f"infinity-{engine}.log",
                systems.infinity_model_folder(folder),
                batch_size=32,
                threads=args.threads,
            ),
        )
    attempt("st", lambda: contextlib.nullcontext(systems.SentenceTransformers(threads=args.threads)))
    attempt(
        "st-onnx",
        lambda: systems.st_worker(
            systems.infinity_model_folder(folder), args.work / "st-onnx.log", "onnx", threads=args.threads
        ),
    )
    if args.check_only:
        print(json.dumps({"min_cosine": checks, "notes": notes}))
        return 0 if checks and min(checks.values()) >= 0.999 and not any("failed" in n for n in notes) else 1

    ceiling = next((r for r in results if r["name"] == systems.Raw.name), None)
    rows = [row(r, ceiling, plan.load_concurrency) for r in results]
    best = best_of(rows, plan.load_concurrency)
    notes.append("CPU shared with other work while measured: treat differences under ~10% as noise.")
    write_doc(args.doc, markdown(rows + ([best] if best else []), plan, notes))
    if rows:
        plot(rows, args.doc.with_name("benchmarks.png"), plan.load_concurrency)
    for r in rows:
        print(r)
    print(json.dumps({"plan": asdict(plan), "results": rows, "infinity_best": best, "notes": notes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
