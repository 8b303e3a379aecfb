"""The CPU encoder runner: trimming padding, splitting by a token budget and merging requests of
different widths must not change a single vector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tembed.onnx_export import export_onnx, sample_inputs
from tembed_serving.runners.ort import OrtEncoder, OrtOptions
from tembed_serving.runners.torch_model import load_embedding_model


@pytest.fixture(scope="module", params=["qwen3-embedding-tiny", "all-minilm-l6-v2"])  # left and right padding
def exported(request, fixture_dirs, profiles, tmp_path_factory):
    name = request.param
    profile = profiles[name]
    model = load_embedding_model(fixture_dirs[name], profile)
    path = export_onnx(model, profile, tmp_path_factory.mktemp(name) / "model.onnx")
    return model, profile, path


def runner(path, profile, **options):
    return OrtEncoder(
        path, pad_token_id=profile.pad_token_id, padding_side=profile.padding_side, options=OrtOptions(**options)
    )


def test_trim_and_token_budget_match_the_model(exported):
    model, profile, path = exported
    ids, mask = sample_inputs(profile, 7, 48, vocab=model.backbone.config.vocab_size, seed=3)
    with torch.inference_mode():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    plain = runner(path, profile, trim_padding=False).run(ids, mask)
    trimmed = runner(path, profile).run(ids, mask)
    budget = runner(path, profile, max_batch_tokens=40).run(ids, mask)  # one row per call for long rows
    for out in (plain, trimmed, budget):
        assert np.abs(out - ref).max() <= 1e-5


def test_requests_of_different_widths_are_padded_on_the_profile_side(exported):
    model, profile, path = exported
    vocab = model.backbone.config.vocab_size
    a = sample_inputs(profile, 2, 16, vocab=vocab, seed=1)
    b = sample_inputs(profile, 3, 32, vocab=vocab, seed=2)
    enc = runner(path, profile)
    merged = enc([a[0], b[0]], [a[1], b[1]])
    assert [m.shape for m in merged] == [(2, profile.dimension), (3, profile.dimension)]
    for (ids, mask), out in zip((a, b), merged):
        assert np.abs(out - enc.run(ids, mask)).max() <= 1e-5


def test_options_from_config_parameters():
    o = OrtOptions.from_parameters({"intra_op_threads": "2", "trim_padding": "0", "max_batch_tokens": "4096"})
    assert (o.intra_op_threads, o.trim_padding, o.max_batch_tokens, o.allow_spinning) == (2, False, 4096, False)
    with pytest.raises(ValueError, match="graph_optimization"):
        OrtEncoder("unused.onnx", pad_token_id=0, padding_side="right", options=OrtOptions(graph_optimization="max"))
