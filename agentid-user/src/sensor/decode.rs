//! Ring-buffer bytes → typed [`Event`]s. Input is untrusted in the sense that a short or
//! garbled record must yield an error, never a panic or an out-of-bounds read.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use agentid_ebpf::{
    ARGV_LEN, CHUNK_LEN, DnsRecord, ENV_LEN, EXEC_AREA_CAP, ExecChunkRecord, ExecRecord,
    ExitRecord, FILENAME_LEN, ForkRecord, Header, MAX_ARGS, OpenRecord, PATH_LEN, RequestRecord,
    SockRecord, SocketRecord, exec_flags, kind,
};

use super::reassemble::Reassembler;
use crate::dns::{DnsOptions, Names};
use crate::event::{
    Detail, Event, EventKind, FileId, Protocol, ScanIncomplete, SecretEnv, SocketFamily,
};
use crate::sys;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte {what}")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("{field} length {len} exceeds its {max}-byte buffer")]
    BadLength {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("unknown address family {0}")]
    BadFamily(u16),
    #[error("exec chunk record outside a reassembling decoder")]
    ChunkWithoutDecoder,
}

/// Records that may be read from any bytes: `repr(C)`, integers and byte arrays only.
trait Record: Copy {
    const NAME: &'static str;
}
impl Record for Header {
    const NAME: &'static str = "header";
}
impl Record for ExecRecord {
    const NAME: &'static str = "exec record";
}
impl Record for ForkRecord {
    const NAME: &'static str = "fork record";
}
impl Record for ExitRecord {
    const NAME: &'static str = "exit record";
}
impl Record for ExecChunkRecord {
    const NAME: &'static str = "exec chunk record";
}
impl Record for OpenRecord {
    const NAME: &'static str = "open record";
}
impl Record for SockRecord {
    const NAME: &'static str = "connect/send record";
}
impl Record for SocketRecord {
    const NAME: &'static str = "socket record";
}
impl Record for DnsRecord {
    const NAME: &'static str = "dns record";
}
impl Record for RequestRecord {
    const NAME: &'static str = "request record";
}

fn read<T: Record>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what: T::NAME,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked above; `Record` types are valid for any bit pattern and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Runs `f` on the exec record in `bytes`: in place when the bytes are aligned for it (ring
/// buffer records always are), else on a copy that is wiped afterwards because it holds
/// the environment. In place saves copying and wiping ~5 KiB per exec (a third of the
/// decoder's time).
fn with_exec<R>(bytes: &[u8], f: impl FnOnce(&ExecRecord) -> R) -> Result<R, DecodeError> {
    with_secret_record(bytes, f, |r: &mut ExecRecord| {
        zeroize::Zeroize::zeroize(&mut r.env);
    })
}

/// Runs `f` on the chunk record in `bytes`, in place when aligned (as ring-buffer records
/// are), else on a copy that is wiped afterwards (an environment chunk is secret).
fn with_chunk<R>(bytes: &[u8], f: impl FnOnce(&ExecChunkRecord) -> R) -> Result<R, DecodeError> {
    with_secret_record(bytes, f, |r: &mut ExecChunkRecord| {
        zeroize::Zeroize::zeroize(&mut r.data);
    })
}

/// Runs `f` on the record of type `T` in `bytes`: in place when aligned, else on a copy
/// that `wipe` clears afterwards (the record holds secret bytes).
fn with_secret_record<T: Record, R>(
    bytes: &[u8],
    f: impl FnOnce(&T) -> R,
    wipe: impl FnOnce(&mut T),
) -> Result<R, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what: T::NAME,
            len: bytes.len(),
            need,
        });
    }
    if bytes.as_ptr().align_offset(align_of::<T>()) == 0 {
        // SAFETY: length and alignment checked; every `Record` is plain data valid for any
        // bit pattern, and the borrow does not outlive `bytes`.
        let r = unsafe { &*bytes.as_ptr().cast::<T>() };
        return Ok(f(r));
    }
    let mut r: T = read(bytes)?;
    let out = f(&r);
    wipe(&mut r);
    Ok(out)
}

/// Maps kernel boot-time stamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock time at boot (realtime − boottime), in ns since the epoch.
    boot_epoch_ns: u128,
}

