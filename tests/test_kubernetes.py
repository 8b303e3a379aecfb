"""deploy/kubernetes: each overlay renders with kustomize, every object validates against the Kubernetes
1.32 schemas (strict), and the probes, ports and flags match what tritonserver and the gateway really serve.

No cluster: the manifests are rendered and checked offline. The probe paths are checked twice, against the
gateway's route table and by running the rendered Triton arguments and environment through docker/entrypoint.sh
(the supervisor) with the tritonserver the test suite uses (2.51.0, the image's release) and the rendered
gateway command in front of it.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.32.0"  # schemas shipped inside kubernetes-validate: no network
TRITON_HEALTH = {"ready": "/v2/health/ready", "live": "/v2/health/live"}  # Triton's KServe v2 health routes
# The supervisor's probes (docker/entrypoint.sh, TEMBED_HEALTH_PORT): Triton's own stay 200 with a dead stub.
POD_HEALTH = {"ready": "/health/ready", "live": "/health/live"}
TRITON_EXIT_TIMEOUT_DEFAULT = 30  # tritonserver's --exit-timeout-secs default
GPU = "nvidia.com/gpu"

EXPECTED = {
    ("PersistentVolumeClaim", "tembed-model-repository"),
    ("Deployment", "tembed-triton"),
    ("Service", "tembed-triton"),
    ("Service", "tembed-triton-headless"),
    ("PodDisruptionBudget", "tembed-triton"),
    ("HorizontalPodAutoscaler", "tembed-triton"),
    ("Deployment", "tembed-gateway"),
    ("Service", "tembed-gateway"),
    ("PodDisruptionBudget", "tembed-gateway"),
    ("HorizontalPodAutoscaler", "tembed-gateway"),
}


@functools.cache
def _render(overlay: str) -> str:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{out.stderr}"
    return out.stdout


def render(overlay: str) -> list[dict]:
    """A fresh copy of the overlay's objects (tests may mutate them)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not on PATH")
    return [d for d in yaml.safe_load_all(_render(overlay)) if d]


