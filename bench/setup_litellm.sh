#!/usr/bin/env bash
# Creates bench/.venv-litellm with LiteLLM Proxy at the same version Warden pins, kept
# apart from Warden's own environment so its many proxy extras cannot change what Warden
# runs with. Idempotent: a venv that already has the right version is left alone.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${LITELLM_VENV:-$here/.venv-litellm}"
# Same pin as pyproject.toml; read from there so the two cannot drift.
version="$(grep -oE '"litellm==[0-9][^"]*"' "$here/../pyproject.toml" | head -n1 | tr -d '"' | cut -d= -f3)"
version="${version:-1.106.2}"
py="${PYTHON:-python3}"

installed() {
    [ -x "$venv/bin/python" ] && \
        "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('litellm'))" \
            2>/dev/null
}

if [ "$(installed || true)" != "$version" ]; then
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "litellm[proxy]==$version"
fi

echo "litellm $(installed) at $venv/bin/litellm"
