# An OpenRecon image: one of our images plus the label that OpenRecon reads its metadata from
# (the base64 of docker/openrecon/OpenReconLabel.json, checked by scripts/openrecon_label.py).
# Build the base image first, then, from the repository root:
#
#   docker build -f docker/Dockerfile.cuda -t mr0-inline:cuda .
#   docker build -f docker/openrecon/openrecon.Dockerfile \
#       --build-arg OPENRECON_LABEL="$(python scripts/openrecon_label.py --print base64)" \
#       -t openrecon_mr0-inline_mr0inline:v0.1.0 .
#
# OpenRecon starts the container with its command and connects to the label's port (9002).
# The HTTP status port stays on the container's loopback (no token needed there), for the
# health check only.

ARG BASE_IMAGE=mr0-inline:cuda
FROM ${BASE_IMAGE}

ARG OPENRECON_LABEL=""
# An image without its label would install on no scanner: fail the build instead.
RUN test -n "${OPENRECON_LABEL}" \
    || { echo "set --build-arg OPENRECON_LABEL (scripts/openrecon_label.py --print base64)" >&2; exit 1; }

LABEL "com.siemens-healthineers.magneticresonance.openrecon.metadata:1.1.0"="${OPENRECON_LABEL}"

ENTRYPOINT ["mr0-server"]
CMD ["--host", "0.0.0.0", "--port", "9002", "--http-host", "127.0.0.1", "--http-port", "8080", "--store", "/data/store"]