def get(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def container(deploy: dict) -> dict:
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return c


def port_number(c: dict, port: int | str) -> int:
    """A probe's or Service's port (a number or a container port's name) as the container port number."""
    by_name = {p["name"]: p["containerPort"] for p in c["ports"]}
    if isinstance(port, str):
        assert port in by_name, f"port {port!r} is not a named port of container {c['name']} ({by_name})"
        return by_name[port]
    assert port in by_name.values(), f"port {port} is not a port of container {c['name']}"
    return port


def flags(args: list[str]) -> dict[str, str]:
    """tritonserver's ``--name=value`` arguments."""
    out = {}
    for a in args:
        assert a.startswith("--") and "=" in a, f"tritonserver arguments are --name=value, got {a!r}"
        name, value = a[2:].split("=", 1)
        out[name] = value
    return out


def gateway_args(c: dict):
    from tembed_gateway.__main__ import build_parser

    cmd = c["command"]
    assert cmd[:3] == ["python3", "-m", "tembed_gateway"], cmd
    return build_parser().parse_args([*cmd[3:], *c.get("args", [])])  # unknown flags fail here


def prestop_sleep_s(c: dict) -> int:
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep", cmd
    return int(cmd[1])


def env_from_secret(c: dict, name: str) -> dict:
    (env,) = [e for e in c["env"] if e["name"] == name]
    return env["valueFrom"]["secretKeyRef"]


# --- rendering and schemas ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_expected_objects(overlay):
    objs = render(overlay)
    assert {(o["kind"], o["metadata"]["name"]) for o in objs} == EXPECTED
    assert {o["metadata"].get("namespace") for o in objs} == {"tembed"}
    for o in objs:
        assert o["metadata"]["labels"]["app.kubernetes.io/name"] == "tembed", o["metadata"]
    for kind in ("Secret", "ConfigMap"):  # secrets are created by hand; the adapter rule is not applied
        assert not [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_kubernetes_schemas(overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objs = render(overlay)
    for o in objs:
        try:
            version = kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{o['kind']}/{o['metadata']['name']} in overlays/{overlay}: {exc.message}")
        assert version == "1.32"
    # Strict really rejects an unknown field (a misspelt one would otherwise be dropped by the API server).
    bad = copy.deepcopy(get(objs, "Deployment", "tembed-triton"))
    container(bad)["startupprobe"] = container(bad)["startupProbe"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


# --- Triton ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_probes_use_the_supervisors_health_routes_on_its_port(overlay):
    c = container(get(render(overlay), "Deployment", "tembed-triton"))
    f = flags(c["args"])
    http = int(f.get("http-port", 8000))
    env = {e["name"]: e.get("value") for e in c["env"]}
    health = int(env["TEMBED_HEALTH_PORT"])  # what docker/entrypoint.sh gives the supervisor
    assert "TEMBED_HEALTH_PORT" in (ROOT / "docker" / "entrypoint.sh").read_text()
    for probe, route in (("startupProbe", "ready"), ("readinessProbe", "ready"), ("livenessProbe", "live")):
        get_ = c[probe]["httpGet"]
        assert get_["path"] == POD_HEALTH[route], (probe, get_)
        assert port_number(c, get_["port"]) == health != http, (probe, get_)
    # Liveness fails only after the supervisor's bound, and then within a few probes.
    live = c["livenessProbe"]
    assert float(env["TEMBED_LIVE_BOUND_S"]) >= 30
    assert live["periodSeconds"] * live["failureThreshold"] <= 60
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "loading a 4B model takes minutes"
    # The named ports are the ports tritonserver is told to listen on.
    assert port_number(c, "http") == http
    assert port_number(c, "grpc") == int(f.get("grpc-port", 8001))
    assert port_number(c, "metrics") == int(f.get("metrics-port", 8002))
    for kind in ("http", "grpc", "metrics"):
        assert f[f"{kind}-address"] == "0.0.0.0"  # reachable from other pods, not only the pod's loopback


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_reads_the_repository_from_a_read_only_volume(overlay):
    objs = render(overlay)
    pod = get(objs, "Deployment", "tembed-triton")["spec"]["template"]["spec"]
    c = container(get(objs, "Deployment", "tembed-triton"))
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    repo = [m for m in c["volumeMounts"] if m["mountPath"] == flags(c["args"])["model-repository"]]
    assert len(repo) == 1 and repo[0]["readOnly"] is True
    claim = volumes[repo[0]["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = get(objs, "PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    # /dev/shm: a memory emptyDir with a bound, which the memory limit must hold.
    (shm,) = [m for m in mounts.values() if m["mountPath"] == "/dev/shm"]
    empty = volumes[shm["name"]]["emptyDir"]
    assert empty["medium"] == "Memory"
    shm_gi = int(empty["sizeLimit"].removesuffix("Gi"))
    assert shm_gi >= 4  # docker/compose.yaml's shm_size
    assert int(c["resources"]["limits"]["memory"].removesuffix("Gi")) > shm_gi
    if overlay == "gpu":
        assert shm_gi > 4, "the GPU overlay gives the Python backend more shared memory"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_admin_key_comes_from_a_secret(overlay):
    c = container(get(render(overlay), "Deployment", "tembed-triton"))
    ref = env_from_secret(c, "TEMBED_ADMIN_KEY")  # what docker/entrypoint.sh reads
    assert (ref["name"], ref["key"]) == ("tembed-admin", "admin-key")
    assert ref.get("optional") is True  # no Secret: the entrypoint's random key, admin protocols closed
    assert "TEMBED_ADMIN_KEY" in (ROOT / "docker" / "entrypoint.sh").read_text()
    assert "command" not in c, "the image's ENTRYPOINT (docker/entrypoint.sh) must stay"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_prestop_and_triton_drain(overlay):
    for name in ("tembed-triton", "tembed-gateway"):
        deploy = get(render(overlay), "Deployment", name)
        c = container(deploy)
        exit_timeout = TRITON_EXIT_TIMEOUT_DEFAULT
        if name == "tembed-triton":
            exit_timeout = int(flags(c["args"]).get("exit-timeout-secs", TRITON_EXIT_TIMEOUT_DEFAULT))
        grace = deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # The grace period starts with preStop: both must fit in it.
        assert grace > prestop_sleep_s(c) + exit_timeout, (name, grace)
        assert 0 < prestop_sleep_s(c) <= 15


def test_gpu_overlay_requests_a_gpu_and_cpu_overlay_does_not():
    gpu = get(render("gpu"), "Deployment", "tembed-triton")
    c = container(gpu)
    assert c["resources"]["limits"][GPU] == 1
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in gpu["spec"]["template"]["spec"]["tolerations"]
    for o in render("cpu"):
        if o["kind"] == "Deployment":
            pod = o["spec"]["template"]["spec"]
            for c in pod["containers"]:
                for part in ("requests", "limits"):
                    assert GPU not in c.get("resources", {}).get(part, {}), o["metadata"]["name"]
                # The NGC image asks for every GPU through NVIDIA_VISIBLE_DEVICES=all: hide them.
                assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in c["env"], o["metadata"]["name"]
            assert "tolerations" not in pod
    # Nothing GPU-specific in the CPU overlay's Triton arguments.
    args = container(get(render("cpu"), "Deployment", "tembed-triton"))["args"]
    assert not [a for a in args if "cuda" in a or "gpu" in a], args
    assert "--pinned-memory-pool-byte-size=0" in args


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay):
    for o in render(overlay):
        if o["kind"] != "Deployment":
            continue
        pod = o["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["cpu"]


# --- Services, gateway, autoscaling -----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_their_pods_and_target_named_ports(overlay):
    objs = render(overlay)
    deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    for svc in (o for o in objs if o["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        targets = [
            d for d in deployments.values() if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            port_number(container(targets[0]), p["targetPort"])
    for name in ("tembed-triton", "tembed-gateway"):
        budget, deploy = get(objs, "PodDisruptionBudget", name), deployments[name]
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["selector"] == deploy["spec"]["selector"]
    headless = get(objs, "Service", "tembed-triton-headless")
    assert headless["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_probes_are_routes_of_the_app_on_its_port(overlay):
    from tembed_gateway.__main__ import settings_from_args
    from tembed_gateway.app import create_app
    from tembed_gateway.settings import API_KEYS_ENV

    objs = render(overlay)
    c = container(get(objs, "Deployment", "tembed-gateway"))
    args = gateway_args(c)
    assert args.host == "0.0.0.0"
    routes = {r.path for r in create_app(settings_from_args(args)).routes}  # built, not started
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
        get_ = c[probe]["httpGet"]
        assert get_["path"] == path and get_["path"] in routes, (probe, get_, routes)
        assert port_number(c, get_["port"]) == args.port
    assert port_number(c, "http") == args.port
    svc = get(objs, "Service", "tembed-gateway")
    (p,) = svc["spec"]["ports"]
    assert port_number(c, p["targetPort"]) == args.port
    # API keys from the Secret, through the variable the gateway reads.
    ref = env_from_secret(c, API_KEYS_ENV)
    assert (ref["name"], ref["key"]) == ("tembed-api-keys", "api-keys")
    assert not ref.get("optional"), "without the Secret the gateway would serve without authentication"
    # Token-id input: the same read-only repository Triton serves.
    triton = container(get(objs, "Deployment", "tembed-triton"))
    assert str(args.model_repository) == flags(triton["args"])["model-repository"]
    assert {m["mountPath"]: m.get("readOnly") for m in c["volumeMounts"]}[str(args.model_repository)] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_reaches_every_triton_replica_through_the_headless_service(overlay):
    objs = render(overlay)
    args = gateway_args(container(get(objs, "Deployment", "tembed-gateway")))
    (target,) = args.triton  # one --triton: dns:/// of the headless Service, one replica per pod
    assert target.startswith("dns:///"), target
    host, port = target.removeprefix("dns:///").rsplit(":", 1)
    headless = get(objs, "Service", host)
    assert headless["spec"]["clusterIP"] == "None"
    (p,) = [p for p in headless["spec"]["ports"] if p["port"] == int(port)]
    triton = container(get(objs, "Deployment", "tembed-triton"))
    assert port_number(triton, p["targetPort"]) == port_number(triton, "grpc") == int(port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers(overlay):
    objs = render(overlay)
    gw = get(objs, "HorizontalPodAutoscaler", "tembed-gateway")["spec"]
    assert gw["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tembed-gateway"}
    assert gw["minReplicas"] >= 2
    (m,) = gw["metrics"]
    assert m["resource"]["name"] == "cpu" and m["resource"]["target"]["averageUtilization"] == 70
    tr = get(objs, "HorizontalPodAutoscaler", "tembed-triton")["spec"]
    assert tr["scaleTargetRef"]["name"] == "tembed-triton"
    (m,) = tr["metrics"]
    assert m["type"] == "Pods" and m["pods"]["target"]["type"] == "AverageValue"
    # The metric is the one the adapter rule serves.
    rules = yaml.safe_load((DEPLOY / "base" / "prometheus-adapter-rules.yaml").read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == m["pods"]["metric"]["name"]]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    # Both counters the HPA documentation names.
    for series in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert f"rate({series}{{" in rule["metricsQuery"]
    # HPA owns replicas: a `replicas` in the Deployment would be reset by every `kubectl apply`.
    for name in ("tembed-triton", "tembed-gateway"):
        assert "replicas" not in get(objs, "Deployment", name)["spec"]


def test_adapter_rule_averages_the_encoders_queue():
    """The rule filters model=~".+-encoder": the naming the repository writer uses for the batching step."""
    import re

    from tembed_serving.contract import model_names

    rule = yaml.safe_load((DEPLOY / "base" / "prometheus-adapter-rules.yaml").read_text())["rules"]["custom"][0]
    (pattern,) = set(re.findall(r'model=~"([^"]+)"', rule["metricsQuery"]))
    names = model_names("qwen3-embedding-4b")
    assert {role for role, n in names.items() if re.fullmatch(pattern, n)} == {"encoder"}


def test_prometheus_scrape_snippet_matches_the_pods():
    objs = render("cpu")
    triton = get(objs, "Deployment", "tembed-triton")["spec"]["template"]
    c = container({"spec": {"template": triton}})
    ann = triton["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == port_number(c, "metrics") == int(flags(c["args"])["metrics-port"])
    conf = yaml.safe_load((DEPLOY / "base" / "prometheus-scrape.yaml").read_text())
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    assert set(jobs) == {"tembed-triton", "tembed-gateway"}
    job = jobs["tembed-triton"]
    assert job["metrics_path"] == ann["prometheus.io/path"]
    keep = {r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert "metrics" in keep and "tembed;triton" in keep
    assert {r.get("target_label") for r in job["relabel_configs"]} >= {"namespace", "pod"}  # what the adapter maps
    # The gateway's /metrics, on its http port.
    gw = get(objs, "Deployment", "tembed-gateway")["spec"]["template"]
    ann = gw["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == port_number(container({"spec": {"template": gw}}), "http")
    job = jobs["tembed-gateway"]
    assert job["metrics_path"] == ann["prometheus.io/path"] == "/metrics"
    keep = {r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert "http" in keep and "tembed;gateway" in keep
    assert {r.get("target_label") for r in job["relabel_configs"]} >= {"namespace", "pod"}


# --- the real servers -------------------------------------------------------------------------


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening (yet)
        return 0


@pytest.mark.isolated  # tritonserver through docker/entrypoint.sh
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_commands_run_and_serve_the_probe_paths(overlay, tmp_path):
    """The rendered Triton arguments through docker/entrypoint.sh with tritonserver 2.51 (the image's release),
    then the rendered gateway command in front of it: every probe path answers 200."""
    server = pytest.importorskip("tembed_serving.supervisor")
    try:
        bin_dir = server.pytriton_root() / "bin"
    except Exception as exc:  # nvidia-pytriton not installed
        pytest.skip(f"no tritonserver: {exc}")
    from tembed_gateway.__main__ import settings_from_args
    from tembed_gateway.runner import GatewayThread

    objs = render(overlay)
    triton = container(get(objs, "Deployment", "tembed-triton"))
    f = flags(triton["args"])
    repo = tmp_path / "models"
    repo.mkdir()
    ports = {k: server.free_port() for k in ("http", "grpc", "metrics")}
    local = dict(f, **{"model-repository": str(repo)})
    for kind, port in list(ports.items()):  # loopback and free ports on a shared machine; the rest as rendered
        local[f"{kind}-address"], local[f"{kind}-port"] = "127.0.0.1", str(port)
    env = server.server_env()
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    env.update({e["name"]: e["value"] for e in triton["env"] if "value" in e})  # as rendered, then:
    env["TEMBED_ADMIN_KEY"] = "test-admin-key"
    ports["health"] = server.free_port()
    env["TEMBED_HEALTH_PORT"] = str(ports["health"])
    log = tmp_path / "tritonserver.log"
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            ["sh", str(ROOT / "docker" / "entrypoint.sh"), *(f"--{k}={v}" for k, v in local.items())],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    http = f"http://127.0.0.1:{ports['http']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if _http_status(http + TRITON_HEALTH["ready"]) == 200:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"tritonserver did not start with the rendered arguments:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        health = f"http://127.0.0.1:{ports['health']}"
        deadline = time.monotonic() + 30
        while _http_status(health + POD_HEALTH["ready"]) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert _http_status(health + triton[probe]["httpGet"]["path"]) == 200, probe
        ann = get(objs, "Deployment", "tembed-triton")["spec"]["template"]["metadata"]["annotations"]
        assert _http_status(f"http://127.0.0.1:{ports['metrics']}{ann['prometheus.io/path']}") == 200

        gw = container(get(objs, "Deployment", "tembed-gateway"))
        settings = settings_from_args(gateway_args(gw))
        # With API keys, as in the cluster: kubelet's probes send no Authorization header.
        local_triton = f"127.0.0.1:{ports['grpc']}"
        settings = replace(settings, triton_url=local_triton, model_repository=repo, api_keys=frozenset({"k"}))
        with GatewayThread(settings) as thread:
            for probe in ("readinessProbe", "livenessProbe"):
                assert _http_status(thread.url + gw[probe]["httpGet"]["path"]) == 200, probe
            assert _http_status(thread.url + "/v1/models") == 401  # authentication is on
            gw_ann = get(objs, "Deployment", "tembed-gateway")["spec"]["template"]["metadata"]["annotations"]
            assert _http_status(thread.url + gw_ann["prometheus.io/path"]) == 200  # scraped without a key
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0  # SIGTERM: the supervisor drained, Triton exited cleanly
