//! What a cgroup v2 path says about a process: its container runtime, container id,
//! Kubernetes pod uid and systemd unit.
//!
//! Pure string parsing of the path relative to the hierarchy root (as
//! [`crate::cgroup::Resolver`] produces it), so it is cheap enough to run on every exec
//! and needs no runtime socket. The shapes covered are the ones runtimes actually create:
//!
//! | runtime | cgroup path |
//! | --- | --- |
//! | docker (cgroupfs) | `/docker/<id>` |
//! | docker (systemd) | `/system.slice/docker-<id>.scope` |
//! | containerd | `/system.slice/containerd.service/<slice>:cri-containerd:<id>`, `…/cri-containerd-<id>.scope` |
//! | CRI-O | `…/crio-<id>.scope`, `/crio/<id>` |
//! | podman | `/machine.slice/libpod-<id>.scope[/container]`, rootless under `user@<uid>.service`, `/libpod_parent/libpod-<id>` |
//! | kubepods (systemd) | `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<runtime scope>` |
//! | kubepods (cgroupfs) | `/kubepods[/<qos>]/pod<uid>/<id>` |
//!
//! The Kubernetes namespace is not part of any cgroup path: [`parse_cgroup_path`] never
//! sets [`ContainerInfo::k8s_namespace`]. A caller that knows it (e.g. a future kubelet
//! lookup by pod uid) fills it in; until then a `k8s_namespace` selector never matches.
use serde::Serialize;

/// The container runtime that created the cgroup, when the path says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
}

/// Identity facts derived from a cgroup path.
///
/// Every field is `None` when the path does not say; in particular a kubepods
/// cgroupfs path (`/kubepods/pod<uid>/<id>`) has a container id but no runtime, since
/// docker, containerd and CRI-O all name it the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    pub runtime: Option<Runtime>,
    pub container_id: Option<String>,
    /// Kubernetes pod uid in its canonical dashed form.
    pub pod_uid: Option<String>,
    /// Never derived from the path (it is not in it); see the module doc.
    pub k8s_namespace: Option<String>,
    /// The innermost `.service` or `.scope` component.
    pub systemd_unit: Option<String>,
}

/// Parses a cgroup v2 path relative to the hierarchy root (`/system.slice/x.service`).
///
/// When several components name a container (a podman scope nested in a user slice,
/// say), the innermost one wins: it is the one the process is actually in.
pub fn parse_cgroup_path(path: &str) -> ContainerInfo {
    let mut info = ContainerInfo::default();
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, &comp) in components.iter().enumerate() {
        let parent = i.checked_sub(1).map(|p| components[p]);
        let in_kubepods = components[..i].iter().any(|c| c.starts_with("kubepods"));

        if let Some(uid) = pod_uid(comp, in_kubepods) {
            info.pod_uid = Some(uid);
        }
        if is_unit_name(comp) {
            info.systemd_unit = Some(comp.to_owned());
        }
        if let Some((runtime, id)) = container(comp, parent, in_kubepods) {
            info.runtime = runtime;
            info.container_id = Some(id.to_owned());
        }
    }
    info
}

/// `<prefix><id>[.scope]` components, by runtime. Conmon scopes (`libpod-conmon-…`,
/// `crio-conmon-…`) hold the monitor, not the container, so they never match: their
/// suffix is not a bare id.
const SCOPE_PREFIXES: [(&str, Runtime); 4] = [
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("crio-", Runtime::CriO),
    ("libpod-", Runtime::Podman),
];

/// The `<slice>:<prefix>:<id>` names containerd's and CRI-O's systemd cgroup drivers use
/// when the runtime itself manages the leaf (e.g. kind or k3s nodes).
const COLON_PREFIXES: [(&str, Runtime); 3] = [
    ("cri-containerd", Runtime::Containerd),
    ("crio", Runtime::CriO),
    ("docker", Runtime::Docker),
];

