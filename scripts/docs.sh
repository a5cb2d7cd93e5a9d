#!/usr/bin/env bash
# Build the documentation site (docs/) strictly, executing every tutorial; optionally serve it.
#
#   scripts/docs.sh                    build into docs/_build/html: every page read again, every
#                                      tutorial executed; any warning (a broken link or reference,
#                                      a bad docstring, a failing cell) fails the build
#   scripts/docs.sh --incremental      build only what changed since the last build (quick while
#                                      writing; warnings of unchanged pages are not shown again)
#   scripts/docs.sh serve [PORT]       build, then serve it on http://127.0.0.1:PORT/ (8000)
#   scripts/docs.sh serve-only [PORT]  serve the last build without building
#
# Environment: PYTHON (default .venv/bin/python), MR0_DOCS_OUT (default docs/_build/html),
# MR0_DOCS_CELL_TIMEOUT (seconds one notebook cell may run, default 120).
# Needs the docs dependencies: .venv/bin/pip install -e ".[docs]"
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${MR0_DOCS_OUT:-docs/_build/html}
mode=build
fresh=(-E)
port=8000
for arg in "$@"; do
  case "$arg" in
    build) mode=build ;;
    serve) mode=serve ;;
    serve-only) mode=serve-only ;;
    --incremental) fresh=() ;;
    [0-9]*) port=$arg ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "docs.sh: unknown argument '$arg' (see scripts/docs.sh --help)" >&2; exit 2 ;;
  esac
done

if [ "$mode" != serve-only ]; then
  if ! "$PY" -c 'import sphinx, myst_nb, jupytext, pydata_sphinx_theme, ipykernel' 2>/dev/null; then
    echo "docs.sh: the docs dependencies are missing: $PY -m pip install -e \".[docs]\"" >&2
    exit 2
  fi
  start=$(date +%s)
  # -W --keep-going: every warning is reported, and any one fails the build; -n: nitpicky
  "$PY" -m sphinx -b html "${fresh[@]}" -W --keep-going -n -q docs "$OUT"
  echo "docs.sh: built $OUT/index.html in $(( $(date +%s) - start )) s"
fi

if [ "$mode" != build ]; then
  if [ ! -f "$OUT/index.html" ]; then
    echo "docs.sh: nothing built in $OUT yet (run scripts/docs.sh first)" >&2
    exit 2
  fi
  echo "docs.sh: serving $OUT on http://127.0.0.1:$port/ (Ctrl-C stops)"
  exec "$PY" -m http.server "$port" --bind 127.0.0.1 --directory "$OUT"
fi