impl Clock {
    pub fn now() -> Self {
        let boot = sys::clock_ns(sys::CLOCK_BOOTTIME);
        let real = sys::clock_ns(libc::CLOCK_REALTIME);
        Self {
            boot_epoch_ns: real.saturating_sub(boot),
        }
    }

    /// Wall-clock time of a `bpf_ktime_get_boot_ns` stamp.
    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        let ns = self.boot_epoch_ns + u128::from(ktime_ns);
        let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
        let nanos = u32::try_from(ns % 1_000_000_000).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
    }
}

/// Decodes one ring-buffer record on its own. An exec whose areas continue in chunk
/// records decodes with what its record holds and is flagged (`scan_incomplete`); chunk
/// records themselves need a [`Decoder`].
pub fn decode(bytes: &[u8], clock: &Clock) -> Result<Event, DecodeError> {
    decode_with(bytes, clock, None, None)?.ok_or(DecodeError::ChunkWithoutDecoder)
}

/// Decodes a stream of ring-buffer records, reassembling each exec's arguments and
/// environment from the chunk records sent ahead of it.
#[derive(Debug)]
pub struct Decoder {
    clock: Clock,
    chunks: Reassembler,
    /// What the agents' own DNS said: names for the connects that follow, in ring order.
    names: Names,
    heads: super::request::Heads,
}

impl Decoder {
    pub fn new(clock: Clock) -> Self {
        Self::with_dns(clock, DnsOptions::default())
    }

    pub fn with_dns(clock: Clock, dns: DnsOptions) -> Self {
        Self {
            clock,
            chunks: Reassembler::default(),
            names: Names::new(dns),
            heads: super::request::Heads::default(),
        }
    }

    /// The next event, or `None` for a record that only feeds a later one (a chunk, a
    /// DNS message). A connect or send gets the names its cgroup resolved its address
    /// from.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Option<Event>, DecodeError> {
        let header: Header = read(bytes)?;
        if header.kind == kind::DNS {
            let r: DnsRecord = read(bytes)?;
            self.names.record(&r);
            return Ok(None);
        }
        let mut event = decode_with(
            bytes,
            &self.clock,
            Some(&mut self.chunks),
            Some(&mut self.heads),
        )?;
        if let Some(Event {
            detail: Detail::Sock {
                dst_ip, dst_names, ..
            },
            cgroup_id,
            ktime_ns,
            ..
        }) = &mut event
        {
            *dst_names = self.names.names(*cgroup_id, *dst_ip, *ktime_ns);
        }
        Ok(event)
    }

    /// The DNS learning counters.
    pub fn dns_stats(&self) -> crate::dns::DnsStats {
        self.names.stats()
    }

    /// The reassembly state (pending chunks, evictions).
    pub fn reassembler(&self) -> &Reassembler {
        &self.chunks
    }
}

/// Hands a chunk record to the reassembler; its exec record will pick it up.
fn take_chunk(
    bytes: &[u8],
    header: &Header,
    chunks: Option<&mut Reassembler>,
) -> Result<(), DecodeError> {
    let Some(chunks) = chunks else {
        return Err(DecodeError::ChunkWithoutDecoder);
    };
    with_chunk(bytes, |r| {
        let len = r.len as usize;
        if len > CHUNK_LEN {
            return Err(DecodeError::BadLength {
                field: "chunk",
                len,
                max: CHUNK_LEN,
            });
        }
        chunks.chunk(
            header.tgid,
            r.start_ns,
            header.ktime_ns,
            r.stream,
            r.offset,
            &r.data[..len],
        )
    })?
}

