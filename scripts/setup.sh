#!/usr/bin/env bash
# Install mr0-inline and everything it needs on a fresh machine (Python >= 3.10 with pip).
# Used by the README's first command and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools, for the tests: ismrmrd-tools (the reference ISMRMRD reconstruction) and
# chromium with its driver (the status page is tested in a headless browser). Needs root and
# apt; elsewhere install them with your package manager (the browser test then skips).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  command -v ismrmrd_info >/dev/null 2>&1 || missing+=(ismrmrd-tools)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
else
  echo "setup: not root or no apt-get; install Debian's ismrmrd-tools, chromium and" \
    "chromium-driver yourself if you need them" >&2
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU build of torch first: any other version pulls gigabytes of CUDA packages.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,gadgetron,gpu,ray]"
echo "setup: done ($(python -c 'import mr0core; print("mr0core", mr0core.__version__)'))"
