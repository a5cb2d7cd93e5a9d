#!/usr/bin/env bash
# Install mr0-inline and everything it needs (Python >= 3.10). Used by the README's first command
# and by CI (.ci/run).
#
# Where it installs:
# - into the active virtual environment ($VIRTUAL_ENV) or conda environment ($CONDA_PREFIX);
# - otherwise into .venv in the repository, made with `python3 -m venv` (on Debian/Ubuntu, as root,
#   python3-venv is installed first when the system Python lacks it). The system Python itself is
#   never touched (PEP 668).
# Afterwards .venv/bin/python is the environment's Python in every case (for an active environment
# elsewhere, .venv is made a link to it when it does not exist yet), so the README's commands
# `.venv/bin/mr0 demo` and `.venv/bin/python -m pytest` hold.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }
# apt's dpkg needs the sbin folders, which a plain user's PATH (or `env -i PATH=/usr/bin:/bin`)
# lacks.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac

# Debian/Ubuntu packages, best effort: each is installed when apt knows it; a missing one is named
# (the tests that need it then skip, except where CI requires them).
apt_install() {
  local want=() pkg
  for pkg in "$@"; do
    if apt-cache show "$pkg" >/dev/null 2>&1; then want+=("$pkg"); else say "apt has no $pkg; skipped"; fi
  done
  [ ${#want[@]} -eq 0 ] && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
}
can_apt=0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then can_apt=1; fi
apt_updated=0
apt_update_once() { if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi; }

# System tools, for the tests: ismrmrd-tools (the reference ISMRMRD reconstruction), the DICOM
# tools below, and chromium
# with its driver (the status page is tested in a headless browser; Ubuntu ships chromium only as
# a snap, so there the browser test skips).
if [ $can_apt = 1 ]; then
  missing=()
  command -v ismrmrd_info >/dev/null 2>&1 || missing+=(ismrmrd-tools)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  # DICOM: dcm2niix (the geometry reference), dcmtk and dicom3tools (dciodvfy validates what we
  # write), orthanc (a loopback PACS for the C-STORE tests)
  command -v dcm2niix >/dev/null 2>&1 || missing+=(dcm2niix)
  command -v dcmdump >/dev/null 2>&1 || missing+=(dcmtk)
  command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
  command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_update_once
    apt_install "${missing[@]}"
  fi
else
  say "not root or no apt-get; install Debian's ismrmrd-tools, chromium and chromium-driver" \
    "yourself if you need them"
fi

# The environment to install into.
if [ -n "${VIRTUAL_ENV:-}" ]; then
  env_dir=$VIRTUAL_ENV
elif [ -n "${CONDA_PREFIX:-}" ]; then
  env_dir=$CONDA_PREFIX
else
  env_dir=.venv
fi
if [ "$env_dir" = .venv ] && [ ! -x .venv/bin/python ]; then
  py=$(command -v python3 || true)
  if [ -z "$py" ]; then say "no python3 on PATH; install Python >= 3.10"; exit 1; fi
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    say "$py is Python $("$py" -c 'import platform; print(platform.python_version())'); mr0-inline needs >= 3.10"
    exit 1
  fi
  if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ $can_apt = 1 ]; then
      say "$py has no venv module; installing python3-venv"
      apt_update_once
      apt_install python3-venv
    else
      say "$py has no venv module: install your distribution's python3-venv, then run this again"
      exit 1
    fi
  fi
  rm -rf .venv
  say "creating .venv with $py ($("$py" -c 'import platform; print(platform.python_version())'))"
  "$py" -m venv .venv
elif [ "$env_dir" != .venv ] && [ ! -e .venv ]; then
  ln -s "$env_dir" .venv
fi
py="$env_dir/bin/python"
if [ ! -x "$py" ]; then say "no Python at $py"; exit 1; fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU build of torch first: any other version pulls gigabytes of CUDA packages.
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q -e ".[test,docs,gadgetron,gpu,ray]"
# compile the PDG's numba kernels (pre-pass, main pass) once (about 25 s) into numba's cache
"$py" -m mr0core.sim.prepass_kernel
"$py" -m mr0core.sim.mainpass_kernel
say "done: $("$py" -c 'import mr0core; print("mr0core", mr0core.__version__)') in $env_dir"
