//! What the integration tests (`agentid-tests`) and the benchmarks (`xtask`) both run,
//! kept in one place: a real resolver (`dnsmasq`) on a loopback address, and the DNS
//! query that asks it. Each side wraps it in its own lifetime rules (the tests take
//! turns on the address; the bench owns it for a run).
use std::{
    fs, io,
    net::{Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A DNS query for `name`, type A, with transaction id `id`.
#[must_use]
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A `resolv.conf` in `dir` naming `listen` only, for agents' mount namespaces.
///
/// # Errors
/// When the file cannot be written.
pub fn write_resolv_conf(dir: &Path, listen: Ipv4Addr) -> io::Result<PathBuf> {
    let resolv = dir.join("resolv.conf");
    fs::write(
        &resolv,
        format!("nameserver {listen}\noptions attempts:1 timeout:2\n"),
    )?;
    Ok(resolv)
}

/// `dnsmasq` in the foreground answering `records` (name, address) with TTL `ttl`
/// seconds on `listen:53` only, no upstream, no `/etc/hosts`; its pid file in `dir`.
///
/// # Errors
/// When it cannot be spawned (`scripts/setup.sh` installs `dnsmasq-base`).
pub fn spawn_dnsmasq(
    dir: &Path,
    listen: Ipv4Addr,
    ttl: u32,
    records: &[(&str, Ipv4Addr)],
) -> io::Result<Child> {
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
    ])
    .arg(format!("--local-ttl={ttl}"))
    .arg(format!("--listen-address={listen}"))
    .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
    for (name, ip) in records {
        cmd.arg(format!("--host-record={name},{ip}"));
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()
}

/// Asks the resolver on `listen:53` for `name` until it answers (a deadline, not a
/// sleep).
///
/// # Errors
/// When it exits first (its address taken?) or does not answer within `within`.
pub fn await_answer(
    child: &mut Child,
    listen: Ipv4Addr,
    name: &str,
    within: Duration,
) -> Result<(), String> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + within;
    let q = query(0x5151, name);
    let mut buf = [0u8; 512];
    loop {
        let _ = sock.send_to(&q, (listen, 53));
        if let Ok(n) = sock.recv(&mut buf)
            && n > 12
            && buf[..2] == [0x51, 0x51]
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("dnsmasq exited ({status}): is {listen} free?"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "dnsmasq on {listen} did not answer within {within:?}"
            ));
        }
    }
}
