#!/usr/bin/env bash
# The Debian packages the test suite needs and pip cannot bring: PostgreSQL's server binaries,
# redis-server and chromium. Installed when missing, with apt-get (as root, or through sudo when it
# needs no password); otherwise it says what is missing and the tests that need it fail with the
# same advice. Run by `make test` and by .ci/run.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ "${#missing[@]}" -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo="sudo"
    else
        echo "system-packages: missing ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null; then
    echo "system-packages: missing ${missing[*]} and no apt-get here: install them by hand" >&2
    exit 0
fi
echo "system-packages: installing ${missing[*]} (apt-get)"
$sudo apt-get update -qq
for package in "${missing[@]}"; do
    case "$package" in
        postgresql)
            # The tests start their own server (vitals_pipeline_tests/postgres.py): no cluster or
            # service of the package's own on port 5432.
            $sudo mkdir -p /etc/postgresql-common/createcluster.d
            echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.d/vitals-tests.conf >/dev/null
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null ;;
        redis-server)
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null ;;
        chromium)
            # Playwright drives Debian's /usr/bin/chromium; its own browser download cannot work here.
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ;;
    esac
done
