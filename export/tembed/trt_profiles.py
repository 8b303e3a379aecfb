"""TensorRT optimization profiles: the (batch, sequence) ranges an engine is built for.

Pure arithmetic, shared by the repository writer (the ``tensorrt_plan`` config lists the profiles)
and the engine builder (which builds them); neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

# One profile per range; each range's kernels are tuned for its own shapes. A single 1..32k profile
# makes TensorRT time every tactic at one opt shape and size activation memory for the 32k worst
# case, which short requests (most traffic) then pay for.
DEFAULT_SEQ_BUCKETS = (512, 2048, 8192, 32768)
# Caps batch x sequence per profile: activation memory grows with tokens, and TensorRT reserves it
# for the largest profile at load time (64 x 32k tokens of a 4B model would not fit on an 80 GB GPU).
DEFAULT_MAX_BATCH_TOKENS = 65536


@dataclass(frozen=True)
class ShapeProfile:
    """(batch, sequence) shapes of one optimization profile; the same for input_ids and attention_mask."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def admits(self, batch: int, seq: int) -> bool:
        return self.min[0] <= batch <= self.max[0] and self.min[1] <= seq <= self.max[1]


def optimization_profiles(
    max_length: int,
    max_batch: int,
    seq_buckets: tuple[int, ...] | list[int] = DEFAULT_SEQ_BUCKETS,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
) -> list[ShapeProfile]:
    """Contiguous, non-overlapping sequence ranges (1..b0, b0+1..b1, ...) capped at ``max_length``.

    Non-overlapping, so exactly one profile admits a request's shape and Triton's choice (the
    admissible profile nearest to opt) is the one tuned for it.
    """
    if max_length < 1 or max_batch < 1:
        raise ValueError(f"max_length and max_batch must be >= 1, got {max_length}, {max_batch}")
    if not seq_buckets or any(int(b) < 1 for b in seq_buckets):
        raise ValueError(f"sequence buckets must be positive integers, got {list(seq_buckets)}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1 (or None for no cap), got {max_batch_tokens}")
    caps = sorted({int(b) for b in seq_buckets if b < max_length} | {max_length})
    profiles, lo = [], 1
    for hi in caps:
        batch = max_batch if max_batch_tokens is None else max(1, min(max_batch, max_batch_tokens // hi))
        # opt at the top of the range: the tokenizer pads to power-of-two buckets, so within one
        # range the longest bucket costs the most GPU time, and under load (when throughput
        # matters) the dynamic batcher fills batches. TensorRT times tactics only at opt.
        profiles.append(ShapeProfile(min=(1, lo), opt=(batch, hi), max=(batch, hi)))
        lo = hi + 1
    return profiles


def select_profile(profiles: list[ShapeProfile], batch: int, seq: int) -> int:
    """The profile Triton's tensorrt backend runs a batch with: admissible, then nearest to opt."""
    admissible = [i for i, p in enumerate(profiles) if p.admits(batch, seq)]
    if not admissible:
        raise ValueError(f"no optimization profile admits batch={batch}, seq={seq}")
    return min(admissible, key=lambda i: abs(profiles[i].opt[0] - batch) + abs(profiles[i].opt[1] - seq))
