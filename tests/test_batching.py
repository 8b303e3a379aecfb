"""Length-grouped runs: every row once, padding cut per group, same vectors as the padded batch."""

from __future__ import annotations

import numpy as np
import pytest

from tembed_serving.runners.batching import length_group, plan


def ragged_mask(lengths, width, left):
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1 if left else 0
        if not left:
            mask[row, :n] = 1
    return mask


@pytest.mark.parametrize("left", [True, False])
def test_plan_covers_each_row_once_and_cuts_padding(left):
    lengths = [3, 200, 17, 16, 64, 1, 130]
    mask = ragged_mask(lengths, 256, left)
    calls = plan(mask, left=left, max_batch_tokens=300)
    rows = np.concatenate([r for r, _ in calls])
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for r, cols in calls:
        kept = mask[r][:, cols]
        assert (kept.sum(axis=1) == mask[r].sum(axis=1)).all()  # no real token is cut
        longest = max(lengths[i] for i in r)
        assert longest <= kept.shape[1] <= length_group(longest)  # cut to its length group's longest row
        assert len(r) * kept.shape[1] <= 300 or len(r) == 1


def test_plan_without_trim_is_one_call():
    mask = ragged_mask([3, 50], 64, True)
    ((rows, cols),) = plan(mask, left=True, trim=False)
    assert rows.tolist() == [0, 1] and cols == slice(0, 64)


@pytest.mark.slow  # two torch models of qwen3-embedding-tiny: ~11 s on 2 cores
def test_torch_runner_trims_without_changing_vectors(fixture_dirs, profiles):
    from tembed_serving.runners.torch import TorchEncoder
    from tembed_serving.textproc import TextEncoder

    name = "qwen3-embedding-tiny"
    profile = profiles[name]
    enc = TextEncoder(profile, fixture_dirs[name] / "tokenizer.json")
    batch = enc(["短", "一段较长的文本，" * 40, "medium length text " * 5, "x"])
    runners = [TorchEncoder.load(fixture_dirs[name], profile, dtype="float32", device="cpu") for _ in range(2)]
    runners[1].trim_padding = False
    trimmed, padded = (r.run(batch.input_ids, batch.attention_mask) for r in runners)
    assert np.abs(trimmed - padded).max() <= 1e-5
