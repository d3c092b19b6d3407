//! agentid's kernel programs. Built only for `bpfel-unknown-none` (by agentid-user's build
//! script); on the host this is an empty binary so workspace-wide `cargo check` works.
//!
//! Only tracepoints, raw tracepoints, cgroup socket hooks and entry uprobes are used: kprobes, fentry and
//! LSM programs are not available on every kernel we run on, and tracepoints are the
//! stable interface anyway.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod common;
#[cfg(target_arch = "bpf")]
mod dns;
#[cfg(target_arch = "bpf")]
mod files;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod tls;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that could reach this; it exists to satisfy no_std.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
