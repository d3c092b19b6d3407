//! A real resolver for the DNS and enforcement tests: `dnsmasq` on a loopback address
//! of this test run, answering fixed records, and agents run in private mount namespaces
//! whose `/etc/resolv.conf` names it (the host's is never touched).
use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Output},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::TestCgroup;

/// A name the tests' policies allow.
pub const ALLOWED: &str = "allowed.agentid.test";
/// A name the tests' policies do not allow.
pub const OUTSIDE: &str = "outside.agentid.test";
pub const PYTHON: &str = "/usr/bin/python3";

/// How long a resolver may wait for another holder of its address (another test of
/// this binary, or a test binary whose pid maps to the same address).
const TURN_DEADLINE: Duration = Duration::from_mins(10);

/// The resolver's turn within this process: tests take turns on `lo(53)`.
static RESOLVER: Mutex<()> = Mutex::new(());

/// A loopback address of this test run: `127.77.X.n`, X from the pid, so parallel runs
/// mostly do not meet; those that do take turns on the resolver ([`Dnsmasq::start`]).
pub fn lo(n: u8) -> Ipv4Addr {
    let x = u8::try_from(std::process::id() % 250).expect("pid byte");
    Ipv4Addr::new(127, 77, x, n)
}

/// A TCP listener on `ip` answering each connection with an HTTP 200 (for curl and
/// Python alike); lives as long as the test process.
pub fn http_server(ip: Ipv4Addr) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("listener");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    port
}

/// `dnsmasq` answering `records` on `lo(53):53` only, killed (and its files removed) on
/// drop, even when the test fails.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    dir: PathBuf,
    /// A `resolv.conf` naming it, for the agents' mount namespaces.
    resolv: PathBuf,
    /// The turn on the address across processes: a lock on a file named after it.
    _lock: File,
    /// The turn within this process, given back after the kill in `drop`.
    _turn: MutexGuard<'static, ()>,
}

impl Dnsmasq {
    /// Starts it with records of TTL `ttl` seconds and waits until it answers.
    pub fn start(test: &str, ttl: u32, records: &[(&str, Ipv4Addr)]) -> Self {
        let turn = RESOLVER.lock().unwrap_or_else(PoisonError::into_inner);
        let lock = address_lock();
        let dir = std::env::temp_dir().join(format!("agentid-dns-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let resolv = agentid_testkit::write_resolv_conf(&dir, lo(53)).expect("resolv.conf");
        let child = agentid_testkit::spawn_dnsmasq(&dir, lo(53), ttl, records)
            .expect("dnsmasq (scripts/setup.sh installs dnsmasq-base)");
        let mut d = Self {
            child,
            dir,
            resolv,
            _lock: lock,
            _turn: turn,
        };
        d.wait_ready(records.first().map_or(ALLOWED, |r| r.0));
        d
    }

    /// Asks it until it answers (a deadline, not a sleep).
    fn wait_ready(&mut self, name: &str) {
        if let Err(e) =
            agentid_testkit::await_answer(&mut self.child, lo(53), name, Duration::from_secs(10))
        {
            panic!("{e}");
        }
    }

    /// A `resolv.conf` naming this resolver.
    pub fn resolv_conf(&self) -> &std::path::Path {
        &self.resolv
    }

    /// `program args…` in `cg`, in a private mount namespace where `/etc/resolv.conf` is
    /// this resolver's.
    pub fn agent(&self, cg: &TestCgroup, program: &str, args: &[&str]) -> Command {
        let mut cmd = cg.command("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
        ])
        .arg(&self.resolv)
        .arg(program)
        .args(args);
        cmd
    }

    /// Python running `script` with `args` as [`Dnsmasq::agent`], to its end.
    pub fn python(&self, cg: &TestCgroup, script: &str, args: &[&str]) -> Output {
        let mut all = vec!["-c", script];
        all.extend_from_slice(args);
        self.agent(cg, PYTHON, &all).output().expect("python")
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lock on `lo(53)` across test processes (two pids can map to one address): held
/// until the resolver is dropped, released by the kernel if the process dies.
fn address_lock() -> File {
    let path = std::env::temp_dir().join(format!("agentid-test-resolver-{}.lock", lo(53)));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("resolver lock file");
    let deadline = Instant::now() + TURN_DEADLINE;
    loop {
        match file.try_lock() {
            Ok(()) => return file,
            Err(std::fs::TryLockError::WouldBlock) => {
                assert!(
                    Instant::now() < deadline,
                    "{} held by another test process for {TURN_DEADLINE:?}",
                    path.display()
                );
                // Another process's test holds it; nothing to await but its end.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(e)) => panic!("locking {}: {e}", path.display()),
        }
    }
}
