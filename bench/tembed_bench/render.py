"""Records -> docs/BENCHMARKS.md: tables and plots between ``<!-- bench:NAME:begin -->`` and
``<!-- bench:NAME:end -->``; every word outside those markers is written by hand in the markdown.

    python -m tembed_bench render                 # every region whose record exists
    python -m tembed_bench render budget rerank   # some
    python -m tembed_bench render --quick compare # a quick record too (for a look; do not commit it)

Each region starts with the record's date, commit and machine. A rendered record is copied to
``docs/bench/NAME.json``, so the doc's numbers stay next to it in git."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import record
from .flops import PEAK_SIZE

DOC = record.ROOT / "docs" / "BENCHMARKS.md"
PNG = {"compare": "benchmarks.png", "budget": "budget.png"}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"


def replace_region(doc: Path, name: str, body: str) -> bool:
    begin, end = markers(name)
    text = doc.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        print(f"{doc}: no region {begin} … {end}; add one where the section belongs", flush=True)
        return False
    head, rest = text.split(begin, 1)
    doc.write_text(f"{head}{begin}\n{body.strip()}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")
    return True


def table(head: list[str], rows: list[list], right_from: int = 1) -> str:
    out = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < right_from else "---:" for i in range(len(head))) + "|",
    ]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]) + "\n"


def stamp(rec: dict) -> str:
    m = rec["machine"]
    quick = " **quick run: counts too small to quote**." if rec.get("quick") else ""
    cpu = m["cpu"]
    if "isa" in m:  # records before 2026-12-03 did not say which instruction sets the CPU had
        cpu = f"{m.get('cpu_model') or cpu}; {', '.join(m['isa']) or 'no AVX2'}"
    return (
        f"*Measured {rec['date']} at commit `{rec['commit']}`, {m['cores']} cores ({cpu}), load average"
        f" {m['load_avg_1m']} when done; record `docs/bench/{rec['bench']}.json`.*{quick}\n\n"
    )


def f(x: float | None, nd: int = 1) -> str:
    return "" if x is None else f"{x:,.{nd}f}"


# ---------------------------------------------------------------------------------------------- the harness
def harness(rec: dict, png: str | None) -> str:
    """One table per workload: a row per target; the gateway's added time when both paths ran."""
    out = stamp(rec)
    systems = {k: v["system"] for k, v in rec["targets"].items()}
    peak = (rec.get("peak_gflops") or {}).get("onnxruntime")
    if peak:
        out += utilisation_note(rec)
    for wname, w in rec["workloads"].items():
        res = w["results"]
        ref = next(iter(res))
        out += f"**{wname}** ({w['requests']} requests, {rec['args'].get('rounds', '?')} interleaved rounds)\n\n"
        head = ["target", "in flight", "texts/s", "tokens/s", f"× {ref} (median of rounds)", "P50 ms", "P99 ms"]
        head += ["CPU ms / request (all processes)", "min cosine to ours"]
        if peak:
            head.append("GFLOP/s (% of the runtime's MatMul peak)")
        rows = []
        for k, r in res.items():
            lat, vs = r["latency_ms"], r.get(f"vs_{ref}", {})
            cpu = sum(r["cpu_ms_per_request"].values())
            rows.append(
                [
                    systems.get(k, k),
                    r["concurrency"],
                    f(r["texts_per_s"]),
                    f(r["tokens_per_s"], 0),
                    f(vs.get("median"), 2),
                ]
                + [f(lat.get("p50"), 2), f(lat.get("p99"), 2), f(cpu, 2), f(rec["targets"][k]["min_cosine"], 4)]
            )
            if peak:
                g, (p, what) = r.get("gflops_per_s"), peak_of(rec, k)
                rows[-1].append("" if g is None else f"{g:,.0f} ({100 * g / p:.0f} % of {what})")
        if "triton" in res and "gateway" in res:
            g, t = res["gateway"]["latency_ms"], res["triton"]["latency_ms"]
            gw_cpu = res["gateway"]["cpu_ms_per_request"].get("gateway")
            rows.append(["**added by the gateway**", "", "", "", "", f"{g['p50'] - t['p50']:+.2f}"]
                        + [f"{g['p99'] - t['p99']:+.2f}", f"gateway {f(gw_cpu, 2)}", ""])  # fmt: skip
        out += table(head, rows) + "\n"
    out += "".join(f"- {n}\n" for n in rec.get("notes", []))
    if png:
        plot_harness(rec, DOC.parent / png)
        out += f"\n![throughput and latency]({png})\n"
    return out