fn decode_with(
    bytes: &[u8],
    clock: &Clock,
    chunks: Option<&mut Reassembler>,
    heads: Option<&mut super::request::Heads>,
) -> Result<Option<Event>, DecodeError> {
    let header: Header = read(bytes)?;
    let (kind, parent, pid, start, detail) = match header.kind {
        kind::EXEC_CHUNK => {
            take_chunk(bytes, &header, chunks)?;
            return Ok(None);
        }
        kind::EXEC => {
            let (ppid, start, detail) = with_exec(bytes, |r| {
                (r.ppid, Some(r.start_ns), exec_detail(r, chunks))
            })?;
            (EventKind::Exec, Some(ppid), header.tgid, start, detail?)
        }
        kind::FORK => {
            let r: ForkRecord = read(bytes)?;
            let start = Some(r.child_start_ns);
            (
                EventKind::Fork,
                Some(r.parent_tgid),
                r.child_tgid,
                start,
                Detail::Fork {},
            )
        }
        kind::EXIT => {
            let r: ExitRecord = read(bytes)?;
            let start = Some(r.start_ns);
            (
                EventKind::Exit,
                None,
                header.tgid,
                start,
                exit_detail(r.status),
            )
        }
        kind::OPEN => (
            EventKind::Open,
            None,
            header.tgid,
            None,
            open_detail(&read(bytes)?)?,
        ),
        k @ (kind::CONNECT | kind::SEND) => {
            let r: SockRecord = read(bytes)?;
            let kind = if k == kind::CONNECT {
                EventKind::Connect
            } else {
                EventKind::Send
            };
            (kind, None, header.tgid, None, sock_detail(&r)?)
        }
        kind::DNS => {
            // Only a Decoder learns from DNS records; alone they decode to nothing.
            let _: DnsRecord = read(bytes)?;
            return Ok(None);
        }
        kind::SOCKET => (
            EventKind::Socket,
            None,
            header.tgid,
            None,
            socket_detail(&read(bytes)?),
        ),
        kind::REQUEST => {
            // In place (ring-buffer records are aligned), else on a copy wiped after.
            let parse = |r: &RequestRecord| match heads {
                Some(heads) => heads.detail(header.tgid, r),
                None => super::request::detail(r),
            };
            let detail = with_secret_record(bytes, parse, |r: &mut RequestRecord| {
                zeroize::Zeroize::zeroize(&mut r.data);
            })?;
            // A continuation of a head that had ended (a body write) holds no request.
            let Some(detail) = detail else {
                return Ok(None);
            };
            (EventKind::Request, None, header.tgid, None, detail)
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    // Enforcement: the kernel refused the call or killed the new image.
    let blocked = match header.kind {
        kind::EXEC => with_exec(bytes, |r| r.flags & exec_flags::BLOCKED != 0)?,
        kind::CONNECT | kind::SEND => {
            read::<SockRecord>(bytes)?.flags & agentid_ebpf::sock_flags::BLOCKED != 0
        }
        _ => false,
    };
    Ok(Some(Event {
        kind,
        time: clock.wall(header.ktime_ns),
        blocked,
        ktime_ns: header.ktime_ns,
        proc_start_ns: start,
        pid,
        ppid: parent,
        tid: header.tid,
        uid: header.uid,
        gid: header.gid,
        cgroup_id: header.cgroup_id,
        cgroup: None,
        comm: c_string(&header.comm),
        detail,
    }))
}

/// Text up to the first NUL, invalid UTF-8 replaced (never dropped).
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn exec_detail(r: &ExecRecord, chunks: Option<&mut Reassembler>) -> Result<Detail, DecodeError> {
    let filename_len = r.filename_len as usize;
    if filename_len > FILENAME_LEN {
        return Err(DecodeError::BadLength {
            field: "filename",
            len: filename_len,
            max: FILENAME_LEN,
        });
    }
    let argv_len = r.argv_len as usize;
    if argv_len > ARGV_LEN {
        return Err(DecodeError::BadLength {
            field: "argv",
            len: argv_len,
            max: ARGV_LEN,
        });
    }
    let env_len = r.env_len as usize;
    if env_len > ENV_LEN {
        return Err(DecodeError::BadLength {
            field: "env",
            len: env_len,
            max: ENV_LEN,
        });
    }
    // What the areas should add up to: their whole length, up to the cap.
    let expected = [r.argv_total, r.env_total].map(|t| (t as usize).min(EXEC_AREA_CAP));
    let first: [&[u8]; 2] = [&r.argv[..argv_len], &r.env[..env_len]];
    // Without a decoder there are no chunks: an empty reassembler shows the gap.
    let mut none = Reassembler::default();
    let ([argv_area, env_area], duplicate) =
        chunks
            .unwrap_or(&mut none)
            .complete(r.header.tgid, r.start_ns, first, expected);
    let flag = |f: u32, reason: ScanIncomplete| (r.flags & f != 0).then_some(reason);
    let scan_incomplete = ScanIncomplete::from_reasons(
        [
            flag(exec_flags::ARGV_TRUNCATED, ScanIncomplete::ARGV_BEYOND_CAP),
            flag(exec_flags::ENV_TRUNCATED, ScanIncomplete::ENV_BEYOND_CAP),
            flag(
                exec_flags::ARGV_MISSING | exec_flags::ARGV_FAULT,
                ScanIncomplete::ARGV_UNREADABLE,
            ),
            flag(
                exec_flags::ENV_MISSING | exec_flags::ENV_FAULT,
                ScanIncomplete::ENV_UNREADABLE,
            ),
            flag(exec_flags::CHUNK_DROPPED, ScanIncomplete::CHUNKS_LOST),
            // A gap the kernel did not explain by a read fault: chunks lost on the way.
            (argv_area.gap && r.flags & (exec_flags::ARGV_MISSING | exec_flags::ARGV_FAULT) == 0
                || env_area.gap
                    && r.flags & (exec_flags::ENV_MISSING | exec_flags::ENV_FAULT) == 0
                || duplicate)
                .then_some(ScanIncomplete::CHUNKS_LOST),
        ]
        .into_iter()
        .flatten(),
    );

    let argv_bytes = &argv_area.bytes[..];
    let mut argv: Vec<String> = argv_bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // NUL-terminated strings leave one empty piece after the last terminator.
    if argv_bytes.last() == Some(&0) {
        argv.pop();
    }
    // Each argument takes at least its NUL, so the cap bounds the count; a record that
    // claims more (garbled or hostile) is cut there and flagged rather than trusted.
    let over = argv.len() > MAX_ARGS;
    argv.truncate(MAX_ARGS);
    let argv_cut =
        r.flags & (exec_flags::ARGV_TRUNCATED | exec_flags::ARGV_FAULT) != 0 || argv_area.gap;
    Ok(Detail::Exec {
        filename: c_string(&r.filename[..filename_len]),
        argv,
        argv_truncated: over || argv_cut,
        argv_missing: r.flags & exec_flags::ARGV_MISSING != 0,
        loginuid: (r.loginuid != u32::MAX).then_some(r.loginuid),
        env: SecretEnv::from_zeroizing(env_area.bytes),
        scan_incomplete,
    })
}

/// Splits a wait status: low 7 bits = terminating signal, bits 8..16 = exit code.
fn exit_detail(status: u32) -> Detail {
    let signal = status & 0x7f;
    if signal == 0 {
        Detail::Exit {
            exit_code: Some(((status >> 8) & 0xff).cast_signed()),
            signal: None,
        }
    } else {
        Detail::Exit {
            exit_code: None,
            signal: Some(signal),
        }
    }
}

fn open_detail(r: &OpenRecord) -> Result<Detail, DecodeError> {
    let len = r.path_len as usize;
    if len > PATH_LEN {
        return Err(DecodeError::BadLength {
            field: "path",
            len,
            max: PATH_LEN,
        });
    }
    Ok(Detail::Open {
        path: c_string(&r.path[..len]),
        open_flags: r.flags,
        inode: FileId::from_kernel(r.dev, r.ino),
    })
}

fn socket_detail(r: &SocketRecord) -> Detail {
    Detail::Socket {
        family: SocketFamily::from_abi(r.family),
        sock_type: r.sock_type,
        protocol: r.protocol,
    }
}

fn sock_detail(r: &SockRecord) -> Result<Detail, DecodeError> {
    let dst_ip = match r.family {
        2 => IpAddr::V4(Ipv4Addr::new(r.addr[0], r.addr[1], r.addr[2], r.addr[3])),
        10 => IpAddr::V6(Ipv6Addr::from(r.addr)),
        other => return Err(DecodeError::BadFamily(other)),
    };
    Ok(Detail::Sock {
        dst_ip,
        dst_port: r.port,
        protocol: Protocol::from_ip_proto(r.protocol),
        dst_names: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32) -> Header {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        Header {
            kind,
            reserved: 0,
            ktime_ns: 5_000_000_000,
            tgid: 42,
            tid: 43,
            uid: 1000,
            gid: 1001,
            cgroup_id: 777,
            comm,
        }
    }

    fn bytes_of<T: Record>(v: &T) -> Vec<u8> {
        // SAFETY: Record types have no padding; reading their bytes is defined.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn clock() -> Clock {
        Clock {
            boot_epoch_ns: 1_700_000_000_000_000_000,
        }
    }

    fn exec_record(args: &[&[u8]], flags: u32) -> ExecRecord {
        let mut r = ExecRecord {
            header: header(kind::EXEC),
            ppid: 7,
            argc: u32::try_from(args.len()).unwrap_or(0),
            argv_len: 0,
            filename_len: 9,
            flags,
            loginuid: u32::MAX,
            start_ns: 123,
            envc: 2,
            env_len: 0,
            argv_total: 0,
            env_total: 0,
            filename: [0; FILENAME_LEN],
            argv: [0; ARGV_LEN],
            env: [0; ENV_LEN],
        };
        let env = b"HOME=/root\0OPENAI_API_KEY=canary\0";
        r.env[..env.len()].copy_from_slice(env);
        r.env_len = u32::try_from(env.len()).unwrap_or(0);
        r.filename[..9].copy_from_slice(b"/bin/echo");
        let mut off = 0;
        for a in args {
            r.argv[off..off + a.len()].copy_from_slice(a);
            off += a.len() + 1;
        }
        r.argv_len = u32::try_from(off).unwrap_or(0);
        r
    }

    #[test]
    fn exec_decodes_every_field() {
        let r = exec_record(&[b"echo", b"hello world", b""], 0);
        let e = decode(&bytes_of(&r), &clock()).unwrap();
        assert_eq!(e.kind, EventKind::Exec);
        assert_eq!(
            (e.pid, e.tid, e.ppid, e.uid, e.gid, e.cgroup_id),
            (42, 43, Some(7), 1000, 1001, 777)
        );
        assert_eq!(e.comm, "curl");
        assert_eq!(
            e.detail,
            Detail::Exec {
                filename: "/bin/echo".into(),
                argv: vec!["echo".into(), "hello world".into(), String::new()],
                argv_truncated: false,
                argv_missing: false,
                loginuid: None,
                env: SecretEnv::new(b"HOME=/root\0OPENAI_API_KEY=canary\0"),
                scan_incomplete: None,
            }
        );
        let Detail::Exec { env, .. } = &e.detail else {
            unreachable!()
        };
        assert_eq!(
            env.entries().collect::<Vec<_>>(),
            [&b"HOME=/root"[..], b"OPENAI_API_KEY=canary"]
        );
        let shown = format!("{e:?} {}", serde_json::to_string(&e).unwrap());
        assert!(
            !shown.contains("canary"),
            "the environment never shows: {shown}"
        );
        assert_eq!(e.proc_start_ns, Some(123));
        assert_eq!(
            e.time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_005)
        );
    }

    #[test]
    fn exec_decodes_the_same_in_place_and_from_an_unaligned_copy() {
        let r = exec_record(&[b"echo", b"hello world"], 0);
        let aligned = bytes_of(&r);
        // One byte in: the decoder cannot borrow the record and must copy it.
        let mut shifted = vec![0u8; aligned.len() + 1];
        shifted[1..].copy_from_slice(&aligned);
        let unaligned = &shifted[1..];
        assert_ne!(unaligned.as_ptr().align_offset(align_of::<ExecRecord>()), 0);
        let (a, b) = (
            decode(&aligned, &clock()).unwrap(),
            decode(unaligned, &clock()).unwrap(),
        );
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let Detail::Exec { env, argv, .. } = &b.detail else {
            panic!("not an exec: {b:?}");
        };
        assert_eq!(argv, &["echo", "hello world"]);
        assert_eq!(
            env.entries().collect::<Vec<_>>(),
            vec![&b"HOME=/root"[..], b"OPENAI_API_KEY=canary"]
        );
    }

    #[test]
    fn exec_flags_and_non_utf8() {
        let r = exec_record(&[b"a\xffb"], exec_flags::ARGV_TRUNCATED);
        let e = decode(&bytes_of(&r), &clock()).unwrap();
        let Detail::Exec {
            argv,
            argv_truncated,
            ..
        } = e.detail
        else {
            panic!("not exec")
        };
        assert_eq!(argv, vec!["a\u{fffd}b".to_owned()]);
        assert!(argv_truncated);
    }

    #[test]
    fn truncated_argv_without_final_nul_keeps_partial_arg() {
        let mut r = exec_record(&[], exec_flags::ARGV_TRUNCATED);
        r.argv.fill(b'x');
        r.argv_len = u32::try_from(ARGV_LEN).unwrap_or(0);
        let e = decode(&bytes_of(&r), &clock()).unwrap();
        let Detail::Exec { argv, .. } = e.detail else {
            panic!("not exec")
        };
        assert_eq!(argv.len(), 1);
        assert_eq!(argv[0].len(), ARGV_LEN);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut r = exec_record(&[b"x"], 0);
        r.argv_len = 5000;
        assert_eq!(
            decode(&bytes_of(&r), &clock()),
            Err(DecodeError::BadLength {
                field: "argv",
                len: 5000,
                max: ARGV_LEN
            })
        );
        let mut r = exec_record(&[b"x"], 0);
        r.filename_len = 300;
        assert!(matches!(
            decode(&bytes_of(&r), &clock()),
            Err(DecodeError::BadLength { .. })
        ));
    }

    #[test]
    fn short_and_garbage_records_are_errors_not_panics() {
        let full = bytes_of(&exec_record(&[b"x"], 0));
        for len in [0, 1, 7, 55, 56, 100, full.len() - 1] {
            assert!(decode(&full[..len], &clock()).is_err(), "len {len}");
        }
        assert_eq!(
            decode(&bytes_of(&header(99)), &clock()),
            Err(DecodeError::UnknownKind(99))
        );
        // Every kind over pseudo-random bytes: errors or events, never a panic.
        let mut seed = 0x9e37_79b9_u32;
        for k in 0..=6 {
            for len in [56, 64, 80, 1400] {
                let mut buf: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed.to_le_bytes()[0]
                    })
                    .collect();
                buf[..4].copy_from_slice(&u32::to_ne_bytes(k));
                let _ = decode(&buf, &clock());
            }
        }
    }

    #[test]
    fn fork_exit_and_sockets() {
        let f = ForkRecord {
            header: header(kind::FORK),
            parent_tgid: 42,
            child_tgid: 99,
            child_start_ns: 5,
        };
        let e = decode(&bytes_of(&f), &clock()).unwrap();
        assert_eq!((e.kind, e.pid, e.ppid), (EventKind::Fork, 99, Some(42)));

        let x = ExitRecord {
            header: header(kind::EXIT),
            status: 3 << 8,
            reserved: 0,
            start_ns: 1,
        };
        let e = decode(&bytes_of(&x), &clock()).unwrap();
        assert_eq!(
            e.detail,
            Detail::Exit {
                exit_code: Some(3),
                signal: None
            }
        );
        let x = ExitRecord {
            header: header(kind::EXIT),
            status: 9,
            reserved: 0,
            start_ns: 1,
        };
        let e = decode(&bytes_of(&x), &clock()).unwrap();
        assert_eq!(
            e.detail,
            Detail::Exit {
                exit_code: None,
                signal: Some(9)
            }
        );

        let mut s = SockRecord {
            header: header(kind::CONNECT),
            family: 2,
            protocol: 6,
            port: 8080,
            flags: 0,
            addr: [0; 16],
        };
        s.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let e = decode(&bytes_of(&s), &clock()).unwrap();
        assert_eq!(
            e.detail,
            Detail::Sock {
                dst_ip: "127.0.0.1".parse().unwrap(),
                dst_port: 8080,
                protocol: Protocol::Tcp,
                dst_names: Vec::new(),
            }
        );
        s.header.kind = kind::SEND;
        s.family = 10;
        s.protocol = 17;
        s.addr = Ipv6Addr::LOCALHOST.octets();
        let e = decode(&bytes_of(&s), &clock()).unwrap();
        assert_eq!(e.kind, EventKind::Send);
        assert_eq!(
            e.detail,
            Detail::Sock {
                dst_ip: "::1".parse().unwrap(),
                dst_port: 8080,
                protocol: Protocol::Udp,
                dst_names: Vec::new(),
            }
        );
        s.family = 1;
        assert_eq!(
            decode(&bytes_of(&s), &clock()),
            Err(DecodeError::BadFamily(1))
        );
    }

    #[test]
    fn json_field_names_are_stable() {
        let r = exec_record(&[b"echo", b"hi"], 0);
        let mut e = decode(&bytes_of(&r), &clock()).unwrap();
        e.cgroup = Some("/agents/x".into());
        let v = serde_json::to_value(&e).unwrap();
        for key in [
            "kind",
            "time",
            "pid",
            "ppid",
            "tid",
            "uid",
            "gid",
            "cgroup_id",
            "cgroup",
            "comm",
            "filename",
            "argv",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["kind"], "exec");
        assert_eq!(v["argv"], serde_json::json!(["echo", "hi"]));
        assert_eq!(v["time"], "2023-11-14T22:13:25.000000000Z");
    }

    fn chunk_record(stream: u32, offset: usize, data: &[u8]) -> ExecChunkRecord {
        let mut c = ExecChunkRecord {
            header: header(kind::EXEC_CHUNK),
            start_ns: 123,
            stream,
            offset: u32::try_from(offset).unwrap_or(0),
            len: u32::try_from(data.len()).unwrap_or(0),
            reserved: 0,
            data: [0; CHUNK_LEN],
        };
        c.data[..data.len()].copy_from_slice(data);
        c
    }

    /// An environment of `n` bytes of `K<i>=v` entries with `key` as the last one.
    fn long_env(n: usize, key: &[u8]) -> Vec<u8> {
        let mut env = Vec::new();
        let mut i = 0;
        while env.len() < n {
            env.extend_from_slice(format!("K{i}=v\0").as_bytes());
            i += 1;
        }
        env.extend_from_slice(key);
        env.push(0);
        env
    }

    #[test]
    fn chunks_then_the_exec_record_decode_to_the_whole_environment() {
        use agentid_ebpf::chunk_stream;
        let env = long_env(40 * 1024, b"OPENAI_API_KEY=canary-deep");
        let mut r = exec_record(&[b"echo"], 0);
        r.env.copy_from_slice(&env[..ENV_LEN]);
        r.env_len = u32::try_from(ENV_LEN).unwrap_or(0);
        r.env_total = u32::try_from(env.len()).unwrap_or(0);
        let mut d = Decoder::new(clock());
        // The kernel sends them in order; the reader must not depend on it.
        let chunks: Vec<_> = env[ENV_LEN..].chunks(CHUNK_LEN).enumerate().collect();
        for (i, data) in chunks.iter().rev() {
            let c = chunk_record(chunk_stream::ENV, ENV_LEN + i * CHUNK_LEN, data);
            assert_eq!(d.decode(&bytes_of(&c)), Ok(None));
        }
        let e = d.decode(&bytes_of(&r)).unwrap().expect("an exec event");
        let Detail::Exec {
            env: got,
            scan_incomplete,
            ..
        } = &e.detail
        else {
            panic!("not exec")
        };
        assert_eq!(*scan_incomplete, None);
        assert_eq!(got.len(), env.len());
        assert_eq!(
            got.entries().last(),
            Some(&b"OPENAI_API_KEY=canary-deep"[..])
        );
        assert_eq!(d.reassembler().pending(), 0);
        // Without its chunks (lost on the way), the same record is flagged.
        let e = d.decode(&bytes_of(&r)).unwrap().expect("an exec event");
        let Detail::Exec {
            scan_incomplete, ..
        } = &e.detail
        else {
            panic!("not exec")
        };
        assert_eq!(*scan_incomplete, Some(ScanIncomplete::CHUNKS_LOST));
        // A chunk alone is not an event, and needs a decoder.
        let c = chunk_record(chunk_stream::ENV, ENV_LEN, b"x");
        assert_eq!(
            decode(&bytes_of(&c), &clock()),
            Err(DecodeError::ChunkWithoutDecoder)
        );
        let mut bad = c;
        bad.len = u32::try_from(CHUNK_LEN + 1).unwrap_or(0);
        assert!(matches!(
            d.decode(&bytes_of(&bad)),
            Err(DecodeError::BadLength { .. })
        ));
    }

    #[test]
    fn kernel_flags_name_why_the_scan_is_incomplete() {
        for (flags, want) in [
            (exec_flags::ENV_TRUNCATED, vec!["env-beyond-cap"]),
            (exec_flags::ARGV_TRUNCATED, vec!["argv-beyond-cap"]),
            (exec_flags::ENV_FAULT, vec!["env-unreadable"]),
            (
                exec_flags::ENV_FAULT | exec_flags::ENV_MISSING,
                vec!["env-unreadable"],
            ),
            (exec_flags::ENV_MISSING, vec!["env-unreadable"]),
            (exec_flags::ARGV_FAULT, vec!["argv-unreadable"]),
            (exec_flags::CHUNK_DROPPED, vec!["chunks-lost"]),
            (
                exec_flags::ENV_TRUNCATED | exec_flags::CHUNK_DROPPED,
                vec!["env-beyond-cap", "chunks-lost"],
            ),
        ] {
            let r = exec_record(&[b"echo"], flags);
            let e = decode(&bytes_of(&r), &clock()).unwrap();
            let Detail::Exec {
                scan_incomplete, ..
            } = &e.detail
            else {
                panic!("not exec")
            };
            let got: Vec<&str> = scan_incomplete.expect("flagged").reasons().collect();
            assert_eq!(got, want, "flags {flags:#x}");
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["scan_incomplete"], serde_json::json!(want));
        }
        // A gap the kernel explains by a read fault is that, not lost chunks.
        for (flags, want) in [
            (exec_flags::ENV_FAULT, "env-unreadable"),
            (0, "chunks-lost"),
        ] {
            let mut r = exec_record(&[b"echo"], flags);
            r.env_total = 50_000;
            let e = decode(&bytes_of(&r), &clock()).unwrap();
            let Detail::Exec {
                scan_incomplete, ..
            } = &e.detail
            else {
                panic!("not exec")
            };
            let got: Vec<&str> = scan_incomplete.expect("flagged").reasons().collect();
            assert_eq!(got, [want], "flags {flags:#x}");
        }
        let r = exec_record(&[b"echo"], exec_flags::FILENAME_TRUNCATED);
        let v = serde_json::to_value(decode(&bytes_of(&r), &clock()).unwrap()).unwrap();
        assert!(v.get("scan_incomplete").is_none(), "{v}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Any bytes: an event or an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6000)) {
            let _ = decode(&bytes, &clock());
        }

        /// A well-formed exec header with any lengths and any buffer contents: the lengths
        /// are checked against the buffers, strings come out as valid UTF-8, at most
        /// MAX_ARGS arguments.
        #[test]
        fn exec_records_with_any_lengths(
            argv_len in 0u32..2000, filename_len in 0u32..400, env_len in 0u32..5000,
            argc in proptest::prelude::any::<u32>(), flags in proptest::prelude::any::<u32>(),
            fill in proptest::prelude::any::<u8>(),
        ) {
            let mut r = exec_record(&[b"echo"], flags);
            r.argv_len = argv_len;
            r.filename_len = filename_len;
            r.env_len = env_len;
            r.argc = argc;
            r.argv = [fill; ARGV_LEN];
            r.filename = [fill; FILENAME_LEN];
            match decode(&bytes_of(&r), &clock()) {
                Ok(ev) => {
                    proptest::prop_assert!(argv_len as usize <= ARGV_LEN);
                    proptest::prop_assert!(filename_len as usize <= FILENAME_LEN);
                    if let Detail::Exec { argv, .. } = &ev.detail {
                        proptest::prop_assert!(argv.len() <= MAX_ARGS + 1);
                    }
                }
                Err(DecodeError::BadLength { .. }) => {}
                Err(e) => proptest::prop_assert!(false, "unexpected {e}"),
            }
        }
    }
}
