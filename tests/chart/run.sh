#!/usr/bin/env bash
# Helm chart and Dockerfile tests: installs the pinned Python packages when missing, then runs
# pytest. Exits non-zero when anything fails. Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
py="${PYTHON:-python3}"

if ! "$py" - "$here/requirements.txt" <<'PYEOF'
import sys, re, importlib.metadata as md
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, version = re.split(r"==", line)
    try:
        if md.version(name.strip()) != version.strip():
            sys.exit(1)
    except md.PackageNotFoundError:
        sys.exit(1)
PYEOF
then
  echo "tests/chart: installing $(grep -c '==' "$here/requirements.txt") pinned packages"
  # Debian's python refuses pip outside a venv (PEP 668) unless told; CI runs as root.
  PIP_BREAK_SYSTEM_PACKAGES=1 "$py" -m pip install -q --disable-pip-version-check \
    --root-user-action=ignore -r "$here/requirements.txt"
fi

export PYTHONDONTWRITEBYTECODE=1
exec "$py" -m pytest -q -p no:cacheprovider "$here" "$@"
