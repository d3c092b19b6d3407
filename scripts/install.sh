#!/usr/bin/env bash
# Installs agentid as a systemd service (run as root, from the repository root):
#   binary  → /usr/local/bin/agentid        (from target/release, built if missing)
#   unit    → /etc/systemd/system/agentid.service
#   config  → /etc/agentid/agentid.toml     (only if absent), /etc/agentid/agents.d/
#   group   → agentid                        (members may use the API socket)
# Idempotent. Does not start the service: `systemctl enable --now agentid` does.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${PREFIX:-/usr/local}
bin=${AGENTID_BIN:-$root/target/release/agentid}

if [[ $EUID -ne 0 ]]; then
    echo "install.sh: run as root" >&2
    exit 1
fi
if [[ ! -x $bin ]]; then
    (cd "$root" && cargo build --release -p agentid-user)
fi

install -D -m 0755 "$bin" "$prefix/bin/agentid"
install -D -m 0644 "$root/scripts/agentid.service" /etc/systemd/system/agentid.service
install -d -m 0755 /etc/agentid
install -d -m 0755 /etc/agentid/agents.d
if [[ ! -e /etc/agentid/agentid.toml ]]; then
    cat >/etc/agentid/agentid.toml <<'TOML'
# agentid daemon configuration; every key is optional (see README.md).
state_dir = "/var/lib/agentid"
socket = "/run/agentid/agentid.sock"
socket_group = "agentid"
agents_dir = "/etc/agentid/agents.d"
alerts_file = "/var/log/agentid/alerts.jsonl"
TOML
    chmod 0644 /etc/agentid/agentid.toml
fi
getent group agentid >/dev/null || groupadd --system agentid
install -d -m 0700 /var/lib/agentid
install -d -m 0750 /var/log/agentid

if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    echo "installed; start with: systemctl enable --now agentid"
else
    echo "installed; systemd is not running here: start with $prefix/bin/agentid daemon"
fi
