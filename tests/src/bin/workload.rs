//! A workload with exactly known behaviour, for the kernel tests:
//!
//! - `connect ADDR N`       N TCP connect/close cycles to ADDR
//! - `sendto ADDR`          one UDP datagram to ADDR from an unconnected socket
//! - `exec N PROG [ARGS..]` N fork+exec+wait of PROG
//! - `fork-exit CODE`       fork a child that exits with CODE; also start and join a thread
//! - `exit CODE`            exit with CODE
//! - `move-connect PROCS ADDR`   connect to ADDR, move itself into the cgroup whose
//!   `cgroup.procs` is PROCS, connect again
//! - `spawn-into PROCS PROG [ARGS..]`  fork a child that joins PROCS' cgroup and execs PROG
//! - `wait-connect ADDR`    read one line from stdin, then connect to ADDR
//! - `open-syscall PATH`    open PATH read-only with the raw `open` system call (not the
//!   `openat` every libc uses), and close it
//!
//! Benchmark modes (`cargo xtask bench`):
//! - `storm N`              N loopback TCP connect/accept/close cycles against its own
//!   listener (no other thread's scheduling in the measured path), closed with a reset
//!   (`SO_LINGER` 0) so that tens of thousands of cycles leave no `TIME_WAIT` behind
//! - `mixed N UDP`          N rounds of: fork+exec `/bin/true` or `/bin/echo`, 4 connect
//!   cycles as in `storm`, 4 unconnected UDP sends to UDP — an agent-like mix
//! - `resolve N NAME`       N cycles of: resolve NAME through the system resolver
//!   (`getaddrinfo`, so `/etc/resolv.conf`), then connect at once to the address it
//!   gave, on its own listener there, closed as in `storm`; prints the connects refused
//!   with `EPERM` (an enforcing agentid that was early or wrong)
//! - `rate UDP PER_S SECS`  about `PER_S` events a second for `SECS` seconds: 80% UDP sends,
//!   20% connect cycles, and 50 execs of `/bin/true` a second
//! - `jwt-fetch AUD [ID]`   with the `spiffe` crate's Workload API client
//!   (`SPIFFE_ENDPOINT_SOCKET`): fetch a JWT-SVID for AUD (as ID if given) and the JWT
//!   bundle, validate the token against the bundle, print `{"token":…}` (or
//!   `{"error":…}`), then hold until stdin closes
//! - `jwt-orphan SOCK AUD`  a child connects to the Workload API at SOCK and forks a
//!   grandchild that keeps the connection; the child exits and is reaped, then the
//!   grandchild asks for a JWT-SVID on the inherited connection: prints `{"code":…}`
//!   (the gRPC status, or `ok`), then holds until stdin closes
//! - `hold N`               fork N children that sleep forever, print `ready`, then wait
//!   for stdin to close (the caller kills the children)
//! - `nats-cluster`         start the tests' 3-node `nats-server` JetStream cluster, print
//!   its URLs (comma-separated), hold until stdin closes, then kill it and remove its dirs
//! - `fleet-publish URLS N` the daemon's fleet link (spool, acks) joined to URLS: N distinct
//!   credential sightings submitted as fast as its queue takes them; prints
//!   `{"records":N,"seconds":…,"per_s":…}` once JetStream acknowledged all of them
#![expect(
    unused_crate_dependencies,
    reason = "a test helper binary in a package whose targets share one dependency list"
)]
use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("agentid-workload: {e}");
            ExitCode::from(101)
        }
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one match arm per mode, each short and read on its own"
)]
fn run(args: &[String]) -> Result<u8, Box<dyn std::error::Error>> {
    let arg = |i: usize| {
        args.get(i)
            .ok_or_else(|| format!("missing argument {i}: {args:?}"))
    };
    match arg(0)?.as_str() {
        "connect" => {
            let addr: SocketAddr = arg(1)?.parse()?;
            let n: u32 = arg(2)?.parse()?;
            for _ in 0..n {
                drop(TcpStream::connect(addr)?);
            }
            Ok(0)
        }
        "sendto" => {
            let addr: SocketAddr = arg(1)?.parse()?;
            let bind = if addr.is_ipv4() {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            };
            UdpSocket::bind(bind)?.send_to(b"agentid", addr)?;
            Ok(0)
        }
        "exec" => {
            let n: u32 = arg(1)?.parse()?;
            let prog = arg(2)?;
            for _ in 0..n {
                let status = Command::new(prog).args(&args[3..]).status()?;
                if !status.success() {
                    return Err(format!("{prog} failed: {status}").into());
                }
            }
            Ok(0)
        }
        "fork-exit" => {
            let code: i32 = arg(1)?.parse()?;
            std::thread::spawn(|| ())
                .join()
                .map_err(|_| "thread panicked")?;
            // SAFETY: the child only calls _exit.
            match unsafe { libc::fork() } {
                -1 => Err(std::io::Error::last_os_error().into()),
                // SAFETY: async-signal-safe exit in the child.
                0 => unsafe { libc::_exit(code) },
                child => {
                    let mut status = 0;
                    // SAFETY: waiting for our own child.
                    unsafe { libc::waitpid(child, &raw mut status, 0) };
                    println!("{child}");
                    Ok(0)
                }
            }
        }
        "exit" => Ok(arg(1)?.parse()?),
        // N processes that exit at once, as fast as fork allows (up to 64 unreaped at a
        // time); prints the rate achieved, processes per second.
        "forks" => {
            let n: u32 = arg(1)?.parse()?;
            let start = Instant::now();
            let mut unreaped = 0u32;
            for _ in 0..n {
                // SAFETY: the child only calls _exit.
                match unsafe { libc::fork() } {
                    -1 => return Err(std::io::Error::last_os_error().into()),
                    // SAFETY: async-signal-safe exit in the child.
                    0 => unsafe { libc::_exit(0) },
                    _ => unreaped += 1,
                }
                while unreaped >= 64 {
                    let mut status = 0;
                    // SAFETY: reaping our own children.
                    if unsafe { libc::waitpid(-1, &raw mut status, 0) } > 0 {
                        unreaped -= 1;
                    }
                }
            }
            while unreaped > 0 {
                let mut status = 0;
                // SAFETY: reaping our own children.
                if unsafe { libc::waitpid(-1, &raw mut status, 0) } <= 0 {
                    break;
                }
                unreaped -= 1;
            }
            println!("{:.0}", f64::from(n) / start.elapsed().as_secs_f64());
            Ok(0)
        }
        // Connects, moves itself into the cgroup whose `cgroup.procs` is given, connects
        // again (to a second address when one is given).
        "move-connect" => {
            let addr: SocketAddr = arg(2)?.parse()?;
            let after: SocketAddr = args.get(3).map_or(Ok(addr), |a| a.parse())?;
            drop(TcpStream::connect(addr)?);
            std::fs::write(arg(1)?, std::process::id().to_string())?;
            drop(TcpStream::connect(after)?);
            Ok(0)
        }
        "spawn-into" => {
            use std::os::unix::process::CommandExt;
            let procs = arg(1)?.clone();
            let mut cmd = Command::new(arg(2)?);
            cmd.args(&args[3..]);
            // SAFETY: the pre-exec hook only writes a file.
            unsafe {
                cmd.pre_exec(move || std::fs::write(&procs, b"0"));
            }
            let status = cmd.status()?;
            Ok(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
        }
        // Creates (and closes) a raw ICMP socket, a packet socket and a netlink socket: the
        // first two talk past the connect hooks, the third is ordinary (`ip`, systemd).
        "raw-sockets" => {
            let eth_p_all = i32::from(0x0003_u16.to_be());
            for (family, ty, proto) in [
                (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
                (
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    eth_p_all,
                ),
                (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
            ] {
                // SAFETY: plain syscall; the descriptor is closed right away.
                let fd = unsafe { libc::socket(family, ty, proto) };
                if fd < 0 {
                    let e = std::io::Error::last_os_error();
                    // A kernel without packet sockets (a module not loadable in a guest).
                    if family == libc::AF_PACKET && e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                        println!("no-packet");
                        continue;
                    }
                    return Err(e.into());
                }
                // SAFETY: closing the descriptor just created.
                unsafe { libc::close(fd) };
            }
            Ok(0)
        }
        "open-syscall" => {
            let path = std::ffi::CString::new(arg(1)?.as_str())?;
            // SAFETY: a plain syscall on a NUL-terminated path that outlives it.
            let fd = unsafe { libc::syscall(libc::SYS_open, path.as_ptr(), libc::O_RDONLY) };
            let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0);
            let Some(fd) = fd else {
                return Err(std::io::Error::last_os_error().into());
            };
            // SAFETY: closing the descriptor just opened.
            unsafe { libc::close(fd) };
            Ok(0)
        }
        "wait-connect" => {
            let addr: SocketAddr = arg(1)?.parse()?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            drop(TcpStream::connect(addr)?);
            Ok(0)
        }
        "storm" => {
            let n: u32 = arg(1)?.parse()?;
            let listener = TcpListener::bind("127.0.0.1:0")?;
            for _ in 0..n {
                reset_connect(&listener)?;
            }
            Ok(0)
        }
        "resolve" => {
            let n: u32 = arg(1)?.parse()?;
            let name = arg(2)?.as_str();
            let first = (name, 0).to_socket_addrs()?.next().ok_or("no address")?;
            let listener = TcpListener::bind((first.ip(), 0))?;
            let port = listener.local_addr()?.port();
            let mut refused = 0u32;
            for _ in 0..n {
                let addr = (name, port).to_socket_addrs()?.next().ok_or("no address")?;
                match reset_cycle(&listener, addr) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => refused += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            println!("{refused}");
            Ok(0)
        }
        "mixed" => {
            let n: u32 = arg(1)?.parse()?;
            let tcp = TcpListener::bind("127.0.0.1:0")?;
            let udp: SocketAddr = arg(2)?.parse()?;
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            for i in 0..n {
                let mut tool = if i % 2 == 0 {
                    Command::new("/bin/true")
                } else {
                    let mut c = Command::new("/bin/echo");
                    c.arg("agent step").stdout(Stdio::null());
                    c
                };
                if !tool.status()?.success() {
                    return Err("tool failed".into());
                }
                for _ in 0..4 {
                    reset_connect(&tcp)?;
                    sock.send_to(b"agentid-bench", udp)?;
                }
            }
            Ok(0)
        }
        "rate" => {
            let udp: SocketAddr = arg(1)?.parse()?;
            let per_s: u32 = arg(2)?.parse()?;
            let secs: u64 = arg(3)?.parse()?;
            let threads: u32 = args.get(4).map_or(Ok(1), |t| t.parse())?;
            let made = rate(udp, per_s, Duration::from_secs(secs), threads.max(1))?;
            println!(
                "{{\"connects\":{},\"sends\":{},\"execs\":{},\"seconds\":{}}}",
                made.connects, made.sends, made.execs, made.seconds
            );
            Ok(0)
        }
        "jwt-fetch" => {
            let aud = arg(1)?.clone();
            let id = args.get(2).cloned();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let line = match rt.block_on(jwt_fetch(&aud, id.as_deref())) {
                Ok(token) => serde_json::json!({ "token": token }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            println!("{line}");
            std::io::stdout().flush()?;
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)?;
            Ok(0)
        }
        "jwt-orphan" => {
            let sock = arg(1)?.clone();
            let aud = arg(2)?.clone();
            let (rd, wr) = pipe()?;
            // SAFETY: single-threaded here; the children run ordinary code until they exit.
            let connector = unsafe { libc::fork() };
            if connector == 0 {
                let conn = std::os::unix::net::UnixStream::connect(&sock)?;
                // SAFETY: as above.
                if unsafe { libc::fork() } == 0 {
                    // The grandchild: wait until the connector is gone and reaped.
                    let mut byte = [0u8; 1];
                    // SAFETY: reading one byte into a valid buffer.
                    let _ = unsafe { libc::read(rd, byte.as_mut_ptr().cast(), 1) };
                    let code = orphan_fetch(conn, &aud);
                    println!("{}", serde_json::json!({ "code": code }));
                    std::io::stdout().flush()?;
                    // SAFETY: leaving the forked child without running the parent's atexit.
                    unsafe { libc::_exit(0) };
                }
                // SAFETY: as above.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(connector, &raw mut status, 0) };
            // SAFETY: one byte from a valid buffer: the connector is gone.
            let _ = unsafe { libc::write(wr, b"x".as_ptr().cast(), 1) };
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)?;
            Ok(0)
        }
        "hold" => {
            let n: u32 = arg(1)?.parse()?;
            for _ in 0..n {
                // SAFETY: the child only calls async-signal-safe pause/_exit.
                match unsafe { libc::fork() } {
                    -1 => return Err(std::io::Error::last_os_error().into()),
                    0 => loop {
                        // SAFETY: pause is async-signal-safe.
                        unsafe { libc::pause() };
                    },
                    _ => {}
                }
            }
            println!("ready");
            std::io::stdout().flush()?;
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)?;
            Ok(0)
        }
        "nats-cluster" => {
            let cluster = agentid_tests::nats::Cluster::start("bench");
            println!("{}", cluster.urls().join(","));
            std::io::stdout().flush()?;
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)?;
            drop(cluster);
            Ok(0)
        }
        "fleet-publish" => {
            let servers: Vec<String> = arg(1)?.split(',').map(str::to_owned).collect();
            let n: u64 = arg(2)?.parse()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let line = rt.block_on(fleet_publish(servers, n))?;
            println!("{line}");
            Ok(0)
        }
        other => Err(format!("unknown mode {other}").into()),
    }
}

/// One connect/accept/close cycle that ends in a reset instead of `TIME_WAIT`, so that a
/// storm of tens of thousands of cycles never runs out of ephemeral ports. On loopback the
/// handshake completes inside `connect`, so the accept never waits.
fn reset_connect(listener: &TcpListener) -> std::io::Result<()> {
    reset_cycle(listener, listener.local_addr()?)
}

/// [`reset_connect`] to `addr`, an address `listener` listens on.
fn reset_cycle(listener: &TcpListener, addr: SocketAddr) -> std::io::Result<()> {
    let s = TcpStream::connect(addr)?;
    drop(listener.accept()?);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(size_of::<libc::linger>()).unwrap_or(8),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What [`rate`] made, for exact counts.
#[derive(Debug, Default, Clone, Copy)]
struct Made {
    connects: u64,
    sends: u64,
    execs: u64,
    /// Wall time from the first event to the last thread's end.
    seconds: f64,
}

/// `per_s` events a second for `length` over `threads` threads (one generator thread tops
/// out near 50k a second on a 2-core VM): one in five a reset loopback connect, the rest
/// UDP sends, and 50 execs of `/bin/true` a second on the first thread.
fn rate(
    udp: SocketAddr,
    per_s: u32,
    length: Duration,
    threads: u32,
) -> Result<Made, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            // The remainder goes to the first threads, so the shares sum to `per_s`.
            let share = per_s / threads + u32::from(i < per_s % threads);
            std::thread::spawn(move || pace(udp, share, length, i == 0, start))
        })
        .collect();
    let mut made = Made::default();
    for w in workers {
        let m = w.join().map_err(|_| "a generator thread panicked")??;
        made.connects += m.connects;
        made.sends += m.sends;
        made.execs += m.execs;
    }
    made.seconds = start.elapsed().as_secs_f64();
    Ok(made)
}

