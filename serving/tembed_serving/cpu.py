"""What the CPU can do for the encoder: its model name and the x86 instruction sets int8 and fp32 speed hang on.

int8 is fast only where a u8 x s8 dot product is one instruction (AVX-512 VNNI, AVX-VNNI, AMX): on a
2-core AMD EPYC with AVX2 alone (2026-12-03) OpenVINO ran e5-small's NNCF int8 graph slower than its fp32
graph (b=16 x 128: 914 vs 746 ms; 1 x 16: 13.9 vs 10.8 ms), where the same cores with AVX-512 VNNI had it
3.5x faster (docs/BENCHMARKS.md, "CPU runtimes x precisions"). The bench writes these facts into every
record; an int8 encoder loaded on a CPU without them says so in the server's log."""

from __future__ import annotations

import logging
from pathlib import Path

# /proc/cpuinfo flag names, in the order records list them.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
# Any of these runs int8 dot products in one instruction.
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")

log = logging.getLogger("tembed")


def cpu_model_and_flags(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`ISA_FLAGS` it has (from Linux's /proc/cpuinfo, or the
    text given; elsewhere ``("", [])``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "", []
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, [f for f in ISA_FLAGS if f in flags]


def int8_slow_reason(isa: list[str] | None = None) -> str | None:
    """Why int8 will not be faster than fp32 on this CPU, or None when it has an int8 dot product (or
    the flags cannot be read: no claim then)."""
    if isa is None:
        model, isa = cpu_model_and_flags()
        if not model and not isa:
            return None
    if any(f in isa for f in INT8_DOT):
        return None
    return (
        f"this CPU has {', '.join(isa) or 'no AVX2'} but no int8 dot product ({' / '.join(INT8_DOT)}): "
        "an int8 encoder may run slower than fp32 here (docs/BENCHMARKS.md)"
    )