def peak_of(rec: dict, target: str) -> tuple[float, str]:
    """The MatMul peak a target's GFLOP/s is read against: its runtime's (OpenVINO for raw-openvino*,
    else ONNX Runtime), int8 for an int8 target, and its label."""
    p = rec["peak_gflops"]
    runtime = "openvino" if target.startswith("raw-openvino") and "openvino" in p else "onnxruntime"
    kind = "int8" if "-int8" in target else "fp32"
    return p[runtime][kind], f"{'OV' if runtime == 'openvino' else 'ORT'} {kind}"


def utilisation_note(rec: dict) -> str:
    """The peak the GFLOP/s columns are read against, and the count behind them (tembed_bench.flops)."""
    p, sh = rec["peak_gflops"], rec.get("shape", {})
    ort = p["onnxruntime"]
    shape = f"{sh['layers']} layers, hidden {sh['hidden']}, FFN {sh['intermediate']}" if sh else "the model's shape"
    return (
        f"Utilisation: GFLOP/s = the workload's FLOPs counted from {shape} at each text's own token"
        f" length (weight MatMuls + attention; padding is not work), over the target's wall time; against one"
        f" {PEAK_SIZE}³ MatMul in ONNX Runtime on {p.get('threads', '?')} threads in the same run:"
        f" **{ort['fp32']:,.0f} GFLOP/s fp32**, **{ort['int8']:,.0f} GFLOP/s int8** (`MatMulInteger` u8 × s8)"
        + (
            f"; in OpenVINO **{p['openvino']['fp32']:,.0f} fp32**, **{p['openvino']['int8']:,.0f} int8** (QDQ)"
            if "openvino" in p
            else ""
        )
        + " (best of 10 calls).\n\n"
    )


def plot_harness(rec: dict, path: Path) -> None:
    plt = _pyplot()
    ws = list(rec["workloads"].items())
    fig, axes = plt.subplots(1, len(ws), figsize=(5 * len(ws), 4.5), squeeze=False)
    for ax, (wname, w) in zip(axes[0], ws):
        names = [rec["targets"][k]["system"].replace(" (", "\n(") for k in w["results"]]
        if w["throughput"]:
            ax.bar(names, [r["tokens_per_s"] for r in w["results"].values()], color="tab:blue")
            ax.set_title(f"{wname}: tokens/s (higher is better)", fontsize=9)
        else:
            x = np.arange(len(names))
            ax.bar(x - 0.2, [r["latency_ms"]["p50"] for r in w["results"].values()], 0.4, label="P50")
            ax.bar(x + 0.2, [r["latency_ms"]["p99"] for r in w["results"].values()], 0.4, label="P99")
            ax.set_xticks(x, names)
            ax.set_yscale("log")
            ax.legend(fontsize=7)
            ax.set_title(f"{wname}: ms per request (log)", fontsize=9)
        ax.tick_params(axis="x", labelsize=6)
    _save(fig, path)


# ---------------------------------------------------------------------------------------------- rerank
def rerank(rec: dict, png: str | None) -> str:
    rows = [
        [
            k,
            f(r["pairs_per_s"]),
            f"{r['latency_ms']['p50']:.0f} / {r['latency_ms']['p99']:.0f}",
            f(r["tokens_per_s"], 0),
        ]
        + [r["latency_ms"]["n"]]
        for k, r in rec["results"].items()
    ]
    head = [
        "system",
        "pairs/s (median of rounds)",
        f"per call ({rec['pairs']} pairs) P50 / P99 ms",
        "tokens/s",
        "calls",
    ]
    r = rec["ratio"]
    return (
        stamp(rec)
        + table(head, rows)
        + f"\nOurs / in-process throughput: **{r['overall']:.2f}×**; round by round median {r['median']:.2f}"
        f" (min {r['min']:.2f}, max {r['max']:.2f}). {rec['tokens_per_call']:,} tokens per call; server"
        f" max_texts {rec['max_texts']}; scores agree to {rec['max_abs_score_diff']:.1e}.\n"
    )


# ---------------------------------------------------------------------------------------------- budget
GROUP_COLORS = {"client": "tab:gray", "gRPC": "tab:purple", "ensemble": "tab:olive", "tokenizer": "tab:blue"}
GROUP_COLORS |= {"encoder": "tab:orange", "postprocess": "tab:green", "gateway": "tab:red", "machine": "tab:brown"}


