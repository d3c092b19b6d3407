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
use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    process::{Command, ExitCode},
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
        "move-connect" => {
            let addr: SocketAddr = arg(2)?.parse()?;
            drop(TcpStream::connect(addr)?);
            std::fs::write(arg(1)?, std::process::id().to_string())?;
            drop(TcpStream::connect(addr)?);
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
        "wait-connect" => {
            let addr: SocketAddr = arg(1)?.parse()?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            drop(TcpStream::connect(addr)?);
            Ok(0)
        }
        other => Err(format!("unknown mode {other}").into()),
    }
}
