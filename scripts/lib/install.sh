# Shared install steps for scripts/test, scripts/demo, scripts/bench and scripts/natlab
# (sourced, not run). Debian packages are installed only when missing; the virtualenv lives in
# .venv.

DEBIAN_PACKAGES=(
  python3 python3-venv python3-dev gcc  # the venv (and any wheel built from source)
  iproute2                 # ip (netns, links, routes), tc (lab delay line), ss
  nftables conntrack       # the lab's NATs, loss and counters; NAT flushes
  iputils-ping iperf3      # ping across tunnels (demo, tests, bench); bench throughput
  procps util-linux        # ps, sysctl; setpriv, unshare (service tests)
  coturn                   # turnserver, turnutils_* (interop tests, lab NAT discovery)
  wireguard-tools wireguard-go  # wg, wireguard-go (interop tests, bench)
  systemd                  # systemd-analyze verify (unit files)
  git                      # the demo test clones the checkout
  bind9-dnsutils           # dig: the node's names (network e2e tests, the README's guide)
  curl                     # scrapes the metrics endpoints (e2e tests)
  ethtool                  # turns a lab link's checksum offload off (partial-checksum e2e test)
  chromium-headless-shell  # a real browser loads the rendezvous' map page (e2e tests)
  miniupnpd-nftables miniupnpc natpmpc  # port mapping: the lab routers' PCP/NAT-PMP/UPnP, cross-checks
  redis-server             # the rendezvous cluster's shared store (tests start their own)
  openvpn nebula           # other userspace tunnels beside wireguard-go (bench)
)

install_debian_packages() {
  local missing=() pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
      echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
      exit 1
    fi
    echo "== installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # coturn's, miniupnpd's, redis-server's, OpenVPN's and Nebula's packages start system-wide
  # services on install on some setups: the lab, the tests and the bench start their own in
  # their namespaces or on other ports, so make sure the packaged ones hold no port (3478,
  # 5351, 6379, 1194, 4242), no tun device and no nftables chain, and do not come back at boot.
  local service
  for service in coturn miniupnpd redis-server openvpn nebula; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
      systemctl stop "$service" || true
    fi
    if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet "$service" 2>/dev/null; then
      systemctl disable "$service" >/dev/null 2>&1 || true
    fi
  done
}

pick_python() {
  local py
  for py in python3 python3.13 python3.12 python3.11 python3.10; do
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$py"
      return
    fi
  done
  echo "no Python >= 3.10 with venv found" >&2
  exit 1
}

ensure_venv() {
  local py stamp=.venv/.p2ptun-installed
  if [ ! -x .venv/bin/python ]; then
    py=$(pick_python)
    echo "== creating .venv with $py"
    "$py" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing p2ptun and its dev extra into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
  fi
  # An editable install leaves compiling to the first import, and with
  # PYTHONDONTWRITEBYTECODE set (as on some CI runners) every daemon start would compile the
  # whole package again (0.15 s of a 0.5 s connect). Only what changed is compiled again.
  .venv/bin/python -m compileall -q p2ptun p2plab >/dev/null
}
