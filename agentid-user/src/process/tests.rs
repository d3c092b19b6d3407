#![expect(clippy::similar_names, reason = "pid/ppid are the domain's names")]
use std::{net::IpAddr, time::SystemTime};

use super::*;
use crate::event::Protocol;

// Pids above the kernel's pid_max: the table's /proc fallback can never find them.
const PARENT: u32 = 9_000_001;
const CHILD: u32 = 9_000_002;
const GRANDPARENT: u32 = 9_000_000;

fn table() -> ProcessTable {
    let host = HostIds {
        host: "h".into(),
        boot: "b".into(),
    };
    ProcessTable::new(
        host,
        Resolver::new(std::env::temp_dir().join("agentid-no-cgroups")),
    )
}

fn event(
    kind: EventKind,
    pid: u32,
    ppid: Option<u32>,
    start_s: Option<u64>,
    detail: Detail,
) -> Event {
    Event {
        kind,
        time: SystemTime::UNIX_EPOCH,
        ktime_ns: 100_000_000_000,
        proc_start_ns: start_s.map(|s| s * 1_000_000_000),
        pid,
        ppid,
        tid: pid,
        uid: 1000,
        gid: 1000,
        cgroup_id: 55,
        cgroup: None,
        comm: "bot".into(),
        blocked: false,
        detail,
    }
}

fn exec(pid: u32, ppid: u32, start_s: u64, file: &str) -> Event {
    event(
        EventKind::Exec,
        pid,
        Some(ppid),
        Some(start_s),
        Detail::Exec {
            filename: file.into(),
            argv: vec![file.into(), "--x".into()],
            argv_truncated: false,
            argv_missing: false,
            scan_incomplete: None,
            loginuid: Some(1000),
            env: crate::event::SecretEnv::default(),
        },
    )
}

fn fork(child: u32, parent: u32, start_s: u64) -> Event {
    event(
        EventKind::Fork,
        child,
        Some(parent),
        Some(start_s),
        Detail::Fork {},
    )
}

fn exit(pid: u32) -> Event {
    event(
        EventKind::Exit,
        pid,
        None,
        None,
        Detail::Exit {
            exit_code: Some(0),
            signal: None,
        },
    )
}

fn connect(pid: u32, cgroup_id: u64) -> Event {
    let mut e = event(
        EventKind::Connect,
        pid,
        None,
        None,
        Detail::Sock {
            dst_ip: IpAddr::from([127, 0, 0, 1]),
            dst_port: 80,
            protocol: Protocol::Tcp,
            dst_names: Vec::new(),
        },
    );
    e.cgroup_id = cgroup_id;
    e
}

#[test]
fn fork_exec_exit_lifecycle() {
    let mut t = table();
    let (p, change) = t
        .apply(&exec(PARENT, GRANDPARENT, 1, "/usr/bin/agent"))
        .unwrap();
    assert_eq!(change, Change::New);
    assert_eq!(p.exec_id.as_str(), "h:b:100:9000001");
    let parent_id = p.exec_id.clone();

    let (c, change) = t.apply(&fork(CHILD, PARENT, 2)).unwrap();
    assert_eq!(change, Change::New);
    assert_eq!(c.parent_exec_id.as_ref(), Some(&parent_id));
    assert_eq!(
        c.exe, "/usr/bin/agent",
        "a fork runs the parent's image until it execs"
    );
    assert_eq!(c.loginuid, Some(1000));
    let child_id = c.exec_id.clone();

    let (c, change) = t.apply(&exec(CHILD, PARENT, 2, "/usr/bin/git")).unwrap();
    assert_eq!(change, Change::Exec);
    assert_eq!(c.exec_id, child_id, "exec keeps the process identity");
    assert_eq!((c.exe.as_str(), c.argv.len()), ("/usr/bin/git", 2));

    let (c, change) = t.apply(&exit(CHILD)).unwrap();
    assert_eq!(change, Change::Exited);
    assert_eq!(c.exec_id, child_id);
    assert_eq!(t.live_count(), 1);
    assert!(
        t.get(CHILD).is_some(),
        "kept for late events during the grace period"
    );
}

#[test]
fn exited_processes_are_evicted_after_the_grace_period() {
    let mut t = table();
    t.apply(&exec(PARENT, GRANDPARENT, 1, "/bin/a"));
    t.apply(&fork(CHILD, PARENT, 2));
    t.apply(&exit(CHILD));
    let mut later = exec(PARENT, GRANDPARENT, 1, "/bin/b");
    later.ktime_ns += EXITED_GRACE_NS;
    t.apply(&later);
    assert!(t.get(CHILD).is_none());
    assert_eq!(t.exited_count(), 0);
}