/// One generator thread of [`rate`]. Paces events in 10 ms ticks; a tick that runs late
/// is caught up in the next one.
fn pace(
    udp: SocketAddr,
    per_s: u32,
    length: Duration,
    execs_too: bool,
    start: Instant,
) -> std::io::Result<Made> {
    const TICK: Duration = Duration::from_millis(10);
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let tcp = TcpListener::bind("127.0.0.1:0")?;
    let mut made = Made::default();
    let mut done: u64 = 0;
    while start.elapsed() < length {
        let elapsed = start.elapsed();
        let due = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX) * u64::from(per_s) / 1000;
        while done < due {
            if done.is_multiple_of(5) {
                reset_connect(&tcp)?;
                made.connects += 1;
            } else {
                sock.send_to(b"agentid-bench", udp)?;
                made.sends += 1;
            }
            done += 1;
        }
        // 50 execs a second (each is fork + exec + exit: three events).
        let execs_due = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX) / 20;
        while execs_too && made.execs < execs_due {
            if !Command::new("/bin/true").status()?.success() {
                return Err(std::io::Error::other("/bin/true failed"));
            }
            made.execs += 1;
        }
        std::thread::sleep(TICK.saturating_sub(start.elapsed().saturating_sub(elapsed)));
    }
    Ok(made)
}