def parts_table(runs: dict[str, list[dict]], walls: dict[str, float]) -> str:
    """One row per part, one column pair per run (mean ms and share of that run's wall)."""
    names = list(dict.fromkeys(p["name"] for ps in runs.values() for p in ps))
    rows = []
    for name in names:
        row = [name]
        for r, ps in runs.items():
            p = next((p for p in ps if p["name"] == name), None)
            row += [f"{p['ms']:.2f}", f"{100 * p['ms'] / walls[r]:.0f}"] if p else ["", ""]
        rows.append(row)
    rows.append(
        ["**client wall time (mean)**"]
        + [x for ps in runs.values() for x in (f"**{sum(p['ms'] for p in ps):.2f}**", "100")]
    )
    return table(["where the time goes"] + [x for r in runs for x in (f"{r}: ms", "%")], rows)


def budget(rec: dict, png: str | None) -> str:
    s, load, gw, floor = rec["single"], rec["load"], rec.get("gateway"), rec["single"].get("floor", {})
    inp = s["inproc"]["total"]
    rows = [[label, f(v["mean"], 2), f(v["p50"], 2), f(v["p99"], 2)] for label, v in (
        ("Triton over gRPC: the timed client path (the budget below)", s["wall"]),
        ("Triton over gRPC: `EmbeddingClient.encode`, the same queries", s["encode_wall"]),
        ("in-process: our tokenizer + ONNX Runtime, the same queries", inp),
    )]  # fmt: skip
    for key, label in (("wall", "timed path"), ("encode_wall", "`EmbeddingClient.encode`")):
        rows.append([f"**added by serving** ({label} − in-process)", f"**{s[key]['mean'] - inp['mean']:+.2f}**"]
                    + [f"**{s[key]['p50'] - inp['p50']:+.2f}**", ""])  # fmt: skip
    for model, v in floor.items():
        rows.append(
            [f"machine floor: `{model}` over gRPC, wall − busy", f(v["mean"], 2), f(v["p50"], 2), f(v["p99"], 2)]
        )
    if "floor-two" in floor:
        ours = [s["wall"][k] - inp[k] - floor["floor-two"][k] for k in ("mean", "p50")]
        rows.append(["**ours**: added by serving − the two-step floor", *(f"**{x:+.2f}**" for x in ours), ""])
    if gw:
        a = gw["added"]
        rows.append(
            [
                "**added by the gateway** over direct gRPC",
                f"**{a['mean']:+.2f}**",
                f"**{a['p50']:+.2f}**",
                f"{a['p99']:+.2f}",
            ]
        )
    out = stamp(rec) + table(["one short query at a time", "mean ms", "P50 ms", "P99 ms"], rows)
    if png:
        plot_budget(rec, DOC.parent / png)
        out += f"\n![latency budget]({png})\n"
    if rec.get("timeline"):
        tl = rec["timeline"]
        rows = [[p["name"], f(p["ms"], 2), f(tl["p50"][p["name"]], 2)] for p in tl["mean"]]
        rows.append(["**client wall time**", f"**{sum(p['ms'] for p in tl['mean']):.2f}**", ""])
        out += f"\nAlong the request's own clock (Triton's traces, {tl['n']} queries):\n\n"
        out += table(["along the request's own clock", "mean ms", "P50 ms"], rows)
    walls = {k: (s if k.startswith("c=1") else load)["wall"]["mean"] for k in rec["parts"]}
    out += "\nFrom Triton's per-model statistics:\n\n" + parts_table(rec["parts"], walls)
    c1, n, cores = s["cpu_ms_per_request"], load["requests"], rec["machine"]["cores"]
    rows = [
        [k, f(c1.get(k, 0.0), 2), f(load["cpu_s"].get(k, 0.0) * 1e3 / n), f(load["cpu_s"].get(k, 0.0))]
        for k in dict.fromkeys([*c1, *load["cpu_s"]])
    ]
    if gw:
        rows.append(["gateway (its own process)", f(gw["gateway_cpu_ms_per_request"], 2), "", ""])
    total, io = sum(load["cpu_s"].values()), load["inproc_seconds"]
    rows.append(
        [
            "**all**",
            f(sum(c1.values()), 2),
            f(total * 1e3 / n),
            f"**{total:.1f}** of {cores} cores × {load['seconds']:.1f} s",
        ]
    )
    rows.append(["*in-process tokenizer + ORT, the same requests*", f(s["inproc_cpu_ms_per_request"], 2)]
                + [f(io["cpu"] * 1e3 / n), f"{io['cpu']:.1f} of {io['tokenize'] + io['ort']:.1f} s"])  # fmt: skip
    head = ["process", "c=1 query: CPU ms per request", "mixed load: CPU ms per request", "mixed load: CPU s"]
    out += "\nCPU by process (Linux /proc; c=1: over the timed calls only):\n\n" + table(head, rows)
    served, ceiling = load["tokens"] / load["seconds"], load["tokens"] / (io["tokenize"] + io["ort"])
    out += (
        f"\nMixed load: {load['texts']} texts in {n} requests, {load['tokens']} tokens in {load['seconds']:.1f} s ="
        f" **{served:.0f} tokens/s** through Triton against **{ceiling:.0f}** in-process: **{served / ceiling:.2f}×**;"
        f" the encoder was busy {load['encoder_busy_s']:.1f} s ({load['encoder_executions']} executions).\n"
    )
    out += "".join(f"- {x}\n" for x in rec.get("notes", []))
    if rec.get("gateway_profile"):
        out += profile(rec["gateway_profile"], gw)
    return out


