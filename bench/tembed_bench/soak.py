"""Soak: two Triton replicas and one gateway, separate processes, under saturation for N minutes, with one
replica killed (kill -9) and started again in the middle.

    make soak                                          # 10 minutes (SOAK_MINUTES), multilingual-e5-small
    python -m tembed_bench soak --minutes 2            # a short trial
    python -m tembed_bench soak --repo model_repository --workers 8 --out .cache/soak.md

Each replica is ``python -m tembed_serving.supervisor`` (the supervised launcher: its own process, its
tritonserver and Python stubs); the gateway is ``python -m tembed_gateway --triton A --triton B``. Workers
call the gateway with the real ``openai`` client (``max_retries=0``: every failure counts), mixing short and
long texts; with a reranker in the repository, one request in ten goes to ``/v1/rerank``. Prints a line a
minute and, at the end, a Markdown table per minute (requests, errors, throughput, P50/P99 latency) and the
resident memory of every process at the start and the end; writes both to ``--out`` and a record
(tembed_bench.record). Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import procs, record
from .stats import summary

ROOT = record.ROOT
SHORT = [
    "北京是中华人民共和国的首都。",
    "如何在家里做一杯好喝的咖啡？",
    "The quick brown fox jumps over the lazy dog.",
    "Triton 推理服务器 serves embeddings 很快",
    "今天天气真好 ☀️🌈 let's go hiking 🥾",
]
# About 250 tokens: a long passage costs ~20 times a short text on the encoder.
LONG = "检索增强生成把向量数据库召回的段落交给大模型，再由模型生成回答。" * 10
LONG_SHARE = 0.2  # of embedding requests: 4 long passages; the rest 1-8 short texts
RERANK_SHARE = 0.1  # of requests, when the repository has a reranker


class Replica:
    """One ``python -m tembed_serving.supervisor`` on fixed ports, which it keeps across a restart."""

    def __init__(self, index: int, repo: Path, work: Path) -> None:
        from tembed_serving.supervisor import free_port

        self.index = index
        self.repo = repo
        self.log = work / f"tritonserver{index}.log"
        self.ports = {"--grpc-port": free_port(), "--http-port": free_port(), "--metrics-port": free_port()}
        self.grpc_url = f"127.0.0.1:{self.ports['--grpc-port']}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "tembed_serving.supervisor", "--model-repository", str(self.repo)]
        cmd += ["--log-file", str(self.log), *(str(x) for kv in self.ports.items() for x in kv)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.starts += 1

    def wait_ready(self, timeout: float = 300) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline, out = time.monotonic() + timeout, ""
        while "tritonserver ready" not in out and time.monotonic() < deadline and self.proc.poll() is None:
            out += self.proc.stdout.readline()
        if "tritonserver ready" not in out:
            raise SystemExit(f"replica {self.index} did not start:\n{out}\n(log: {self.log})")

    @property
    def label(self) -> str:
        return f"replica {self.index}" + ("" if self.starts == 1 else ", restarted")

    def processes(self) -> Iterator[tuple[str, int]]:
        """(role, pid): the supervisor, its tritonserver, and the tritonserver's Python stubs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        name = self.label
        yield f"{name}: supervisor (python)", self.proc.pid
        from tembed_serving.supervisor import python_stubs

        for child in procs.children(self.proc.pid):
            if procs.label(child) != "tritonserver":
                yield f"{name}: watchdog ({procs.label(child)})", child
                continue
            yield f"{name}: tritonserver", child
            for pid, model in sorted(python_stubs(child).items(), key=lambda x: x[1]):
                yield f"{name}: stub {model}", pid

    def kill(self, wait_s: float = 10.0) -> tuple[float, list[str]]:
        """kill -9 of the supervisor. Returns the seconds until its tritonserver and stubs were gone too
        (they die with it: PR_SET_PDEATHSIG, and stubs that lose their server exit), and the roles of
        those still alive after ``wait_s``, which are then killed."""
        assert self.proc is not None
        started = list(self.processes())
        t = time.monotonic()
        self.proc.kill()
        self.proc.wait()

        def alive() -> list[tuple[str, int]]:
            return [(role, p) for role, p in started if procs.state(p) != "Z"]

        while alive() and time.monotonic() - t < wait_s:
            time.sleep(0.05)
        gone_s, left = time.monotonic() - t, alive()
        for _, p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        return gone_s, [role for role, _ in left]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Outcome:
    end: float  # monotonic
    seconds: float
    route: str
    error: str | None = None


