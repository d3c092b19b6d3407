//! HTTP requests leaving a watched process through its TLS library, read before encryption:
//! where an agent *presents* a credential (`Authorization`, `x-api-key`).
//!
//! Entry uprobes only (a uretprobe would add nothing the entry does not see, costs a second
//! trap and rewrites return addresses). Userspace attaches them to every OpenSSL-family
//! library and nghttp2 it finds, for all processes; the programs keep only the processes in
//! `OPEN_CGROUPS` (registered agents' cgroups) and only what looks like a request head, so
//! a TLS-heavy server elsewhere on the host costs one trap and a map lookup per write.
use agentid_ebpf::{
    CONTINUATION_WRITES, H2_FIELDS, H2_NAME_AT, H2_NAME_LEN, H2_SLOT, H2_VALUE_AT, H2_VALUE_LEN,
    REQUEST_LEN, RequestRecord, kind, request_source,
};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id,
        generated::{bpf_get_attach_cookie, bpf_probe_read_user},
    },
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};

use crate::{
    common::{current_ids, emit, is_self},
    files::OPEN_CGROUPS,
};

/// A connection of a process: its TLS library handle and the process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnKey {
    conn: u64,
    tgid: u32,
    pad: u32,
}

/// Connections whose last request line did not end its write's head, with the writes
/// still to capture after it (see `request_source::CONTINUATION`).
#[map(name = "TLS_CONTINUE")]
static TLS_CONTINUE: LruHashMap<ConnKey, u32> = LruHashMap::with_max_entries(4096, 0);

/// Whether the current process is one whose requests are reported; returns its ids.
#[inline(always)]
fn watched() -> Option<(u32, u32)> {
    let (tgid, tid) = current_ids();
    if is_self(tgid) {
        return None;
    }
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: map lookup of a plain key.
    unsafe { OPEN_CGROUPS.get(&cgroup) }?;
    Some((tgid, tid))
}

/// Whether `head` starts an HTTP/1.x request line: a method in capitals, then a space.
/// Methods are matched by shape, not by list, so an unusual verb is not a way around it.
#[inline(always)]
fn is_request_line(head: &[u8; 8]) -> bool {
    // The HTTP/2 connection preface (`PRI * HTTP/2.0`) has the shape but is no request:
    // HTTP/2 headers come HPACK-coded after it, and nghttp2's probe sees them plain.
    if *head == *b"PRI * HT" {
        return false;
    }
    let mut i = 0;
    while i < 8 {
        let c = head[i];
        if c == b' ' {
            return i >= 3;
        }
        if !c.is_ascii_uppercase() {
            return false;
        }
        i += 1;
    }
    false
}

/// `SSL_write(ssl, buf, int num)`, `SSL_write_ex(ssl, buf, size_t num, size_t *written)`
/// and `SSL_write_ex2`: the attach cookie says which (`request_source`).
#[uprobe]
pub fn tls_write(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = watched() else {
        return 0;
    };
    // SAFETY: the context is the probe's own.
    let source = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let conn = ctx.arg::<u64>(0).unwrap_or(0);
    let Some(buf) = ctx.arg::<u64>(1) else {
        return 0;
    };
    let Some(raw_len) = ctx.arg::<u64>(2) else {
        return 0;
    };
    // `int num` leaves the register's upper half undefined.
    let len = if source == request_source::SSL_WRITE {
        let n = raw_len as u32 as i32;
        if n <= 0 {
            return 0;
        }
        n as u64
    } else {
        raw_len
    };
    if len < 4 {
        return 0;
    }
    // A write shorter than 8 bytes cannot start a request line (its head is zeros) but
    // may continue a head.
    let mut head = [0u8; 8];
    let head_n = if len >= 8 { 8 } else { (len as u32) & 7 };
    // SAFETY: at most 8 bytes into a stack array of 8; the source is user memory read by
    // the checked helper.
    if unsafe { bpf_probe_read_user(head.as_mut_ptr().cast(), head_n, buf as *const _) } != 0 {
        return 0;
    }
    let key = ConnKey { conn, tgid, pad: 0 };
    let mut source = source;
    if is_request_line(&head) {
        // The head ends with this write when its last four bytes are the blank line.
        let mut tail = [0u8; 4];
        // SAFETY: 4 bytes into a stack array of 4, from user memory via the checked helper.
        let read = unsafe {
            bpf_probe_read_user(tail.as_mut_ptr().cast(), 4, (buf + len - 4) as *const _)
        };
        if read == 0 && tail == *b"\r\n\r\n" {
            let _ = TLS_CONTINUE.remove(&key);
        } else {
            let _ = TLS_CONTINUE.insert(&key, &CONTINUATION_WRITES, 0);
        }
    } else {
        // SAFETY: map lookup of a plain key.
        let Some(left) = (unsafe { TLS_CONTINUE.get(&key) }).copied() else {
            return 0;
        };
        if left <= 1 {
            let _ = TLS_CONTINUE.remove(&key);
        } else {
            let _ = TLS_CONTINUE.insert(&key, &(left - 1), 0);
        }
        source |= request_source::CONTINUATION;
    }
    emit::<RequestRecord>(kind::REQUEST, tgid, tid, |rec| {
        // Two constant-bounded cases keep the size provably within `data`.
        let n = if len >= REQUEST_LEN as u64 {
            REQUEST_LEN as u32
        } else {
            (len as u32) & (REQUEST_LEN as u32 - 1)
        };
        // SAFETY: `rec` is a reserved record whose `data` holds more than REQUEST_LEN
        // bytes; the source is user memory read by the checked helper.
        unsafe {
            (*rec).source = source;
            (*rec).total_len = len;
            (*rec).conn = conn;
            let rc = bpf_probe_read_user((*rec).data.as_mut_ptr().cast(), n, buf as *const _);
            // A read that failed leaves nothing to parse; userspace sees captured = 0.
            (*rec).captured = if rc == 0 { n } else { 0 };
        }
    });
    0
}

