#!/bin/sh
# tritonserver with its admin protocols closed (the list is tembed_serving.supervisor.RESTRICTED; a test
# keeps the two equal): loading and unloading models, logging, shared memory and tracing need the key
# in TEMBED_ADMIN_KEY, a random one when it is unset, so that nobody can use them. Inference, health,
# metadata, model config and statistics stay open: put Triton's ports on a private network and the
# gateway (API keys) in front of it.
set -eu
key="${TEMBED_ADMIN_KEY:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
restricted="model-repository,logging,shared-memory,trace:tembed-admin-key=${key}"
exec tritonserver --grpc-restricted-protocol="${restricted}" --http-restricted-api="${restricted}" "$@"
