"""Every config.pbtxt is rendered from the profile and must parse as Triton's ModelConfig."""

from __future__ import annotations

import dataclasses

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from tembed.repository import (
    ServingOptions,
    encoder_config,
    ensemble_config,
    finishes_vectors,
    model_names,
    parse,
    postprocess_config,
    render,
    tokenizer_config,
    write_repository,
)


@pytest.fixture
def profile(profiles):
    return profiles["qwen3-embedding-tiny"]


ALL_BACKENDS = ("python-onnx", "pytorch", "onnxruntime", "tensorrt")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_rendered_configs_parse_back(profile, backend):
    opts = ServingOptions(backend=backend)
    for cfg in (
        tokenizer_config(profile, opts),
        encoder_config(profile, opts),
        postprocess_config(profile),
        ensemble_config(profile, opts),
    ):
        assert parse(render(cfg)) == cfg


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ensemble_wiring_is_closed(profile, backend):
    """Every step input is an ensemble input or an earlier step's output; every output is produced;
    the tokenizer lists exactly what the steps after it read (it emits what its config lists)."""
    opts = ServingOptions(backend=backend)
    configs = {
        c.name: c for c in (tokenizer_config(profile, opts), encoder_config(profile, opts), postprocess_config(profile))
    }
    ens = ensemble_config(profile, opts)
    available = {i.name for i in ens.input}
    read = set()
    for step in ens.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert set(step.input_map) <= {i.name for i in model.input}
        assert {i.name for i in model.input if not i.optional} <= set(step.input_map)
        assert set(step.input_map.values()) <= available, step.model_name
        assert set(step.output_map) <= {o.name for o in model.output}
        available |= set(step.output_map.values())
        read |= set(step.input_map.values())
    assert {o.name for o in ens.output} <= available
    tok = ens.ensemble_scheduling.step[0]
    assert set(tok.output_map) == {o.name for o in configs[tok.model_name].output}
    assert set(tok.output_map.values()) <= read | {o.name for o in ens.output}
    assert ens.parameters["max_texts"].string_value == str(profile.max_texts)
    assert ens.parameters["dimension"].string_value == str(profile.dimension)


@pytest.mark.parametrize(
    ("backend", "steps"),
    [
        ("python-onnx", ["tokenizer", "encoder"]),
        ("pytorch", ["tokenizer", "encoder"]),
        ("onnxruntime", ["tokenizer", "encoder", "postprocess"]),
        ("tensorrt", ["tokenizer", "encoder", "postprocess"]),
    ],
)
def test_python_encoders_finish_the_vectors(profile, backend, steps):
    """A Python-backend encoder finishes the vectors itself: two steps, its outputs the ensemble's;
    Triton's native backends keep the postprocess step."""
    opts = ServingOptions(backend=backend)
    names = model_names(profile.name)
    ens = ensemble_config(profile, opts)
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [names[r] for r in steps]
    assert finishes_vectors(profile, opts) == (len(steps) == 2)
    enc, outputs = ens.ensemble_scheduling.step[1], {"embedding", "embedding_packed"}
    if len(steps) == 2:
        # and the server's own time of the batch's run (contract.ENCODE_NS), beside the tokenizer's
        assert set(enc.output_map) == set(enc.output_map.values()) == outputs | {"encode_ns"}
        assert {"tokenize_ns", "encode_ns"} <= {o.name for o in ens.output}
        cfg = encoder_config(profile, opts)
        # a batched model: every input's first dimension is the request's rows (the batch dimension)
        assert cfg.max_batch_size == profile.max_rows
        assert {i.name: list(i.dims) for i in cfg.input if i.optional} == {"row_options": [3], "row_weight_column": [1]}
        want = {"embedding": [-1], "embedding_packed": [-1], "encode_ns": [1]}
        assert {o.name: list(o.dims) for o in cfg.output} == want
    else:
        assert set(ens.ensemble_scheduling.step[2].output_map) == outputs


@pytest.mark.parametrize(
    ("backend", "platform", "kind"),
    [
        ("python-onnx", "", mc.ModelInstanceGroup.KIND_CPU),
        ("onnxruntime", "onnxruntime_onnx", mc.ModelInstanceGroup.KIND_GPU),
        ("tensorrt", "tensorrt_plan", mc.ModelInstanceGroup.KIND_GPU),
    ],
)
def test_encoder_backends(profile, backend, platform, kind):
    cfg = encoder_config(profile, ServingOptions(backend=backend))
    assert cfg.platform == platform and cfg.instance_group[0].kind == kind
    assert cfg.max_batch_size == profile.max_rows  # every window of a chunked request
    # rows of the full dimension, or (a Python runner: it finishes them) per text and as asked
    # (and the batch's run time, contract.ENCODE_NS)
    want = [[-1], [-1], [1]] if backend == "python-onnx" else [[profile.dimension]]
    assert [o.dims for o in cfg.output] == want
    assert cfg.HasField("dynamic_batching")


def test_ids_dtype_follows_profile(profile):
    p32 = dataclasses.replace(profile, ids_dtype="int32")
    for cfg in (tokenizer_config(p32, ServingOptions()), encoder_config(p32, ServingOptions(backend="tensorrt"))):
        ids = {t.name: t.data_type for t in [*cfg.input, *cfg.output]}
        assert ids["input_ids"] == mc.TYPE_INT32


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        ServingOptions(backend="tflite")