def profile(prof: dict, gw: dict) -> str:
    busy = max(prof["busy"], 1)
    pct = lambda items: [[f"`{k}`", f"{100 * v / busy:.1f}"] for k, v in items]  # noqa: E731
    inclusive = [(k, v) for k, v in prof["inclusive"] if v < 0.9 * busy]  # the server's own loop says nothing
    per_request = prof["busy"] / prof["rate"] * 1e3 / max(prof["requests"], 1)
    return (
        f"\nThe gateway under py-spy: {prof['requests']} requests, {prof['samples']} samples, {prof['idle']} waiting"
        f" left out; the other {prof['busy']} = {per_request:.2f} ms per request against"
        f" {gw['gateway_cpu_ms_per_request']:.2f} ms of CPU per request from /proc.\n\n"
        + table(["package (self)", "%"], pct(prof["packages"][:12]))
        + "\n"
        + table(["function (self)", "%"], pct(prof["self"][:20]))
        + "\n"
        + table(["function, anywhere in the stack (inclusive)", "%"], pct(inclusive[:20]))
    )


def plot_budget(rec: dict, path: Path) -> None:
    """One stacked bar per run, a panel per kind of load; parts in the order they are spent."""
    plt = _pyplot()
    panels = rec["bars"]
    widths = [len(b) for b in panels.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * sum(widths) + 1, 6.5), gridspec_kw={"width_ratios": widths})
    for ax, (title, bars) in zip(np.atleast_1d(axes), panels.items()):
        seen: set[str] = set()
        for x, parts in enumerate(bars.values()):
            total, bottom = sum(p["ms"] for p in parts), 0.0
            for p in parts:
                if p["ms"] <= 0:  # a negative difference of statistics is in the table, not stacked
                    continue
                ax.bar(x, p["ms"], 0.65, bottom=bottom, color=GROUP_COLORS.get(p["group"], "tab:cyan"),
                       edgecolor="white", linewidth=0.5, label=None if p["group"] in seen else p["group"])  # fmt: skip
                seen.add(p["group"])
                if p["ms"] > 0.045 * total:
                    ax.text(
                        x, bottom + p["ms"] / 2, p["name"].split(": ", 1)[-1][:34], ha="center", va="center", fontsize=6
                    )
                bottom += p["ms"]
            ax.text(
                x, bottom, f"{total:.2f} ms" if total < 10 else f"{total:.1f} ms", ha="center", va="bottom", fontsize=8
            )
        ax.set_xticks(range(len(bars)), list(bars), fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mean ms per request")
        ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()


RENDERERS = {"compare": harness, "gateway": harness, "rerank": rerank, "budget": budget}


def section(name: str, rec: dict | None, png: str | None = None) -> str:
    if rec is None:
        return f"(no record of {name} yet)"
    return RENDERERS.get(name, harness)(rec, png)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=list(RENDERERS))
    ap.add_argument("--quick", action="store_true", help="render quick records too")
    ap.add_argument("--doc", type=Path, default=None, help="default: docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    global DOC
    DOC = args.doc or DOC
    shown = DOC.parent / "bench"  # the PNGs and the shown records go beside the doc
    for name in args.names:
        rec = record.latest(name, quick=args.quick)
        if rec is None:
            print(f"{name}: no record", flush=True)
            continue
        png = PNG.get(name, f"bench/{name}.png") if name in ("compare", "gateway", "budget") else None
        if replace_region(DOC, name, section(name, rec, png)):
            shown.mkdir(parents=True, exist_ok=True)
            (shown / f"{name}.json").write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n")
            print(f"{DOC}: region {name} from the record of {rec['date']}", flush=True)
    return 0
