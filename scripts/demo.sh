#!/usr/bin/env bash
# A scripted tour: two sample agents in their own cgroups, registered, watched by a real
# daemon; they share one (fake) API key, so agentid raises credential-reuse.
# Run as root from the repository: bash scripts/demo.sh
# Everything lives under /tmp/agentid-demo and a cgroup /agentid-demo; both are removed at
# the end. Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release -q -p agentid-user
AGENTID=$PWD/target/release/agentid
DEMO=/tmp/agentid-demo
CG_ROOT=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
CG=$CG_ROOT/agentid-demo

cleanup() {
    set +e
    for d in "$CG"/*/; do
        [ -d "$d" ] && while read -r pid; do kill "$pid" 2>/dev/null; done < "$d/cgroup.procs"
    done
    [ -n "${DAEMON:-}" ] && kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    [ -n "${LISTENER:-}" ] && kill "$LISTENER" 2>/dev/null
    sleep 0.5
    rmdir "$CG"/*/ "$CG" 2>/dev/null
    rm -rf "$DEMO"
}
trap cleanup EXIT

rm -rf "$DEMO" && mkdir -p "$DEMO/agents" "$CG/research-bot" "$CG/billing-bot"
cat > "$DEMO/agents/demo.toml" <<TOML
[[agent]]
id = "spiffe://demo.example/agent/research-bot"
name = "research-bot"
owner = "ml-platform@example.org"
environment = "demo"
[[agent.selectors]]
cgroup = "/agentid-demo/research-bot/**"
[agent.policy]
egress = ["127.0.0.1:8765"]
tools = ["/usr/bin/*", "/bin/*"]

[[agent]]
id = "spiffe://demo.example/agent/billing-bot"
name = "billing-bot"
owner = "finance@example.org"
environment = "demo"
[[agent.selectors]]
cgroup = "/agentid-demo/billing-bot/**"
TOML
cat > "$DEMO/agentid.toml" <<TOML
state_dir = "$DEMO/state"
socket = "$DEMO/agentid.sock"
agents_dir = "$DEMO/agents"
alerts_file = "$DEMO/alerts.jsonl"
TOML
export AGENTID_SOCKET=$DEMO/agentid.sock

echo "== starting the daemon (log: $DEMO/daemon.log)"
"$AGENTID" daemon --config "$DEMO/agentid.toml" > "$DEMO/daemon.log" 2>&1 &
DAEMON=$!
until grep -q "API listening" "$DEMO/daemon.log"; do
    kill -0 "$DAEMON" 2>/dev/null || { cat "$DEMO/daemon.log"; exit 1; }
    sleep 0.2
done

# A loopback "model API" for the agents to call.
python3 -m http.server 8765 --bind 127.0.0.1 > /dev/null 2>&1 &
LISTENER=$!

# The (fake) key both agents are given; read inside the agent's cgroup, so the launcher
# itself never holds it.
( umask 077; echo "sk-proj-DEMOonlyNotARealKey7x9Lm2Np4Rt6Vw8Yz" > "$DEMO/key" )
agent() { # agent CGROUP: a little agent loop in its own cgroup
    sh -c 'echo $$ > "$1/cgroup.procs"; exec env -i PATH=/usr/bin:/bin OPENAI_API_KEY="$(cat "$2")" sh -c "
        for i in 1 2 3; do
            curl -s -o /dev/null http://127.0.0.1:8765/ || true
            ls /tmp > /dev/null
            sleep 1
        done
        sleep 30"' _ "$1" "$DEMO/key" &
}
echo "== starting research-bot and billing-bot (same OPENAI_API_KEY: a finding)"
agent "$CG/research-bot"
agent "$CG/billing-bot"
sleep 4

echo; echo "== agentid agents"; "$AGENTID" agents
for a in research-bot billing-bot; do
    echo; echo "== agentid ps --tree --agent spiffe://demo.example/agent/$a"
    "$AGENTID" ps --tree --agent "spiffe://demo.example/agent/$a"
done
echo; echo "== agentid events --agent spiffe://demo.example/agent/research-bot --kind connect"
"$AGENTID" events --agent spiffe://demo.example/agent/research-bot --kind connect
echo; echo "== agentid alerts"; "$AGENTID" alerts
echo; echo "== agentid credentials"; "$AGENTID" credentials
echo; echo "== agentid status"; "$AGENTID" status
