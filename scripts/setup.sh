#!/usr/bin/env bash
# Set up whatever is missing to run and test streamcart on this machine; change nothing that is already there.
#   1. a Python >= 3.11 virtualenv in .venv
#   2. the project installed into it (pip, pinned by constraints.txt), redone only when pyproject.toml or
#      constraints.txt changed since the last install
#   3. `streamcart setup`: the Java parts from Maven Central, the Java runtime check, PostgreSQL, chromium (the
#      dashboard's browser test)
#   4. Go tools built into .tools/bin: helm (the chart's test), loadgen (bench api), promrules (the alert rules' test)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.streamcart-install.sha256"

if [ -t 1 ]; then bold=$'\033[1m' green=$'\033[32m' red=$'\033[31m' plain=$'\033[0m'; else bold= green= red= plain=; fi
ms() { date +%s%3N; }
seconds_since() { awk "BEGIN{printf \"%.1f\", ($(ms) - $1) / 1000}"; }
step_start=0
step() { step_start=$(ms); printf '%s•%s %s …\n' "$bold" "$plain" "$1"; }
done_() { printf '  %s✓%s %s (%s s)\n' "$green" "$plain" "$1" "$(seconds_since "$step_start")"; }
fail() { printf '%serror:%s %s\n' "$red" "$plain" "$1" >&2; exit 1; }

total_start=$(ms)

step "python virtualenv ($VENV)"
# A virtualenv counts only with its pip: Debian's python3 without python3-venv leaves bin/python and no pip.
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  done_ "already present ($("$VENV/bin/python" --version))"
else
  command -v "$PYTHON" >/dev/null || fail "no $PYTHON on PATH: install Python 3.11 or newer (or set PYTHON=/path/to/python3.11)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "streamcart needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11"
  rm -rf "$VENV"  # one without pip, from a run that failed
  "$PYTHON" -m venv "$VENV" \
    || { rm -rf "$VENV"; fail "'$PYTHON -m venv' failed (on Debian: apt-get install -y python3-venv, then run this again)"; }
  done_ "created with $("$VENV/bin/python" --version)"
fi

step "python packages (pyproject.toml + constraints.txt)"
wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ] && [ -x "$VENV/bin/streamcart" ]; then
  done_ "already installed"
else
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' \
    || fail "pip could not install the project (see above)"
  echo "$wanted" > "$STAMP"
  done_ "installed"
fi

"$VENV/bin/streamcart" setup

# The Go tools below need this Go at least, checked when one is about to be built (tools/promrules's go.mod; helm's asks for 1.26.0). A Go from 1.21 on
# that is older fetches the newer toolchain from the module proxy by itself unless GOTOOLCHAIN (local, path)
# forbids it; an older one cannot.
GO_MIN=1.26.7
older() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ]; }
check_go() {
  command -v go >/dev/null || return 0  # said where a build needs it
  local have toolchain
  have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
  have=${have:-$(go version | sed -n 's/^go version go\([0-9.]*\).*/\1/p')}  # Go before 1.16 has no GOVERSION
  [ -n "$have" ] || return 0  # a version it does not tell: the build says
  older "$have" "$GO_MIN" || return 0
  toolchain=$(go env GOTOOLCHAIN 2>/dev/null)
  if older "$have" 1.21; then  # toolchains are fetched from Go 1.21 on
    fail "Go $have is older than the $GO_MIN the tools need: install Go $GO_MIN or newer (https://go.dev/dl)"
  elif [ "$toolchain" = local ] || [[ "$toolchain" == *path ]]; then
    fail "Go $have is older than the $GO_MIN the tools need, and GOTOOLCHAIN=$toolchain stops it from fetching that one: install Go $GO_MIN or newer (https://go.dev/dl), or run with GOTOOLCHAIN=auto"
  fi
}

# The Helm chart's test renders it with `helm template`. helm builds from its Go module (cached after the first
# build, which takes a few minutes on 2 cores).
HELM_VERSION=v3.22.0
step "helm $HELM_VERSION (.tools/bin)"
# A build is marked with the version it was built from (go install's binary reports only "v3.22"): another
# HELM_VERSION builds again. A helm on PATH is used if it is a Helm 3.
HELM_STAMP=.tools/bin/.helm-version
if [ -x .tools/bin/helm ] && [ "$(cat "$HELM_STAMP" 2>/dev/null)" = "$HELM_VERSION" ]; then
  done_ "already built"
elif [ ! -x .tools/bin/helm ] && command -v helm >/dev/null \
     && [[ "$(helm version --template '{{.Version}}' 2>/dev/null)" == v3.* ]]; then
  done_ "on PATH: $(command -v helm)"
elif command -v go >/dev/null; then
  check_go
  GOBIN="$PWD/.tools/bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || fail "go install of helm failed (see above)"
  echo "$HELM_VERSION" > "$HELM_STAMP"
  done_ "built with go install"
else
  fail "neither helm nor a Go toolchain to build it is installed: install Go $GO_MIN or newer (https://go.dev/dl) or helm"
fi
# A small Go program of tools/NAME, built into .tools/bin once, and again when its source or module changes.
go_tool() {
  local name=$1 source="tools/$1" binary=".tools/bin/$1"
  if [ -x "$binary" ] && [ "$binary" -nt "$source/main.go" ] && [ "$binary" -nt "$source/go.mod" ] \
     && { [ ! -f "$source/go.sum" ] || [ "$binary" -nt "$source/go.sum" ]; }; then
    done_ "already built"
  elif command -v go >/dev/null; then
    check_go
    (cd "$source" && go build -o "../../$binary" .) || fail "go build of $source failed (see above)"
    done_ "built with go build"
  else
    fail "no Go toolchain to build $source: install Go $GO_MIN or newer (https://go.dev/dl)"
  fi
}
# `streamcart bench api` measures with a small Go HTTP client, so that the client is not what limits the figure.
step "loadgen (.tools/bin, the API benchmark's HTTP client)"
go_tool loadgen
# The alerting rules are checked as Prometheus loads them, by Prometheus's own parsers (tests/unit/deploy).
step "promrules (.tools/bin, checks deploy/prometheus/alerts.yml)"
go_tool promrules
printf 'setup finished in %s s\n' "$(seconds_since "$total_start")"