/// A JWT-SVID for `aud` from the Workload API, checked against the bundle it serves.
async fn jwt_fetch(aud: &str, id: Option<&str>) -> Result<String, Box<dyn std::error::Error>> {
    let client = spiffe::WorkloadApiClient::connect_env().await?;
    let id = id.map(str::parse::<spiffe::SpiffeId>).transpose()?;
    let svid = client.fetch_jwt_svid([aud], id.as_ref()).await?;
    let bundles = client.fetch_jwt_bundles().await?;
    spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &[aud])?;
    Ok(svid.token().to_owned())
}

fn pipe() -> std::io::Result<(i32, i32)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// `FetchJWTSVID` on an already connected socket (one the caller did not open): the gRPC
/// status code's name, or `ok`.
fn orphan_fetch(conn: std::os::unix::net::UnixStream, aud: &str) -> String {
    use agentid::issuer::pb::{
        JwtsvidRequest, spiffe_workload_api_client::SpiffeWorkloadApiClient,
    };
    let run = async move {
        conn.set_nonblocking(true).map_err(|e| e.to_string())?;
        let conn = std::sync::Mutex::new(Some(conn));
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let taken = conn.lock().ok().and_then(|mut c| c.take());
                async move {
                    let c = taken.ok_or_else(|| std::io::Error::other("connected once only"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::from_std(c)?,
                    ))
                }
            }))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(JwtsvidRequest {
            audience: vec![aud.to_owned()],
            spiffe_id: String::new(),
        });
        req.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        Ok::<_, String>(
            match SpiffeWorkloadApiClient::new(channel)
                .fetch_jwtsvid(req)
                .await
            {
                Ok(_) => "ok".to_owned(),
                Err(s) => format!("{:?}", s.code()),
            },
        )
    };
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run).unwrap_or_else(|e| format!("error: {e}")),
        Err(e) => format!("error: {e}"),
    }
}

