#!/bin/sh
# The pod's process: tembed's supervisor (python -m tembed_serving.supervisor) over the tritonserver on PATH
# (the image's /opt/tritonserver/bin; outside Docker, the nvidia-pytriton wheel's bin folder), so a pod does
# what `tembed serve` does on one machine: a Python stub that dies has its model reloaded, a tritonserver
# that dies is restarted, SIGTERM unloads the ensembles first (new requests go to other replicas at once)
# and stops Triton once the requests inside have finished, and nothing of Triton's process group outlives
# it: the supervisor is the pod's PID 1 (outside a container, a subreaper: --subreaper) and waits for the
# orphans handed to it, such as the stubs of a tritonserver killed by -9. Its probes are on
# TEMBED_HEALTH_PORT (8003): /health/ready is false while a model cannot serve (a dead stub, a reload, a
# drain), /health/live fails once that has lasted TEMBED_LIVE_BOUND_S (120 s).
#
# Triton's admin protocols stay closed (the list is tembed_serving.supervisor.RESTRICTED): loading and
# unloading models, logging, shared memory and tracing need the key in TEMBED_ADMIN_KEY, a random one when
# it is unset, so that nobody but the supervisor can use them. Inference, health, metadata, model config
# and statistics stay open: put Triton's ports on a private network and the gateway (API keys) in front.
#
# Arguments are tritonserver's own (the manifests' `args`); the supervisor reads the repository, ports,
# addresses and --exit-timeout-secs among them and passes the rest on.
set -eu
triton="$(command -v tritonserver || true)"
[ -n "${triton}" ] || { echo "entrypoint: no tritonserver on PATH" >&2; exit 127; }
exec "${TEMBED_PYTHON:-python3}" -m tembed_serving.supervisor \
    --tritonserver "${triton}" \
    --health-port "${TEMBED_HEALTH_PORT:-8003}" \
    --live-bound-s "${TEMBED_LIVE_BOUND_S:-120}" \
    --subreaper \
    --log-file - \
    -- "$@"