def test_write_repository_layout(profile, fixture_dirs, tmp_path):
    written = write_repository(
        profile,
        tmp_path,
        tokenizer_file=fixture_dirs["qwen3-embedding-tiny"] / "tokenizer.json",
        encoder_file=None,
        opts=ServingOptions(),
    )
    names = model_names(profile.name)
    # the Python-backend encoder finishes the vectors: no postprocess model
    assert {p.name for p in written.values()} == set(names.values()) - {names["postprocess"]}
    tok = written["tokenizer"] / "1"
    assert {f.name for f in tok.iterdir()} == {"model.py", "tokenizer.json", "profile.json"}
    assert (written["ensemble"] / "1").is_dir()  # Triton needs the (empty) version folder
    for d in written.values():
        parse((d / "config.pbtxt").read_text())


def test_priority_lanes_are_models_of_their_own_over_the_same_weights(profile, fixture_dirs, tmp_path):
    """The export's bulk lane: an encoder whose version folder is the encoder's (a symlink) and an ensemble
    whose encoder step is that one; the model's ensemble names it, discovery hides it; off, none is left."""
    from tembed_client.discovery import discover_models, is_lane
    from tembed_serving import contract as c

    tok = fixture_dirs["qwen3-embedding-tiny"] / "tokenizer.json"
    written = write_repository(profile, tmp_path, tokenizer_file=tok, encoder_file=None, opts=ServingOptions())
    names = model_names(profile.name)
    lane, encoder = c.lane_name(profile.name, "low"), c.lane_name(names["encoder"], "low")
    assert (tmp_path / encoder / "1").is_symlink()
    assert (tmp_path / encoder / "1").resolve() == (written["encoder"] / "1").resolve()
    lane_cfg = parse((tmp_path / lane / "config.pbtxt").read_text())
    steps = [s.model_name for s in lane_cfg.ensemble_scheduling.step]
    assert encoder in steps and names["encoder"] not in steps and names["tokenizer"] in steps
    main = parse((written["ensemble"] / "config.pbtxt").read_text())
    assert main.parameters[c.PARAM_LANES].string_value == f"low={lane}"
    as_json = {
        n: {"config": {"name": n, "platform": cfg.platform, "parameters": {k: {"string_value": v.string_value}
            for k, v in cfg.parameters.items()}}}
        for n, cfg in ((profile.name, main), (lane, lane_cfg))
    }  # fmt: skip
    assert is_lane(as_json[lane]["config"]) and not is_lane(as_json[profile.name]["config"])
    assert lane not in discover_models(as_json)  # never listed as a model of its own
    write_repository(
        profile, tmp_path, tokenizer_file=tok, encoder_file=None, opts=ServingOptions(priority_lanes=False)
    )
    assert not (tmp_path / lane).exists() and not (tmp_path / encoder).exists()
    assert c.PARAM_LANES not in parse((written["ensemble"] / "config.pbtxt").read_text()).parameters


def test_python_encoder_batches_requests_of_any_width(profile):
    """Ragged batching for the Python encoders only (their runner pads and regroups); a C++ backend needs
    same-shape batches."""
    from tembed_serving import contract as c

    ragged = {t.name: t.allow_ragged_batch for t in encoder_config(profile, ServingOptions()).input}
    assert all(ragged[n] for n in c.ENCODER_INPUTS)
    cpp = {t.name: t.allow_ragged_batch for t in encoder_config(profile, ServingOptions(backend="onnxruntime")).input}
    assert not any(cpp[n] for n in c.ENCODER_INPUTS)


def test_encoder_queue_policy_is_opt_in(profile):
    """No queue policy by default (tritonserver 2.51's batcher stalls with one); asked for, a bounded
    queue sized from the profile and a wait after which Triton refuses."""
    assert not encoder_config(profile, ServingOptions()).dynamic_batching.HasField("default_queue_policy")
    opts = ServingOptions(queue_timeout_s=10.0, queue_tokens=65536)
    policy = encoder_config(profile, opts).dynamic_batching.default_queue_policy
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert policy.default_timeout_microseconds == 10_000_000
    assert policy.max_queue_size == max(16, 65536 // profile.max_length)
    only_timeout = encoder_config(profile, ServingOptions(queue_timeout_s=5.0)).dynamic_batching.default_queue_policy
    assert only_timeout.default_timeout_microseconds == 5_000_000 and only_timeout.max_queue_size == 0
    assert (
        parse(render(encoder_config(profile, opts))).dynamic_batching == encoder_config(profile, opts).dynamic_batching
    )


def test_encoder_batcher_waits_a_little_by_default(profile):
    """A small queue delay by default: at 0 (and no queue policy) tritonserver 2.51's batcher thread
    spins while the encoder works (docs/BENCHMARKS.md)."""
    assert encoder_config(profile, ServingOptions()).dynamic_batching.max_queue_delay_microseconds == 100
    assert (
        encoder_config(profile, ServingOptions(max_queue_delay_us=0)).dynamic_batching.max_queue_delay_microseconds == 0
    )
