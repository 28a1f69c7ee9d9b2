#!/usr/bin/env bash
# Runs every check and test of paytrace: formatting, clippy, unit and
# integration tests (against real HTTP servers, real OTLP receivers, real
# redis-server, RabbitMQ, PostgreSQL and MariaDB, real Prometheus/promtool, Alertmanager/amtool and node
# exporter, headless Chromium), doc tests, and the hot paths' instruction
# budgets (valgrind).
#
# On a fresh Debian machine it installs the system packages the suite needs
# when run as root; otherwise it says which command installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0
# has TOOL: whether TOOL is on PATH, or (a path with a glob) exists.
has() {
    case $1 in
        /*) compgen -G "$1" >/dev/null ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}
need() {
    local tool=$1 package=$2
    if has "$tool"; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing $package (for $tool)"
        if [ "$apt_updated" = 0 ]; then
            apt-get update -qq
            apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
        # The tests start their own database servers on private ports:
        # the one the package may have started only takes memory.
        case $package in
            postgresql | mariadb-server) service "${package%-server}" stop >/dev/null 2>&1 || true ;;
            rabbitmq-server) service rabbitmq-server stop >/dev/null 2>&1 || true ;;
        esac
    fi
    if ! has "$tool"; then
        echo "error: $tool is required by the tests; install it with: sudo apt-get install $package" >&2
        exit 1
    fi
}

need promtool prometheus
need prometheus prometheus
need redis-server redis-server
# The SQL fence's tests start PostgreSQL and MariaDB servers of their own.
need '/usr/lib/postgresql/*/bin/postgres' postgresql
need mariadbd mariadb-server
need mariadb-install-db mariadb-server
# The messaging tests start a RabbitMQ broker (and its epmd) of their own.
need /usr/lib/rabbitmq/bin/rabbitmq-server rabbitmq-server
need epmd rabbitmq-server
need amtool prometheus-alertmanager
need prometheus-alertmanager prometheus-alertmanager
need prometheus-node-exporter prometheus-node-exporter
need python3 python3   # scripts/dashboards.py --check
need valgrind valgrind # the instruction budgets (callgrind)
need chromium chromium # the aggregator page's browser tests
need chromedriver chromium-driver
need cargo cargo   # the Rust toolchain itself: https://rustup.rs if apt's is too old
need node nodejs   # the conformance suite's OpenTelemetry JS SDK services
need npm npm
# cargo-deny is no Debian package: built from crates.io, once per machine.
if ! cargo deny --version >/dev/null 2>&1; then
    echo "==> installing cargo-deny (cargo install --locked cargo-deny)"
    cargo install --locked --quiet cargo-deny
fi

# The conformance suite's foreign SDKs, pinned: the JS SDK from the committed
# lockfile, the Python SDK from requirements.txt into a virtualenv.
echo "==> npm ci (conformance/js)"
npm ci --prefix conformance/js --no-audit --no-fund --loglevel=error
echo "==> Python SDK (conformance/python/.venv)"
if [ ! -x conformance/python/.venv/bin/python ]; then
    python3 -m venv conformance/python/.venv || {
        echo "error: cannot create a virtualenv; install it with: sudo apt-get install python3-venv" >&2
        exit 1
    }
fi
conformance/python/.venv/bin/pip install --quiet --disable-pip-version-check \
    -r conformance/python/requirements.txt
echo "==> Kubernetes validator (examples/deploy/kubernetes/.venv)"
if [ ! -x examples/deploy/kubernetes/.venv/bin/python ]; then
    python3 -m venv examples/deploy/kubernetes/.venv
fi
examples/deploy/kubernetes/.venv/bin/pip install --quiet --disable-pip-version-check \
    -r examples/deploy/kubernetes/requirements.txt

# A clean build of the workspace's tests takes a few GiB; say so up front
# rather than failing halfway with ENOSPC.
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
echo "==> $((free_kib / 1024)) MiB free for target/"
if [ "$free_kib" -lt $((4 * 1024 * 1024)) ]; then
    echo "warning: less than 4 GiB free; a clean build of the tests may run out of disk" >&2
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Licences, banned crates and where crates come from (deny.toml). The
# advisory database is not checked: it is fetched from GitHub, which these
# machines cannot reach.
echo "==> cargo deny check licenses bans sources"
cargo deny --locked check licenses bans sources

echo "==> cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

# Each library crate packs as crates.io would take it (a version on every
# dependency, no file outside the crate).
echo "==> cargo package (the library crates)"
cargo package --quiet --locked --no-verify --allow-dirty \
    -p paytrace-semconv -p paytrace-tcc -p paytrace-sampling -p paytrace -p paytrace-slo -p paytrace-analysis -p paytrace-aggregator

# Each library crate alone, with its features off and on: a feature that
# only builds because another crate of the workspace turned it on fails here.
echo "==> the library crates with their features off and on"
for crate in paytrace paytrace-analysis paytrace-aggregator paytrace-semconv paytrace-tcc paytrace-sampling paytrace-slo; do
    cargo check --quiet --locked -p "$crate" --lib --no-default-features
    cargo check --quiet --locked -p "$crate" --lib --all-features
done

# Every process a test starts inherits this; scripts/leftovers.py fails the
# run when one is still alive after the tests.
export PAYTRACE_TEST_RUN="test-sh-$$-$(date +%s)"
failed=()

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast || failed+=("tests")
else
    cargo test --workspace --locked --lib --bins --tests --no-fail-fast || failed+=("tests")
fi

# The doc tests run whatever the tests above did: a failure there must not
# hide one here.
echo "==> doc tests"
cargo test --workspace --locked --doc || failed+=("doc tests")

# The hot paths' instruction counts against their budgets (bench/budgets.txt):
# callgrind counts do not depend on the machine's load; a path more than 3%
# over its budget fails the run.
echo "==> instruction budgets (bench/budgets.txt)"
if cargo build --release --locked --quiet -p paytrace-bench \
    --bin overhead_instructions --bin pipeline_instructions --bin instruction_budgets; then
    target/release/instruction_budgets bench/budgets.txt || failed+=("instruction budgets")
else
    failed+=("instruction budgets (build)")
fi

echo "==> processes left running"
python3 scripts/leftovers.py "$PAYTRACE_TEST_RUN" || failed+=("processes left running")

if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "==> all checks passed"
