//! A burst that overflows the ring buffer, alone in its own test binary: it would starve
//! the sensors of any test running beside it.
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use agentid::detect::Detector;
use agentid_tests::{
    TestCgroup,
    daemon::{Daemon, registration},
    sensor_or_skip,
};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_buffer_overflow_raises_telemetry_gap() {
    let a = TestCgroup::new("gap");
    let Some(mut sensor) = sensor_or_skip("gap") else {
        return;
    };
    let mut detector = Detector::new(None);
    // Nobody reads the ring buffer while ~6,000 exec records (5.4 KiB each) pour in:
    // more than its 4 MiB (the default `ring_buffer_kib`).
    let mut cmd = a.command(WORKLOAD);
    cmd.env_clear().args(["exec", "6000", "/bin/true"]);
    assert!(cmd.status().expect("spawn").success());
    let drops = sensor.drops().expect("drops");
    let total: u64 = drops.iter().sum();
    assert!(
        total > 0,
        "the burst must overflow the ring buffer: {drops:?}"
    );
    let by_kind = [("exec", drops[1]), ("fork", drops[2]), ("exit", drops[3])];
    let alert = detector
        .telemetry_gap(total, &by_kind, std::time::SystemTime::now())
        .expect("alert");
    assert_eq!(alert.rule, "telemetry-gap");
    assert_eq!(alert.severity, agentid::detect::Severity::High);
    assert!(
        alert
            .description
            .starts_with(&format!("{total} kernel events were lost"))
    );
    // The same total again is no new gap; the sensor keeps working afterwards.
    assert!(
        detector
            .telemetry_gap(total, &by_kind, std::time::SystemTime::now())
            .is_none()
    );
    let mut batch = Vec::new();
    sensor.drain(&mut batch);
    assert!(!batch.is_empty());
}

// ---- the daemon under faults ---------------------------------------------------------------

/// The agent that kills the daemon and floods the kernel before it is back: more exec
/// records than the pinned ring buffer holds. The next start resumes the set, finds its
/// drop counters grown, and raises one `telemetry-gap` naming the window and the loss.
#[test]
fn an_overflow_while_the_daemon_is_down_is_a_gap_counting_the_loss() {
    let dir = Daemon::dir("downflood");
    let a = TestCgroup::new("downflood-a");
    std::fs::write(dir.join("agents/a.toml"), registration("alpha", &a)).expect("reg");
    let Some(d) = Daemon::start(&dir) else { return };
    let killed = d.child.id();
    assert!(d.pin_dir().is_some(), "probes pinned by default");
    d.kill9();
    let mut cmd = a.command(WORKLOAD);
    cmd.env_clear().args(["exec", "6000", "/bin/true"]);
    assert!(cmd.status().expect("spawn").success());

    let Some(d) = Daemon::start(&dir) else { return };
    let gaps = d.cli_until(&["alerts", "--rule", "telemetry-gap"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    });
    let gaps = gaps.as_array().expect("alerts");
    assert_eq!(gaps.len(), 1, "{gaps:#?}");
    let desc = gaps[0]["description"].as_str().expect("description");
    assert!(
        desc.contains(&format!("(pid {killed}) stopped without a clean shutdown")),
        "{desc}"
    );
    assert!(
        desc.contains("kernel events were lost (ring buffer full) from "),
        "{desc}"
    );
    let pins = d.pin_dir().map(std::path::Path::to_owned);
    assert!(d.stop().success());
    assert!(pins.is_none_or(|p| !p.exists()), "a clean stop unpins");
    let _ = std::fs::remove_dir_all(&dir);
}
