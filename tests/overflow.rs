//! A burst that overflows the ring buffer, alone in its own test binary: it would starve
//! the sensors of any test running beside it.
#![expect(
    unused_crate_dependencies,
    reason = "this package's targets share one dependency list and each test file uses a few of it"
)]
use agentid::detect::Detector;
use agentid_tests::{TestCgroup, sensor_or_skip};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_agentid-workload");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_buffer_overflow_raises_telemetry_gap() {
    let a = TestCgroup::new("gap");
    let Some(mut sensor) = sensor_or_skip("gap") else {
        return;
    };
    let mut detector = Detector::new(None);
    // Nobody reads the ring buffer while ~6,000 exec records (5.4 KiB each) pour in:
    // more than its 16 MiB.
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