fn container<'a>(
    comp: &'a str,
    parent: Option<&str>,
    in_kubepods: bool,
) -> Option<(Option<Runtime>, &'a str)> {
    let bare = comp.strip_suffix(".scope").unwrap_or(comp);
    for (prefix, runtime) in SCOPE_PREFIXES {
        if let Some(id) = bare.strip_prefix(prefix).filter(|id| is_container_id(id)) {
            return Some((Some(runtime), id));
        }
    }
    let mut parts = comp.split(':');
    if let (Some(_slice), Some(kind), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        for (prefix, runtime) in COLON_PREFIXES {
            if kind == prefix && is_container_id(id) {
                return Some((Some(runtime), id));
            }
        }
    }
    if is_container_id(comp) {
        let runtime = match parent {
            Some("docker") => Some(Runtime::Docker),
            Some("crio") => Some(Runtime::CriO),
            Some("containerd.service") => Some(Runtime::Containerd),
            _ if in_kubepods => None,
            _ => return None,
        };
        return Some((runtime, comp));
    }
    None
}

/// Pod uid from `pod<uid>` (cgroupfs driver) or `…-pod<uid_with_underscores>.slice`
/// (systemd driver, also as the first part of a `<slice>:<runtime>:<id>` name), only below a `kubepods*` component so that an unrelated
/// `/pod…` cgroup is not mistaken for a pod.
fn pod_uid(comp: &str, in_kubepods: bool) -> Option<String> {
    // `<slice>:cri-containerd:<id>` carries the pod slice as its first part.
    let comp = comp.split(':').next().unwrap_or(comp);
    let candidate = if let Some(slice) = comp.strip_suffix(".slice") {
        // kubepods-burstable-pod<uid>.slice, kubepods-pod<uid>.slice,
        // kubelet-kubepods-besteffort-pod<uid>.slice
        if !slice.contains("kubepods") {
            return None;
        }
        slice.rsplit_once("-pod")?.1
    } else if in_kubepods {
        comp.strip_prefix("pod")?
    } else {
        return None;
    };
    let uid = candidate.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

/// A systemd unit of the kinds a process can be in.
#[expect(
    clippy::case_sensitive_file_extension_comparisons,
    reason = "systemd unit names are case-sensitive: `x.SERVICE` is not a service"
)]
pub(super) fn is_unit_name(s: &str) -> bool {
    !s.contains('/') && (s.ends_with(".service") || s.ends_with(".scope"))
}