/// The fleet link's publish throughput: `n` sightings through the spool to JetStream,
/// timed from the first submit to the last ack.
async fn fleet_publish(
    servers: Vec<String>,
    n: u64,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    use agentid::fleet::{Fleet, FleetConfig, Outgoing, Sighting, records};
    let state = std::env::temp_dir().join(format!("agentid-fleet-publish-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let config = FleetConfig {
        servers,
        host: Some("bench-publisher".into()),
        credentials_file: None,
        ca_file: None,
        replicas: 3,
        heartbeat: Duration::from_secs(10),
        spool_max_bytes: 1 << 30,
    };
    let (fleet, _notices) = Fleet::start(
        &config,
        &state,
        std::sync::Arc::new(agentid::identity::Registry::default()),
    )?;
    let counts = |f: &Fleet| {
        let v = f.view();
        (
            v.connected,
            v.stats.spooled,
            v.stats.published,
            v.stats.dropped,
        )
    };
    let deadline = Instant::now() + Duration::from_mins(1);
    while !counts(&fleet).0 {
        if Instant::now() > deadline {
            return Err("the fleet link did not connect within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now();
    let mut sent = 0;
    let deadline = t0 + Duration::from_mins(5);
    loop {
        let (_, spooled, published, dropped) = counts(&fleet);
        if dropped > 0 {
            return Err(format!("{dropped} records dropped").into());
        }
        if published >= n {
            break;
        }
        // Within the link's queue (4096): a full queue drops, which is not what is measured.
        while sent < n && sent < spooled + 2048 {
            let s = Sighting {
                hmac: format!("{sent:064x}"),
                fingerprint: format!("openai:{sent:012x}"),
                kind: "openai".into(),
                agent: "spiffe://bench.example/agent/publisher".into(),
                host: "bench-publisher".into(),
                first_seen_ms: records::now_ms(),
                last_seen_ms: records::now_ms(),
            };
            fleet.submit(Outgoing::kv(records::SIGHTINGS, s.key(), &s).ok_or("encoding")?);
            sent += 1;
        }
        if Instant::now() > deadline {
            return Err(format!("{published} of {n} acknowledged within 5 min").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    fleet.close().await;
    let _ = std::fs::remove_dir_all(&state);
    #[expect(clippy::cast_precision_loss, reason = "a rate for a report")]
    let per_s = n as f64 / seconds;
    Ok(serde_json::json!({"records": n, "seconds": seconds, "per_s": per_s}))
}