@dataclass
class Load:
    gateway: str
    model: str
    reranker: str | None
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def worker(self, seed: int) -> None:
        import openai

        rng = random.Random(seed)
        client = openai.OpenAI(base_url=f"{self.gateway}/v1", api_key="EMPTY", max_retries=0, timeout=60)
        http = httpx.Client(timeout=60)
        while not self.stop.is_set():
            t = time.monotonic()
            route, error = "embeddings", None
            try:
                if self.reranker and rng.random() < RERANK_SHARE:
                    route = "rerank"
                    docs = rng.sample(SHORT, 4) + [f"{rng.random()} {LONG}"]
                    body = {"model": self.reranker, "query": rng.choice(SHORT), "documents": docs}
                    r = http.post(f"{self.gateway}/v1/rerank", json=body)
                    if r.status_code != 200 or len(r.json()["results"]) != len(docs):
                        error = f"{r.status_code} {r.text[:200]}"
                else:
                    if rng.random() < LONG_SHARE:
                        texts = [f"{rng.random()} {LONG}" for _ in range(4)]
                    else:
                        texts = [f"{rng.random()} {rng.choice(SHORT)}" for _ in range(rng.randint(1, 8))]
                    resp = client.embeddings.create(model=self.model, input=texts)
                    if len(resp.data) != len(texts):
                        error = f"{len(resp.data)} vectors for {len(texts)} texts"
            except Exception as exc:  # every failure is a failed request, whatever raised it
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self.outcomes.append(Outcome(time.monotonic(), time.monotonic() - t, route, error))
        http.close()


@dataclass
class Restart:
    """kill -9 of one replica's supervisor at ``at`` (monotonic), then the same replica started again."""

    replica: Replica
    gateway: subprocess.Popen
    gateway_url: str
    at: float
    t0: float
    notes: list[str] = field(default_factory=list)
    rss_before: dict[str, float] = field(default_factory=dict)  # the killed processes, just before
    rss_after: dict[str, float] = field(default_factory=dict)  # the new ones, once taking traffic
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported in the table, not lost with the thread
            self.notes.append(f"The restart failed: {exc!r}")
            raise
        finally:
            self.done.set()

    def say(self, what: str) -> None:
        print(f"  {time.monotonic() - self.t0:6.0f} s  {what}", flush=True)

    def run(self) -> None:
        victim = self.replica
        while time.monotonic() < self.at:
            time.sleep(0.2)
        before = gateway_replica_requests(self.gateway_url).get(victim.grpc_url, 0)
        self.rss_before = processes_rss(victim.processes())
        t_kill = time.monotonic()
        gone_s, left = victim.kill()
        self.say(f"kill -9 of {victim.label}'s supervisor; its processes gone in {gone_s:.1f} s"
                 + (f"; still alive, then killed: {', '.join(left)}" if left else ""))  # fmt: skip
        victim.start()
        victim.wait_ready()
        t_ready = time.monotonic()
        self.say(f"{victim.label}: ready")
        while gateway_replica_requests(self.gateway_url).get(victim.grpc_url, 0) <= before:
            if time.monotonic() - t_ready > 60:
                self.notes.append("The restarted replica took no traffic within 60 s of being ready.")
                break
            time.sleep(0.1)
        t_back = time.monotonic()
        self.rss_after = processes_rss(victim.processes())
        note = (
            f"Replica {victim.index} killed (kill -9 of its supervisor) at {t_kill - self.t0:.0f} s; its"
            f" tritonserver and stubs were gone {gone_s:.1f} s later"
            + (f" except {', '.join(left)} (killed after {gone_s:.0f} s)" if left else "")
            + f"; started again, ready {t_ready - t_kill:.1f} s after the kill, and taking traffic from the"
            f" gateway {t_back - t_ready:.1f} s after it was ready."
        )
        self.notes.append(note)
        self.say(note)


