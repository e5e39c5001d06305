# Sourced by the scripts: pick the interpreter and bootstrap its virtual environment.
#
# The newest Python >= 3.12 found gets mitmproxy 12; else python3 >= 3.11 gets mitmproxy 11.
# The chosen interpreter's venv is .venv (what the README activates). VAULTPROXY_PYTHON names
# another interpreter, whose venv is .venv-VERSION, so both mitmproxy lines can coexist.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

python_version() {  # prints "3.12" for a working interpreter, nothing otherwise
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

version_ok() {  # $1 = "3.12", $2 = minimum minor
  local major=${1%%.*} minor=${1#*.}
  [ "$major" = 3 ] && [ "$minor" -ge "$2" ] 2>/dev/null
}

find_python() {
  local candidate version
  if [ -n "${VAULTPROXY_PYTHON:-}" ]; then echo "$VAULTPROXY_PYTHON"; return; fi
  for candidate in python3.14 python3.13 python3.12; do
    version=$(python_version "$candidate") && version_ok "$version" 12 && { command -v "$candidate"; return; }
  done
  if command -v pyenv >/dev/null 2>&1; then  # pyenv installs that are not the active version
    for candidate in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[2-9](\.[0-9]+)?$' | sort -t. -k2,2nr -k3,3nr); do
      candidate="$(pyenv root)/versions/$candidate/bin/python3"
      version=$(python_version "$candidate") && version_ok "$version" 12 && { echo "$candidate"; return; }
    done
  fi
  for candidate in python3 python; do
    version=$(python_version "$candidate") && version_ok "$version" 11 && { command -v "$candidate"; return; }
  done
  echo "vaultproxy needs Python 3.11 or newer; none found" >&2
  return 1
}

# bootstrap_venv EXTRAS: creates/updates the venv for the chosen interpreter, prints its dir.
bootstrap_venv() {
  local extras=$1 python version venv stamp
  python=$(find_python) || return 1
  version=$(python_version "$python")
  if [ -n "${VAULTPROXY_PYTHON:-}" ]; then venv="$ROOT/.venv-$version"; else venv="$ROOT/.venv"; fi
  stamp="$venv/.installed-$extras"
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $python (Python $version)" >&2
    "$python" -m venv "$venv" >&2 || return 1
  fi
  # Reinstall when pyproject.toml changed since the last install.
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2 || return 1
    "$venv/bin/python" -m pip install --quiet -e "$ROOT[$extras]" >&2 || return 1
    touch "$stamp"
  fi
  echo "$venv"
}

# install_tools WHY COMMAND... : when a COMMAND is missing and we are root with apt-get, install
# the distro packages of the same names (quietly, updating the package lists once if needed).
# WHY is what happens without them, said when the install fails.
install_tools() {
  local why=$1 missing=() tool
  shift
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 0
  echo "installing ${missing[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; } \
    || echo "${missing[*]} could not be installed: $why" >&2
}
