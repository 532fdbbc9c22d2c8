# Shared helpers for scripts/run, scripts/test and scripts/bench. Sourced, not run.

# Finds PostgreSQL's initdb on PATH or under /usr/lib/postgresql/*/bin; installs the
# server with apt-get when it is missing and we are root; otherwise says what to do.
ensure_postgres() {
    if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "PostgreSQL server binaries (initdb, pg_ctl) are not installed." >&2
        echo "Install them (Debian/Ubuntu: sudo apt-get install postgresql) or set DATABASE_URL." >&2
        exit 1
    fi
    echo "Installing PostgreSQL server binaries with apt-get..." >&2
    # Only the binaries are wanted: triggerd runs its own private cluster, so do not
    # let the package create and start a system-wide one.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
}

# glommio locks its io_uring buffers in memory: make sure the limit allows it.
raise_memlock() {
    local current
    current=$(ulimit -l)
    if [ "$current" != "unlimited" ] && [ "$current" -lt 1024 ]; then
        ulimit -l 1024 2>/dev/null || echo "warning: memlock limit is ${current} KiB; triggerd needs 512 KiB per process (ulimit -l)" >&2
    fi
}

# Installs a Debian package for a missing command when we can (root with apt-get),
# otherwise says what to install.
ensure_command() { # command, package
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        echo "$1 is not installed (Debian/Ubuntu: sudo apt-get install $2)" >&2
        exit 1
    fi
}

# wrk for scripts/bench; curl for the API reference's examples (run by a test).
ensure_wrk() { ensure_command wrk wrk; }
ensure_curl() { ensure_command curl curl; }