def minute_rows(outcomes: list[Outcome], t0: float, bucket_s: float, last: int | None = None) -> list[dict]:
    """One row per ``bucket_s`` by when requests ended; those after row ``last`` count in it."""
    rows: dict[int, list[Outcome]] = {}
    for o in outcomes:
        k = int((o.end - t0) // bucket_s)
        rows.setdefault(k if last is None else min(k, last), []).append(o)
    table = []
    for k in sorted(rows):
        got = rows[k]
        span = bucket_s if last is not None else min(bucket_s, max(o.end for o in got) - t0 - k * bucket_s)
        lat = summary([o.seconds for o in got])
        end = round((k + 1) * bucket_s)
        table.append(
            {
                "until": f"{end // 60}:{end % 60:02d}",
                "requests": len(got),
                "errors": sum(o.error is not None for o in got),
                "rerank": sum(o.route == "rerank" for o in got),
                "req_s": len(got) / max(span, 1e-9),
                "p50_ms": lat["p50"],
                "p99_ms": lat["p99"],
            }
        )
    return table


def processes_rss(processes: Iterable[tuple[str, int]]) -> dict[str, float]:
    rss: dict[str, float] = {}
    for role, pid in processes:
        mib = procs.rss_mib(pid)
        if mib is not None:
            # Several stubs of one model (instances) are numbered to stay apart.
            n = sum(k == role or k.startswith(f"{role} #") for k in rss)
            rss[role if n == 0 else f"{role} #{n + 1}"] = mib
    return rss


def snapshot(gateway: subprocess.Popen, replicas: list[Replica]) -> dict[str, float]:
    return processes_rss([("gateway (python)", gateway.pid), *(p for r in replicas for p in r.processes())])


def gateway_replica_requests(url: str) -> dict[str, float]:
    found = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("tembed_gateway_triton_replica_requests_total{"):
            found[line.split('replica="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return found


def markdown(rows: list[dict], start: dict[str, float], end: dict[str, float], notes: list[str]) -> str:
    out = ["| until | requests | errors | rerank | req/s | P50 ms | P99 ms |", "|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        out.append(
            f"| {r['until']} | {r['requests']} | {r['errors']} | {r['rerank']} | {r['req_s']:.1f}"
            f" | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |"
        )
    total = sum(r["requests"] for r in rows)
    out.append(f"| **all** | **{total}** | **{sum(r['errors'] for r in rows)}** | | | | |")
    out += ["", "| process | RSS at start (MiB) | RSS at end (MiB) | change |", "|---|--:|--:|--:|"]
    for role in sorted(set(start) | set(end)):
        a, b = start.get(role), end.get(role)
        change = f"{b - a:+.0f}" if a is not None and b is not None else "–"
        out.append(f"| {role} | {'–' if a is None else f'{a:.0f}'} | {'–' if b is None else f'{b:.0f}'} | {change} |")
    out += ["", *notes]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 10)))
    ap.add_argument("--repo", type=Path, default=ROOT / "model_repository", help="an exported model repository")
    ap.add_argument("--model", default="multilingual-e5-small", help="the embedding model to load")
    ap.add_argument("--workers", type=int, default=6, help="concurrent callers (enough to saturate 2 cores)")
    ap.add_argument("--restart-at", type=float, default=0.5, help="kill replica 0 at this share of the run")
    ap.add_argument("--bucket", type=float, default=60.0, help="seconds per table row")
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "soak.md", help="where the Markdown goes")
    args = ap.parse_args(argv)
    if not (args.repo / args.model).is_dir():
        raise SystemExit(f"{args.repo / args.model} not found: export it first (make export)")

    work = ROOT / ".cache" / "soak"
    work.mkdir(parents=True, exist_ok=True)
    replicas = [Replica(i, args.repo, work) for i in range(2)]
    gateway: subprocess.Popen | None = None
    load: Load | None = None
    threads: list[threading.Thread] = []
    try:
        t = time.monotonic()
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready()
        from tembed_serving.supervisor import free_port

        port = free_port()
        gw_url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "tembed_gateway", "--port", str(port), "--log-level", "warning"]
        cmd += [x for r in replicas for x in ("--triton", r.grpc_url)] + ["--model-repository", str(args.repo)]
        gateway = subprocess.Popen(cmd, stdout=open(work / "gateway.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{gw_url}/health/ready", timeout=10).status_code == 200:
                    break
            if gateway.poll() is not None or time.monotonic() - t > 300:
                raise SystemExit(f"the gateway did not become ready (log: {work / 'gateway.log'})")
            time.sleep(0.5)
        models = httpx.get(f"{gw_url}/v1/models", timeout=10).json()["data"]
        reranker = next((m["id"] for m in models if m.get("task") == "rerank" and m["id"] == m["root"]), None)
        print(f"2 replicas ({', '.join(r.grpc_url for r in replicas)}) and the gateway ({gw_url}) ready in"
              f" {time.monotonic() - t:.0f} s; {args.workers} workers for {args.minutes:g} min, model {args.model}"
              f"{', reranker ' + reranker if reranker else ''}", flush=True)  # fmt: skip

        load = Load(gw_url, args.model, reranker)
        rss_start = snapshot(gateway, replicas)
        t0 = time.monotonic()
        threads = [threading.Thread(target=load.worker, args=(i,), daemon=True) for i in range(args.workers)]
        for th in threads:
            th.start()
        duration = args.minutes * 60
        restart = Restart(replicas[0], gateway, gw_url, t0 + duration * args.restart_at, t0)
        chaos = threading.Thread(target=restart, daemon=True)
        chaos.start()
        printed = 0
        while (now := time.monotonic()) < t0 + duration:
            done = int((now - t0) // args.bucket)
            if done > printed:
                rows = minute_rows([o for o in load.outcomes if o.end < t0 + done * args.bucket], t0, args.bucket)
                for r in rows[printed:]:
                    print(f"  until {r['until']:>6}: {r['requests']:6d} requests, {r['errors']} errors,"
                          f" {r['req_s']:6.1f} req/s, P50 {r['p50_ms']:5.0f} ms, P99 {r['p99_ms']:6.0f} ms",
                          flush=True)  # fmt: skip
                printed = done
            time.sleep(0.2)
        if not restart.done.is_set():
            print("  waiting for the restart to finish", flush=True)
            restart.done.wait(300)
        rss_end = snapshot(gateway, replicas)
        load.stop.set()
        for th in threads:
            th.join(120)
        outcomes = list(load.outcomes)
        rows = minute_rows(outcomes, t0, args.bucket, last=max(1, round(duration / args.bucket)) - 1)
        errors = [o for o in outcomes if o.error]
        # The killed replica's processes: from the start to just before the kill; the restarted ones:
        # from when they took traffic to the end.
        killed = replicas[0].label.replace(", restarted", "")
        rss_end.update({k.replace(killed, f"{killed} (killed)"): v for k, v in restart.rss_before.items()})
        rss_start = {k.replace(killed + ":", f"{killed} (killed):"): v for k, v in rss_start.items()}
        rss_start.update(restart.rss_after)
        notes = restart.notes + [
            f"{len(outcomes)} requests, {len(errors)} failed; {args.workers} workers through the gateway (openai"
            f" client, no retries) for {args.minutes:g} min; requests still running at the end count in the last"
            f" row. RSS: the killed replica's processes from the start to just before the kill, the restarted"
            f" ones from when they took traffic to the end."
        ]
        text = markdown(rows, rss_start, rss_end, notes)
        print("\n" + text, flush=True)
        for o in errors[:10]:
            print(f"  failed ({o.route}, {o.end - t0:.1f} s): {o.error}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}")
        numbers = {"minutes": rows, "rss_start_mib": rss_start, "rss_end_mib": rss_end, "notes": notes}
        record.write("soak", numbers | {"failed": len(errors)}, quick=args.minutes < 5, args=vars(args))
        return 1 if errors else 0
    finally:
        if load is not None:
            load.stop.set()
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                gateway.wait(30)
            if gateway.poll() is None:
                gateway.kill()
        for r in replicas:
            r.stop()


if __name__ == "__main__":
    raise SystemExit(main())
