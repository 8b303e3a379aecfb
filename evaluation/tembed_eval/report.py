"""docs/QUALITY.md: one column per served model, and a plot of quality against bytes per vector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .compact import kept_section
from .engine import kept_section as kept_engine_section
from .evaluate import task_metrics
from .rerank import markdown as rerank_markdown

Results = dict[str, dict[str, Any]]  # model -> evaluate_model() result


def _primary(task: str) -> str:
    return task_metrics(task)[0]


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _task_names(results: Results) -> list[str]:
    names: list[str] = []
    for r in results.values():
        names += [t for t in r["tasks"] if t not in names]
    return names


def table(results: Results, memory: dict[str, Any] | None) -> list[str]:
    models = list(results)
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, get) -> None:
        cells = []
        for m in models:
            try:
                cells.append(get(results[m]))
            except (KeyError, TypeError):
                cells.append("—")
        rows.append((label, cells))

    tasks = _task_names(results)
    for t in tasks:
        add(f"{t}: size", lambda r, t=t: f"{r['tasks'][t]['queries']} q / {r['tasks'][t]['docs']} docs")
        for metric in results[next(m for m in models if t in results[m]["tasks"])]["tasks"][t]["metrics"]:
            add(f"{t} {metric}", lambda r, t=t, metric=metric: _cell(r["tasks"][t]["metrics"][metric]))
    for t in tasks:
        p = _primary(t)

        def delta(r, t=t, p=p) -> str:
            with_, without = r["tasks"][t]["metrics"][p], r["tasks"][t]["no_prompt"][p]
            return f"{with_ - without:+.3f} ({with_:.3f} vs {without:.3f})"

        add(f"prompt Δ {t} {p} (with − without)", delta)
    dims = sorted({int(d) for r in results.values() for t in r["tasks"].values() for d in t["sweep"]})
    legend = " · ".join(f"{t} {_primary(t)}" for t in tasks)
    for d in dims:

        def sweep(r, d=d) -> str:
            vals = [r["tasks"][t]["sweep"].get(d, r["tasks"][t]["sweep"].get(str(d))) for t in tasks]
            if all(v is None for v in vals):
                return "—"
            return " · ".join(_cell(v[_primary(t)] if v else None) for t, v in zip(tasks, vals))

        add(f"Matryoshka d={d} ({4 * d} B)", sweep)
    add(
        "long text: chars / tokens embedded",
        lambda r: f"{r['long_document']['chars']} / {r['long_document']['tokens_embedded']}",
    )
    add("long text: cos(first, last paragraph)", lambda r: _cell(r["long_document"]["first_last_cos"]))
    add(
        "long text: cos(paragraph, whole doc) mean / min",
        lambda r: f"{r['long_document']['para_to_doc_mean']:.3f} / {r['long_document']['para_to_doc_min']:.3f}",
    )
    add(
        "latency P50 / P99 (ms per request)",
        lambda r: f"{r['latency']['p50_ms']:.0f} / {r['latency']['p99_ms']:.0f} (n={r['latency']['requests']})",
    )
    if memory:
        add("server memory: this model's stubs (MiB RSS)", lambda r: f"{memory['model_stubs_mib'][r['name']]:.0f}")
        add("server memory: whole tritonserver (MiB RSS)", lambda r: f"{memory['total_mib']:.0f}")
    add(
        "Qdrant vs exact numpy (mismatched / checked)",
        lambda r: "{} / {}".format(
            sum(t["cross_check"]["mismatched"] for t in r["tasks"].values()),
            sum(t["cross_check"]["queries"] for t in r["tasks"].values()),
        ),
    )
    add(
        "server `dimensions` vs client truncation (max abs diff)",
        lambda r: f"{r['matryoshka_check']['max_abs_diff']:.1e}",
    )
    lines = [
        f"Matryoshka cells: {legend}.",
        "",
        "| | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return lines


LONG_ROWS = (
    ("tokens embedded (whole text)", lambda m: f"{m['tokens_embedded']} ({m['tokens_original']})"),
    ("cos(first paragraph, document)", lambda m: f"{m['first_to_doc']:.3f}"),
    ("cos(last paragraph, document)", lambda m: f"{m['last_to_doc']:.3f}"),
    ("cos(paragraph, document) mean / min", lambda m: f"{m['para_to_doc_mean']:.3f} / {m['para_to_doc_min']:.3f}"),
    ("request time (ms)", lambda m: f"{m['ms']}"),
)


def long_text_table(results: Results) -> list[str]:
    """``long_text`` truncate vs chunk on the long document: one column per model and mode."""
    long = {name: r["long_document"] for name, r in results.items() if r.get("long_document", {}).get("modes")}
    cols = [(name, mode, m) for name, doc in long.items() for mode, m in doc["modes"].items()]
    if not cols:
        return []

    def cell(get, m) -> str:
        return m["error"] if "error" in m else get(m)

    first = next(iter(long.values()))
    lines = [
        "## Long documents: truncate vs chunk",
        "",
        f"One document of {first['chars']} characters ({first['paragraphs']} CMRC2018 paragraphs), embedded whole"
        " with `long_text` truncate and chunk; each paragraph is also embedded alone.",
        "",
        "| | " + " | ".join(f"{name} {mode}" for name, mode, _ in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    lines += [f"| {label} | " + " | ".join(cell(get, m) for _, _, m in cols) + " |" for label, get in LONG_ROWS]
    return lines


def plot(results: Results, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    tasks = _task_names(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        p = _primary(t)
        for model, r in results.items():
            if t not in r["tasks"]:
                continue
            sweep = {int(d): v[p] for d, v in r["tasks"][t]["sweep"].items()}
            dims = sorted(sweep)
            ax.plot([4 * d for d in dims], [sweep[d] for d in dims], marker="o", label=model)
        ax.set_xscale("log", base=2)
        ticks = sorted({int(d) for r in results.values() if t in r["tasks"] for d in r["tasks"][t]["sweep"]})
        ax.set_xticks([4 * d for d in ticks], [f"{4 * d} B\nd={d}" for d in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)  # one scale for every panel and model
        ax.set_title(f"{t}: {p}", fontsize=10)
        ax.set_xlabel("bytes per vector (float32: 4·d)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("quality")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Hand-run comparisons a full report keeps as they are (no tembed eval flag writes them): the int8 encoder's
# column against fp32, both served in one tritonserver (docs/QUALITY.md says the command).
INT8_BEGIN, INT8_END = "<!-- quality:int8:begin -->", "<!-- quality:int8:end -->"


def kept_region(out: Path, begin: str, end: str) -> list[str]:
    """The lines between ``begin`` and ``end`` in ``out`` (markers included), or nothing."""
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    if begin not in text or end not in text:
        return []
    return [begin, *text.split(begin, 1)[1].split(end, 1)[0].strip("\n").splitlines(), end]


def write_report(
    results: Results,
    memory: dict[str, Any] | None,
    out: Path,
    command: str,
    date: str,
    notes: list[str],
    *,
    rerank: dict[str, Any] | None = None,
) -> tuple[Path, Path | None]:
    """``rerank``: ``tembed_eval.rerank.evaluate_rerank``'s result, as its own section."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # Only the long-text task (`--tasks long`): no retrieval task, nothing to plot.
    png = plot(results, out.with_suffix(".png")) if _task_names(results) else None
    text = [
        "# Retrieval quality of the served models",
        "",
        f"Generated {date} by:",
        "",
        "```bash",
        command,
        "```",
        "",
        *table(results, memory),
        "",
        *([f"![quality against bytes per vector]({png.name})", ""] if png else []),
        *([*rerank_markdown(rerank), ""] if rerank else []),
        *([*compact, ""] if (compact := kept_section(out)) else []),  # `tembed eval --embedding-types` writes it
        *([*engine, ""] if (engine := kept_engine_section(out)) else []),  # `python -m tembed_eval.engine` writes it
        *([*int8, ""] if (int8 := kept_region(out, INT8_BEGIN, INT8_END)) else []),
        *([*long_text_table(results), ""] if long_text_table(results) else []),
        "## How it is measured",
        "",
        *[f"- {n}" for n in notes],
        "",
    ]
    out.write_text("\n".join(text), encoding="utf-8")
    return out, png
