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


def test_no_wait_when_idle_prefers_every_batch_size(profile):
    """``wait_when_idle=False``: every batch size up to the model's maximum is preferred, so a lone request
    is sent at once; the delay stays (never 0: a spinning batcher) for the one-step model too."""
    from tembed.repository import EmbedTask

    eager = ServingOptions(wait_when_idle=False)
    for cfg in (encoder_config(profile, eager), EmbedTask().one_step_config(one_step(profile), eager)):
        assert list(cfg.dynamic_batching.preferred_batch_size) == list(range(1, cfg.max_batch_size + 1))
        assert cfg.dynamic_batching.max_queue_delay_microseconds == eager.max_queue_delay_us > 0
    assert not encoder_config(profile, ServingOptions()).dynamic_batching.preferred_batch_size
    # Unless told: the two-step encoder waits, the one-step model does not.
    one = EmbedTask().one_step_config(one_step(profile), ServingOptions())
    assert list(one.dynamic_batching.preferred_batch_size) == list(range(1, one.max_batch_size + 1))
    waits = EmbedTask().one_step_config(one_step(profile), ServingOptions(wait_when_idle=True))
    assert not waits.dynamic_batching.preferred_batch_size


def one_step(profile):
    return dataclasses.replace(profile, layout="one-step")


def test_one_step_model_is_the_ensembles_interface_as_batch_rows(profile):
    """The one-step model takes the ensemble's name, inputs, outputs and client parameters; batched, with
    ragged texts so requests of any length merge, and the encoder's runner and batcher."""
    from tembed.repository import EmbedTask
    from tembed_serving import contract as c

    opts = ServingOptions()
    ens, one = ensemble_config(profile, opts), EmbedTask().one_step_config(one_step(profile), opts)
    assert parse(render(one)) == one
    assert (one.name, one.backend, one.platform) == (ens.name, "python", "")
    assert one.max_batch_size == opts.max_batch_requests > 0
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in one.input] == [
        (i.name, i.data_type, list(i.dims), i.optional) for i in ens.input
    ]
    assert [(o.name, list(o.dims)) for o in one.output] == [(o.name, list(o.dims)) for o in ens.output]
    assert [i.name for i in one.input if i.allow_ragged_batch] == [c.TEXT]
    assert one.parameters[c.PARAM_LAYOUT].string_value == c.LAYOUT_ONE_STEP
    assert ens.parameters[c.PARAM_LAYOUT].string_value == c.LAYOUT_TWO_STEP
    for key, value in ens.parameters.items():
        if key != c.PARAM_LAYOUT:
            assert one.parameters[key] == value, key
    assert one.parameters[c.PARAM_RUNNER].string_value == "onnxruntime"
    assert one.dynamic_batching.max_queue_delay_microseconds == opts.max_queue_delay_us


def test_one_step_repository_layout(profile, fixture_dirs, tmp_path):
    """Two models: the one-step model (tokenizer, graph and profile in its version folder: Layout's encoder
    role) and the tokenizer for ``tokenize``; its lane a symlink to it; a two-step export over it restores
    the ensemble and leaves no one-step file behind."""
    from tembed_client.discovery import discover_models
    from tembed_serving import contract as c

    tok = fixture_dirs["qwen3-embedding-tiny"] / "tokenizer.json"
    graph = tmp_path / "graph.onnx"
    graph.write_bytes(b"onnx")
    repo = tmp_path / "repo"
    p = one_step(profile)
    written = write_repository(p, repo, tokenizer_file=tok, encoder_file=graph, opts=ServingOptions())
    names = model_names(p.name)
    lane = c.lane_name(p.name, "low")
    assert {d.name for d in repo.iterdir()} == {names["ensemble"], names["tokenizer"], lane}
    assert written["encoder"] == written["ensemble"] == repo / p.name
    version = {f.name for f in (repo / p.name / "1").iterdir()}
    assert version == {"model.py", "tokenizer.json", "profile.json", "model.onnx"}
    assert "tembed_serving.triton.onestep" in (repo / p.name / "1" / "model.py").read_text()
    layout = c.Layout(repo, p.name)
    assert layout.one_step and layout.onnx_file == repo / p.name / "1" / "model.onnx"
    assert layout.profile_file.is_file() and layout.tokenizer_file.is_file()
    assert (repo / lane / "1").is_symlink() and (repo / lane / "1").resolve() == (repo / p.name / "1").resolve()
    lane_cfg = parse((repo / lane / "config.pbtxt").read_text())
    main = parse((repo / p.name / "config.pbtxt").read_text())
    assert lane_cfg.parameters[c.PARAM_LANE_OF].string_value == p.name and lane_cfg.max_batch_size > 0
    assert main.parameters[c.PARAM_LANES].string_value == f"low={lane}"
    as_json = {
        n: {"config": {"name": n, "platform": cfg.platform, "max_batch_size": cfg.max_batch_size,
            "parameters": {k: {"string_value": v.string_value} for k, v in cfg.parameters.items()}}}
        for n, cfg in ((p.name, main), (lane, lane_cfg))
    }  # fmt: skip
    assert list(discover_models(as_json)) == [p.name] and discover_models(as_json)[p.name].batched
    write_repository(profile, repo, tokenizer_file=tok, encoder_file=None, opts=ServingOptions(priority_lanes=False))
    assert not layout.one_step and layout.model_dir("encoder") == repo / names["encoder"]
    assert parse((repo / p.name / "config.pbtxt").read_text()).platform == "ensemble"
    assert not (repo / p.name / "1" / "model.onnx").exists() and not (repo / lane).exists()


@pytest.mark.parametrize("backend", ("onnxruntime", "tensorrt"))
def test_one_step_is_a_python_runner_path(profile, fixture_dirs, tmp_path, backend):
    """Triton-native encoders have no runner for the one-step model to call (pytorch: tests/test_gpu_path.py)."""
    tok = fixture_dirs["qwen3-embedding-tiny"] / "tokenizer.json"
    with pytest.raises(ValueError, match="one-step layout serves embedding models on the python-onnx or pytorch"):
        write_repository(
            one_step(profile), tmp_path, tokenizer_file=tok, encoder_file=None, opts=ServingOptions(backend=backend)
        )
