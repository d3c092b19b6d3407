//! The Kubernetes deployment (`deploy/`), validated offline: `scripts/k8s-validate.sh`
//! (helm lint and template, the official API schemas of several Kubernetes versions, the
//! plain manifest against the chart, what the `DaemonSet` asks for), then the rendered
//! `agentid.toml` and registrations through the daemon's own parsers. No cluster: nothing
//! here runs the pod.
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use agentid::{config::Config, identity::Registry};

/// Removes the output directory however the test ends.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether the tools are installed; without them the test fails in CI
/// (`AGENTID_REQUIRE_BPF=1`, set by `.ci/run`) and is skipped elsewhere.
fn tools_or_skip() -> bool {
    let venv = std::env::var_os("AGENTID_K8S_VENV")
        .map_or_else(|| PathBuf::from("/opt/agentid-k8s-venv"), PathBuf::from);
    let missing: Vec<PathBuf> = ["bin/helm", "bin/kubernetes-validate"]
        .iter()
        .map(|t| venv.join(t))
        .filter(|p| !p.exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("missing {missing:?}: run scripts/setup.sh");
    assert!(!agentid_tests::bpf_required(), "{why}");
    eprintln!("SKIPPED: {why}; set AGENTID_REQUIRE_BPF=1 to fail instead");
    false
}

#[test]
fn the_chart_and_manifest_validate_and_configure_the_daemon() {
    if !tools_or_skip() {
        return;
    }
    let out = std::env::temp_dir().join(format!("agentid-k8s-validate-{}", std::process::id()));
    let _guard = DirGuard(out.clone());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-validate.sh");
    let run = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .expect("run k8s-validate.sh");
    assert!(
        run.status.success(),
        "k8s-validate.sh failed ({}):\n{}{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    for name in ["default", "custom"] {
        let path = out.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).expect("rendered agentid.toml");
        let config = Config::parse(&text, &path)
            .unwrap_or_else(|e| panic!("the chart's {name} agentid.toml: {e}"));
        assert_eq!(config.state_dir, Path::new("/var/lib/agentid"));
        assert_eq!(config.socket, Path::new("/run/agentid/agentid.sock"));
        let metrics = config.metrics_listen.map(|a| a.to_string());
        if name == "default" {
            assert_eq!(metrics.as_deref(), Some("0.0.0.0:9464"));
        } else {
            assert_eq!(metrics, None, "metrics.enabled=false");
            assert_eq!(config.sinks.len(), 1);
            assert_eq!(config.watch_cgroups, ["/kubepods.slice/**"]);
        }
    }
    let bot = out.join("custom.agents.research-bot.toml");
    let text = std::fs::read_to_string(&bot).expect("rendered registration");
    let registry = Registry::parse_str(&text, "research-bot.toml");
    assert!(registry.errors().is_empty(), "{:?}", registry.errors());
    assert_eq!(registry.agents().len(), 1);
}
