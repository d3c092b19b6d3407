#!/usr/bin/env bash
# Validates the Kubernetes deployment offline (no API server): `helm lint --strict`,
# `helm template` with the default and with every-option values, the rendered manifests
# against the official API schemas of several Kubernetes versions (kubernetes-validate
# --strict: unknown fields are errors), the committed plain manifest against the chart's
# rendering (they must not drift), and what the DaemonSet must and must not ask for.
# Writes each rendered agentid.toml into OUT_DIR for the caller (tests/deploy.rs) to parse
# with the daemon's own configuration parser. Tools: scripts/setup.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: k8s-validate.sh OUT_DIR}
VENV=${AGENTID_K8S_VENV:-/opt/agentid-k8s-venv}
HELM="${VENV}/bin/helm"
VALIDATE="${VENV}/bin/kubernetes-validate"
CHART=deploy/helm/agentid
mkdir -p "$OUT"

"$HELM" lint --strict "$CHART"
"$HELM" lint --strict "$CHART" -f deploy/helm/ci/custom-values.yaml
"$HELM" template agentid "$CHART" --namespace agentid >"$OUT/default.yaml"
"$HELM" template agentid "$CHART" --namespace agentid -f deploy/helm/ci/custom-values.yaml >"$OUT/custom.yaml"

if ! diff -u deploy/kubernetes/agentid.yaml "$OUT/default.yaml"; then
    echo "deploy/kubernetes/agentid.yaml differs from the chart's rendering; regenerate it:" >&2
    echo "  $HELM template agentid $CHART --namespace agentid > deploy/kubernetes/agentid.yaml" >&2
    exit 1
fi

for k in 1.28.0 1.30.0 1.33.0 1.37.0; do
    "$VALIDATE" --strict --quiet -k "$k" "$OUT/default.yaml" "$OUT/custom.yaml"
done

"${VENV}/bin/python3" - "$OUT" <<'PY'
import sys, yaml
out = sys.argv[1]
for name in ("default", "custom"):
    docs = [d for d in yaml.safe_load_all(open(f"{out}/{name}.yaml")) if d]
    kinds = {d["kind"]: d for d in docs}
    ds = kinds["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True, "hostPID"
    assert not pod.get("hostNetwork"), "no hostNetwork"
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False, sc
    assert sc["capabilities"]["drop"] == ["ALL"], sc
    assert set(sc["capabilities"]["add"]) == {
        "BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE", "SYS_ADMIN", "SYS_PTRACE",
        "DAC_READ_SEARCH", "CHOWN", "FOWNER"}, sc
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["AGENTID_HOST"]["value"] == "$(NODE_NAME)"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    for path in ("/var/lib/agentid", "/sys/fs/bpf", "/sys/fs/cgroup", "/sys/kernel/btf",
                 "/sys/kernel/tracing"):
        assert "hostPath" in vols[mounts[path]["name"]], path
    assert pod["automountServiceAccountToken"] is False
    toml = next(d for d in docs if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].endswith("-config"))["data"]["agentid.toml"]
    open(f"{out}/{name}.toml", "w").write(toml)
    agents = next(d for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"].endswith("-agents"))["data"] or {}
    for file, text in agents.items():
        open(f"{out}/{name}.agents.{file}", "w").write(text)
    print(f"{name}: DaemonSet checks passed")
PY
echo "k8s-validate: ok"