#[test]
fn pid_reuse_gets_a_new_exec_id() {
    let mut t = table();
    t.apply(&exec(PARENT, GRANDPARENT, 1, "/bin/a"));
    let first = t.apply(&fork(CHILD, PARENT, 2)).unwrap().0.exec_id.clone();
    t.apply(&exit(CHILD));
    let second = t.apply(&fork(CHILD, PARENT, 7)).unwrap().0.exec_id.clone();
    assert_ne!(first, second);
    // An exec whose start time differs from the entry's is a process whose fork and exit
    // we missed: it replaces the stale entry.
    let (p, change) = t.apply(&exec(CHILD, PARENT, 9, "/bin/c")).unwrap();
    assert_eq!(change, Change::New);
    assert_ne!(p.exec_id, second);
}

#[test]
fn a_pid_reused_within_one_clock_tick_still_gets_a_new_exec_id() {
    let mut t = table();
    t.apply(&exec(PARENT, GRANDPARENT, 1, "/bin/a"));
    let first = t.apply(&fork(CHILD, PARENT, 2)).unwrap().0.exec_id.clone();
    t.apply(&exit(CHILD));
    // 3 ms later: the same 10 ms tick, so /proc would show the same start time.
    let mut again = fork(CHILD, PARENT, 2);
    again.proc_start_ns = again.proc_start_ns.map(|ns| ns + 3_000_000);
    let (p, change) = t.apply(&again).unwrap();
    assert_eq!(change, Change::New);
    assert_ne!(p.exec_id, first);
    assert!(
        p.exec_id.as_str().ends_with(&format!(":{CHILD}.3000000")),
        "{}",
        p.exec_id
    );
    let second = p.exec_id.clone();
    // Its exec keeps the disambiguated id.
    let (p, change) = t
        .apply(&{
            let mut e = exec(CHILD, PARENT, 2, "/bin/c");
            e.proc_start_ns = again.proc_start_ns;
            e
        })
        .unwrap();
    assert_eq!((change, &p.exec_id), (Change::Exec, &second));
}

#[test]
fn a_cgroup_change_is_reported_as_moved() {
    let mut t = table();
    t.apply(&exec(PARENT, GRANDPARENT, 1, "/bin/a"));
    assert_eq!(t.apply(&connect(PARENT, 55)).unwrap().1, Change::Unchanged);
    let (p, change) = t.apply(&connect(PARENT, 77)).unwrap();
    assert_eq!((change, p.cgroup_id), (Change::Moved, 77));
}

#[test]
fn unknown_and_unreadable_processes_are_none() {
    let mut t = table();
    assert!(t.apply(&connect(CHILD, 55)).is_none());
    assert!(t.apply(&exit(CHILD)).is_none());
}

#[test]
fn seeding_reads_this_process_with_its_parent_link() {
    let mut t = table();
    assert!(t.seed_from_proc() > 1);
    let me = t.get(std::process::id()).expect("this process is seeded");
    assert_eq!(me.pid, std::process::id());
    assert!(
        me.exe.ends_with(
            &*std::env::current_exe()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
        )
    );
    let parent = t.get(me.ppid).expect("parent seeded");
    assert_eq!(me.parent_exec_id.as_ref(), Some(&parent.exec_id));
}

/// A process that predates the daemon is scanned from `/proc` just like an exec: its whole
/// command line and environment (well past the 4 KiB the exec record holds), and a process
/// gone (or a pid reused) since seeding yields nothing rather than another's secrets.
#[test]
fn seeded_processes_read_back_as_their_exec() {
    let deep = "x".repeat(30_000);
    let mut child = std::process::Command::new("/bin/sleep")
        .arg("30")
        .env_clear()
        .env("A_FILLER", &deep)
        .env("ZZ_MARKER", "seeded-marker")
        .spawn()
        .unwrap();
    let pid = child.id();
    // The child is exec'd once its /proc/PID/exe is sleep (spawn returns after exec).
    let mut t = table();
    t.seed_from_proc();
    let events: Vec<Event> = t.seeded_exec(pid).into_iter().collect();
    assert!(t.seeded_pids().contains(&pid));
    assert!(
        !t.seeded_pids().contains(&std::process::id()),
        "this process is left out"
    );
    let _ = child.kill();
    let _ = child.wait();
    let [ev] = &events[..] else {
        panic!("one seeded exec for the child: {events:?}")
    };
    assert_eq!(ev.kind, EventKind::Exec);
    assert_eq!(ev.ppid, Some(std::process::id()));
    let p = t.get(pid).unwrap();
    assert_eq!(ev.proc_start_ns.map(ns_to_ticks), Some(p.start_ticks));
    let Detail::Exec {
        filename,
        argv,
        env,
        scan_incomplete,
        ..
    } = &ev.detail
    else {
        panic!("not an exec")
    };
    assert!(filename.ends_with("sleep"), "{filename}");
    assert_eq!(argv, &["/bin/sleep", "30"]);
    assert_eq!(*scan_incomplete, None);
    let entries: Vec<&[u8]> = env.entries().collect();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0], format!("A_FILLER={deep}").as_bytes());
    assert_eq!(entries[1], b"ZZ_MARKER=seeded-marker");
    // Gone now: nothing to read, no event.
    assert!(t.seeded_exec(pid).is_none());
}