/// 8-4-4-4-12 hex digits.
pub(super) fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Container ids of every runtime covered are 64 lowercase hex digits.
pub(super) fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::{ContainerInfo, Runtime, parse_cgroup_path};

    const ID: &str = "9be0b7b9f8b5a3a4d0c7c5a6c0c5f4f6a0b4d8a6f5e4d9c8b7a6f5e4d3c2b1a0";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const POD: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const POD_US: &str = "2c48913c_b29f_11e7_9350_020968147796";

    fn info(
        runtime: Option<Runtime>,
        id: Option<&str>,
        pod: Option<&str>,
        unit: Option<&str>,
    ) -> ContainerInfo {
        ContainerInfo {
            runtime,
            container_id: id.map(str::to_owned),
            pod_uid: pod.map(str::to_owned),
            k8s_namespace: None,
            systemd_unit: unit.map(str::to_owned),
        }
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one table of every path shape")]
    fn parses_every_runtime_shape() {
        use Runtime::{Containerd, CriO, Docker, Podman};
        let cases: Vec<(String, ContainerInfo)> = vec![
            // docker, cgroupfs and systemd drivers
            (
                format!("/docker/{ID}"),
                info(Some(Docker), Some(ID), None, None),
            ),
            (
                format!("/system.slice/docker-{ID}.scope"),
                info(
                    Some(Docker),
                    Some(ID),
                    None,
                    Some(&format!("docker-{ID}.scope")),
                ),
            ),
            // containerd
            (
                format!(
                    "/system.slice/containerd.service/kubepods-burstable-pod{POD_US}.slice:cri-containerd:{ID}"
                ),
                info(
                    Some(Containerd),
                    Some(ID),
                    Some(POD),
                    Some("containerd.service"),
                ),
            ),
            (
                format!("/system.slice/containerd.service/{ID}"),
                info(Some(Containerd), Some(ID), None, Some("containerd.service")),
            ),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                info(
                    Some(Containerd),
                    Some(ID),
                    None,
                    Some(&format!("cri-containerd-{ID}.scope")),
                ),
            ),
            // CRI-O
            (
                format!("/system.slice/crio-{ID}.scope"),
                info(
                    Some(CriO),
                    Some(ID),
                    None,
                    Some(&format!("crio-{ID}.scope")),
                ),
            ),
            (
                format!("/crio/{ID}"),
                info(Some(CriO), Some(ID), None, None),
            ),
            // podman: rootful, with the inner `container` cgroup, rootless, cgroupfs
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                info(
                    Some(Podman),
                    Some(ID),
                    None,
                    Some(&format!("libpod-{ID}.scope")),
                ),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                info(
                    Some(Podman),
                    Some(ID),
                    None,
                    Some(&format!("libpod-{ID}.scope")),
                ),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                info(
                    Some(Podman),
                    Some(ID),
                    None,
                    Some(&format!("libpod-{ID}.scope")),
                ),
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                info(Some(Podman), Some(ID), None, None),
            ),
            // the conmon monitor is not the container
            (
                format!("/machine.slice/libpod-conmon-{ID}.scope"),
                info(None, None, None, Some(&format!("libpod-conmon-{ID}.scope"))),
            ),
            // kubepods, systemd driver
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice/cri-containerd-{ID}.scope"
                ),
                info(
                    Some(Containerd),
                    Some(ID),
                    Some(POD),
                    Some(&format!("cri-containerd-{ID}.scope")),
                ),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_US}.slice/crio-{ID}.scope"
                ),
                info(
                    Some(CriO),
                    Some(ID),
                    Some(POD),
                    Some(&format!("crio-{ID}.scope")),
                ),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{POD_US}.slice/docker-{ID}.scope"),
                info(
                    Some(Docker),
                    Some(ID),
                    Some(POD),
                    Some(&format!("docker-{ID}.scope")),
                ),
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{POD_US}.slice/cri-containerd-{ID2}.scope"
                ),
                info(
                    Some(Containerd),
                    Some(ID2),
                    Some(POD),
                    Some(&format!("cri-containerd-{ID2}.scope")),
                ),
            ),
            // a pod's own slice, no container yet
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_US}.slice"
                ),
                info(None, None, Some(POD), None),
            ),
            // kubepods, cgroupfs driver: the id has no runtime marker
            (
                format!("/kubepods/burstable/pod{POD}/{ID}"),
                info(None, Some(ID), Some(POD), None),
            ),
            (
                format!("/kubepods/besteffort/pod{POD}/{ID2}"),
                info(None, Some(ID2), Some(POD), None),
            ),
            (
                format!("/kubepods/pod{POD}/{ID}"),
                info(None, Some(ID), Some(POD), None),
            ),
            // systemd units
            (
                "/system.slice/research-bot.service".to_owned(),
                info(None, None, None, Some("research-bot.service")),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service".to_owned(),
                info(None, None, None, Some("x.service")),
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope".to_owned(),
                info(None, None, None, Some("session-3.scope")),
            ),
            // nothing to say
            ("/".to_owned(), info(None, None, None, None)),
            (
                "/agents/research-bot".to_owned(),
                info(None, None, None, None),
            ),
            // a 64-hex name outside any runtime or kubepods cgroup is not a container
            (format!("/agents/{ID}"), info(None, None, None, None)),
            // `pod…` outside kubepods is not a pod; a short id is not a container id
            (format!("/pod{POD}/abc123"), info(None, None, None, None)),
            (
                "/system.slice/docker-abc123.scope".to_owned(),
                info(None, None, None, Some("docker-abc123.scope")),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_cgroup_path(&path), want, "{path}");
        }
    }
}
