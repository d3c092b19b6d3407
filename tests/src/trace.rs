//! `agentid trace` as a child process whose output is read with deadlines.
//!
//! Both pipes are drained by threads from the start: a tracer that writes more to stderr than
//! a pipe holds (warnings under load) must never block, and a missing event must fail the
//! test at its deadline instead of hanging the whole run (CI once waited 90 minutes on a
//! blocking `read_line`).
use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::agentid_bin;

/// A running `agentid trace`; killed on drop.
#[derive(Debug)]
pub struct Trace {
    child: Child,
    lines: Receiver<Vec<u8>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
}

impl Trace {
    /// Starts `agentid trace ARGS` and waits (at most 60 s) for its "probes attached" line.
    pub fn start<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(agentid_bin())
            .arg("trace")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentid trace");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            loop {
                let mut buf = Vec::new();
                match out.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(buf).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().expect("stderr");
        let stderr_thread = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("stderr buffer")
                    .extend_from_slice(&chunk[..n]);
            }
        });
        let trace = Self {
            child,
            lines,
            stderr,
            stderr_thread: Some(stderr_thread),
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        while !trace.stderr_text().contains("probes attached") {
            assert!(
                Instant::now() < deadline,
                "trace did not attach within 60 s; stderr: {}",
                trace.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        trace
    }

    /// The next stdout line (with its `\n`), or `None` once stdout is closed. Panics at the
    /// deadline, naming it.
    pub fn next_line(&self, deadline: Instant) -> Option<Vec<u8>> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "no trace output before the deadline; stderr so far: {}",
                self.stderr_text()
            ),
        }
    }

    /// What the tracer wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer")).into_owned()
    }

    /// SIGINT, then the exit status, the rest of stdout and all of stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<Vec<u8>>, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(self.child.id()).expect("pid"), libc::SIGINT) };
        let status = self.child.wait().expect("wait for trace");
        // The reader thread ends when the pipe closes: everything printed before the exit.
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            rest.push(line);
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        (status, rest, self.stderr_text())
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
