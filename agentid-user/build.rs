//! Builds agentid's kernel programs for `bpfel-unknown-none` and leaves the object in
//! `OUT_DIR` for `include_bytes!`. Uses the stable toolchain with `RUSTC_BOOTSTRAP=1`
//! (for `-Z build-std=core`), so no nightly is needed.
//!
//! Without `bpf-linker` the build still succeeds (so `cargo check`/`clippy` work on a
//! machine without the eBPF toolchain) but the binary carries no programs: its kernel
//! commands then fail with a message naming `scripts/setup.sh`. A warning says so here.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir =
        PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow::anyhow!("no OUT_DIR"))?);
    let object = out_dir.join("agentid-probes");
    println!("cargo::rustc-check-cfg=cfg(agentid_no_ebpf)");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=AGENTID_SKIP_EBPF");
    // clippy runs this script with a wrapper and gets an empty object: make the switch
    // between clippy and a real build re-run it.
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");

    let skip = env::var_os("AGENTID_SKIP_EBPF").is_some_and(|v| v == "1");
    let clippy = env::var_os("RUSTC_WORKSPACE_WRAPPER")
        .is_some_and(|w| w.to_string_lossy().contains("clippy"));
    if skip || clippy || !on_path("bpf-linker") {
        if !skip && !clippy {
            println!(
                "cargo:warning=bpf-linker not found: building agentid WITHOUT its eBPF programs; \
                 run `scripts/setup.sh` (or `cargo xtask setup`) and rebuild"
            );
        }
        println!("cargo:rustc-cfg=agentid_no_ebpf");
        fs::write(&object, [])?;
        return Ok(());
    }

    // Stable toolchain + build-std: RUSTC_BOOTSTRAP unlocks -Z for the nested build.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no workspace root"))?
        .join("agentid-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agentid-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