/// `nghttp2_nv`: name and value pointers, their lengths, flags (C layout, 64-bit).
#[repr(C)]
#[derive(Clone, Copy)]
struct Nv {
    name: u64,
    value: u64,
    namelen: u64,
    valuelen: u64,
    flags: u64,
}

/// `nghttp2_submit_request` and `nghttp2_submit_request2(session, pri_spec, nva, nvlen,
/// data_prd, stream_user_data)`: the header list before HPACK compression, so neither
/// the dynamic table nor Huffman coding stands between the probe and the header.
#[uprobe]
pub fn h2_request(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = watched() else {
        return 0;
    };
    let conn = ctx.arg::<u64>(0).unwrap_or(0);
    let Some(nva) = ctx.arg::<u64>(2) else {
        return 0;
    };
    let Some(nvlen) = ctx.arg::<u64>(3) else {
        return 0;
    };
    if nva == 0 || nvlen == 0 {
        return 0;
    }
    emit::<RequestRecord>(kind::REQUEST, tgid, tid, |rec| {
        // SAFETY: `rec` is a reserved record; every write stays inside its `data` (slot
        // offsets below H2_FIELDS * H2_SLOT, sizes bounded by constants); sources are user
        // memory read by the checked helper.
        unsafe {
            (*rec).source = request_source::NGHTTP2;
            (*rec).total_len = nvlen;
            (*rec).conn = conn;
            let mut copied = 0u32;
            let mut i = 0usize;
            while i < H2_FIELDS {
                if i as u64 >= nvlen {
                    break;
                }
                let mut nv = Nv {
                    name: 0,
                    value: 0,
                    namelen: 0,
                    valuelen: 0,
                    flags: 0,
                };
                let at = (nva + (i * size_of::<Nv>()) as u64) as *const _;
                if bpf_probe_read_user((&raw mut nv).cast(), size_of::<Nv>() as u32, at) != 0 {
                    break;
                }
                let slot = (*rec).data.as_mut_ptr().add(i * H2_SLOT);
                let name_n = if nv.namelen >= H2_NAME_LEN as u64 {
                    H2_NAME_LEN as u32
                } else {
                    (nv.namelen as u32) & 63
                };
                let value_n = if nv.valuelen >= H2_VALUE_LEN as u64 {
                    H2_VALUE_LEN as u32
                } else {
                    (nv.valuelen as u32) & 255
                };
                let value_len = if nv.valuelen > 0xffff {
                    0xffff
                } else {
                    nv.valuelen as u16
                };
                *slot = name_n as u8;
                *slot.add(1) = 0;
                *slot.add(2) = value_len as u8;
                *slot.add(3) = (value_len >> 8) as u8;
                if name_n > 0
                    && bpf_probe_read_user(slot.add(H2_NAME_AT).cast(), name_n, nv.name as *const _)
                        != 0
                {
                    *slot = 0;
                }
                // A value longer than the slot is not copied at all: userspace would not
                // fingerprint a cut secret anyway, so the bytes would only be exposure.
                if value_n > 0
                    && nv.valuelen <= H2_VALUE_LEN as u64
                    && bpf_probe_read_user(
                        slot.add(H2_VALUE_AT).cast(),
                        value_n,
                        nv.value as *const _,
                    ) != 0
                {
                    *slot.add(2) = 0;
                    *slot.add(3) = 0;
                }
                copied += 1;
                i += 1;
            }
            (*rec).captured = copied;
        }
    });
    0
}
