//! Batched writes: a batch that reaches the file in part leaves whole records and a chain
//! that continues from the last of them; one that fails whole loses its records, and the
//! chain goes on from before it. `verify` passes either way.
use std::{
    fs,
    io::Read as _,
    os::unix::{fs::OpenOptionsExt as _, io::FromRawFd as _},
};

use super::AuditLog;
use crate::audit::{
    Counts,
    tests::{key, opts, pk, tmpdir},
    verify,
};

/// A pipe that takes 64 KiB and then refuses (`EAGAIN`): a `write` that lands in part.
fn small_pipe() -> (fs::File, fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `pipe2` fills two new descriptors, owned by the files below.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(rc, 0);
    // SAFETY: fresh descriptors, each owned once.
    unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) }
}

#[test]
fn a_batch_written_in_part_keeps_its_whole_records_and_the_chain() {
    let dir = tmpdir("batch-part");
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    log.append_json("event", serde_json::json!({"i": "before"}))
        .unwrap();
    let _ = log.take_counts();
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(900));
    for _ in 0..200 {
        log.buffer_event_text(&body).unwrap();
    }
    let (mut reader, writer) = small_pipe();
    let real = std::mem::replace(&mut log.file, writer);
    assert!(log.flush().is_err(), "the pipe takes only part");
    // What the pipe took is what a file would hold after the failed write; the log could
    // not cut a pipe, so cut the torn line as it would have.
    let mut landed = Vec::new();
    let _ = reader.read_to_end(&mut landed);
    let whole = landed
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    assert!(whole > 0 && whole < 200 * 900, "{whole}");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("audit.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, &landed[..whole]).unwrap();
    log.file = real;
    log.file_bytes = fs::metadata(dir.join("audit.log")).unwrap().len();
    let Counts { written, lost } = log.take_counts();
    assert_eq!(written + lost, 200);
    assert!(written > 0 && lost > 0, "{written} {lost}");
    // The chain goes on from the last whole record.
    log.append_json("event", serde_json::json!({"i": "after"}))
        .unwrap();
    log.close().unwrap();
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.damage.is_none(), "{r}");
    let text = fs::read_to_string(dir.join("audit.log")).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains("xxxx")).count() as u64,
        written
    );
    assert!(text.contains("\"after\""));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_batch_that_fails_whole_is_lost_and_the_chain_goes_on_from_before_it() {
    let dir = tmpdir("batch-fail");
    let mut log = AuditLog::open(&dir, key(1), opts()).unwrap();
    log.append_json("event", serde_json::json!({"i": "before"}))
        .unwrap();
    log.buffer_event_text("{\"i\":\"lost\"}").unwrap();
    log.buffer_event_text("{\"i\":\"lost too\"}").unwrap();
    let read_only = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dir.join("audit.log"))
        .unwrap();
    let real = std::mem::replace(&mut log.file, read_only);
    assert!(
        log.flush().is_err(),
        "a read-only descriptor refuses the write"
    );
    log.file = real;
    // `append_json` is not counted: only buffered records are.
    assert_eq!(
        log.take_counts(),
        Counts {
            written: 0,
            lost: 2
        }
    );
    log.buffer_event_text("{\"i\":\"after\"}").unwrap();
    log.flush().unwrap();
    assert_eq!(
        log.take_counts(),
        Counts {
            written: 1,
            lost: 0
        }
    );
    log.close().unwrap();
    let r = verify(&dir, Some(pk(1))).unwrap();
    assert!(r.damage.is_none(), "{r}");
    let text = fs::read_to_string(dir.join("audit.log")).unwrap();
    assert!(!text.contains("lost"), "{text}");
    assert!(text.contains("\"after\""), "{text}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn buffered_records_are_the_records_appends_write() {
    // The same bodies through both paths: the same chain but for timestamps.
    let (a, b) = (tmpdir("batch-same-a"), tmpdir("batch-same-b"));
    let bodies: Vec<String> = (0..50).map(|i| format!("{{\"i\":{i}}}")).collect();
    let mut one = AuditLog::open(&a, key(1), opts()).unwrap();
    let mut batched = AuditLog::open(&b, key(1), opts()).unwrap();
    for body in &bodies {
        one.append_event_text(body).unwrap();
        batched.buffer_event_text(body).unwrap();
    }
    batched.flush().unwrap();
    assert_eq!(
        batched.take_counts(),
        Counts {
            written: 50,
            lost: 0
        }
    );
    assert_eq!(one.next_seq(), batched.next_seq());
    one.close().unwrap();
    batched.close().unwrap();
    let strip = |dir: &std::path::Path| -> Vec<(serde_json::Value, serde_json::Value)> {
        fs::read_to_string(dir.join("audit.log"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            // The closing checkpoints sign heads over other timestamps.
            .filter(|r| r["type"] == "event")
            .map(|r| (r["seq"].clone(), r["body"].clone()))
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
    assert!(verify(&b, Some(pk(1))).unwrap().damage.is_none());
    fs::remove_dir_all(&a).unwrap();
    fs::remove_dir_all(&b).unwrap();
}
