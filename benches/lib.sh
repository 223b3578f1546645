# Helpers the bench scripts share; each script sources this after `cd` to the repository root.

# Runs a command as root (directly when already root, else through sudo).
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Installs the apt packages given when any is missing: `need_apt kcat fio`, or `PACKAGE:FILE`
# when the package is found by a file rather than a command (`librdkafka-dev:/usr/include/librdkafka/rdkafka.h`).
need_apt() {
    local missing=() spec package probe
    for spec in "$@"; do
        package=${spec%%:*}
        probe=${spec#*:}
        if [ "$probe" = "$spec" ]; then
            command -v "$package" >/dev/null 2>&1 || missing+=("$package")
        else
            [ -e "$probe" ] || missing+=("$package")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

# Installs a pip package when its module does not import: `need_pip confluent_kafka confluent-kafka`.
need_pip() {
    python3 -c "import $1" 2>/dev/null || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet "$2"
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The median of the numbers given (the upper middle one for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
