//! Glue between libFuzzer and the shared targets in `agentid_tests::fuzz`.
use std::path::Path;

use agentid_tests::fuzz::{TARGETS, Target};

fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// Runs before libFuzzer reads its corpus directories: with `AGENTID_FUZZ_SEED_DIR` set
/// (scripts/fuzz-coverage.sh sets it to the scratch corpus), writes the target's built-in
/// seeds there, so the coverage-guided run starts from the same inputs as the stable driver.
///
/// # Panics
/// If `name` is not a target in `agentid_tests::fuzz::TARGETS` (a typo in a fuzz target).
pub fn init(name: &str) {
    let Some(dir) = std::env::var_os("AGENTID_FUZZ_SEED_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let _ = std::fs::create_dir_all(dir);
    for (i, seed) in (target(name).seeds)().iter().enumerate() {
        let path = dir.join(format!("seed-{i}"));
        if !path.exists() {
            let _ = std::fs::write(path, seed);
        }
    }
}

/// One input through the named target.
///
/// # Panics
/// If the target finds a bug (that is the point), or `name` is not a target.
pub fn run(name: &str, data: &[u8]) {
    (target(name).run)(data);
}
