# A real Gadgetron (4.x, the official runtime image) with our chains as external Python gadgets
# (gadgets/serve/gadgetron_external.py) and our stream configurations
# (gadgets/config/gadgetron/*.xml) in its config folder. Build from the repository root:
#
#   docker build -f docker/gadgetron.Dockerfile -t mr0-gadgetron .
#   docker run --rm -p 127.0.0.1:9002:9002 mr0-gadgetron          # Gadgetron on 9002
#   docker exec <container> gadgetron_ismrmrd_client -f raw.h5 -c mr0_recon.xml -o out.h5
#
# The base image keeps Gadgetron in the conda environment /opt/conda/envs/gadgetron (Python 3.10,
# the gadgetron Python package included), starts it through /tini and /opt/entrypoint.sh, and
# runs as its user 1000; ENTRYPOINT and CMD are inherited. For CUDA:
#   --build-arg BASE_IMAGE=ghcr.io/gadgetron/gadgetron/gadgetron_ubuntu_rt_cuda:latest
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
# Pin BASE_IMAGE by digest (image@sha256:...) for reproducible builds.

ARG BASE_IMAGE=ghcr.io/gadgetron/gadgetron/gadgetron_ubuntu_rt_nocuda:latest
FROM ${BASE_IMAGE}

ARG GADGETRON_PREFIX=/opt/conda/envs/gadgetron
ARG GADGETRON_USER=1000
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# Gadgetron starts ACTIVE external gadgets as `python -m gadgetron PORT MODULE TARGET` with the
# environment's Python; putting it first on PATH also serves `docker exec` (no conda activate).
ENV PATH=${GADGETRON_PREFIX}/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

USER 0

# torch first, from TORCH_INDEX (CPU by default): the PyPI wheel would bring CUDA packages.
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

# Our package with the gadgetron extra into Gadgetron's Python, installed in place (its chains
# are package data, gadgets/config/chains/).
COPY pyproject.toml README.md /opt/mr0/
COPY mr0core /opt/mr0/mr0core
COPY gadgets /opt/mr0/gadgets
COPY scheduler /opt/mr0/scheduler
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /opt/mr0/constraints.txt \
    && python -m pip install --no-cache-dir -c /opt/mr0/constraints.txt -e "/opt/mr0[gadgetron]" \
    && python -m compileall -q /opt/mr0/mr0core /opt/mr0/gadgets /opt/mr0/scheduler \
    && python -c "import gadgetron, gadgets.serve.gadgetron_external"

# The stream configurations, where `gadgetron_ismrmrd_client -c mr0_recon.xml` looks for them.
COPY gadgets/config/gadgetron/*.xml ${GADGETRON_PREFIX}/share/gadgetron/config/

USER ${GADGETRON_USER}
