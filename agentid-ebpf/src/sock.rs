//! Raw IP and packet sockets: traffic through them bypasses the cgroup connect/sendmsg
//! hooks (`net.rs`), so their creation is reported — from every cgroup, since they are rare
//! and any of them may be an agent talking past the hooks.
use agentid_ebpf::{SocketRecord, kind};
use aya_ebpf::{macros::map, macros::tracepoint, maps::LruHashMap, programs::TracePointContext};

use crate::common::{current_ids, emit, is_self};

const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const AF_PACKET: u64 = 17;
const SOCK_RAW: u64 = 3;
/// `SOCK_NONBLOCK | SOCK_CLOEXEC` and any future flag live above the type's low bits.
const SOCK_TYPE_MASK: u64 = 0xf;

/// `socket` arguments from entry, by thread, until the exit says whether it succeeded.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingSocket {
    family: u32,
    sock_type: u32,
    protocol: u32,
}

#[map(name = "PENDING_SOCKET")]
static PENDING_SOCKET: LruHashMap<u32, PendingSocket> = LruHashMap::with_max_entries(1024, 0);

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if is_self(tgid) {
        return 0;
    }
    // socket(family, type, protocol): fixed syscall-tracepoint offsets.
    // SAFETY: fixed offsets inside the syscall tracepoint record.
    let (family, sock_type, protocol) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(0) & SOCK_TYPE_MASK,
            ctx.read_at::<u64>(32).unwrap_or(0),
        )
    };
    let raw_ip = (family == AF_INET || family == AF_INET6) && sock_type == SOCK_RAW;
    if !raw_ip && family != AF_PACKET {
        return 0;
    }
    let pending = PendingSocket {
        family: family as u32,
        sock_type: sock_type as u32,
        protocol: protocol as u32,
    };
    let _ = PENDING_SOCKET.insert(&tid, &pending, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_socket")]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    // SAFETY: map lookup of a plain key.
    let Some(pending) = (unsafe { PENDING_SOCKET.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PENDING_SOCKET.remove(&tid);
    // SAFETY: fixed offset inside the syscall tracepoint record.
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(-1);
    if ret < 0 {
        return 0;
    }
    emit::<SocketRecord>(kind::SOCKET, tgid, tid, |rec| {
        // SAFETY: `rec` is the reserved record `emit` hands out.
        unsafe {
            (*rec).family = pending.family;
            (*rec).sock_type = pending.sock_type;
            (*rec).protocol = pending.protocol;
            (*rec).reserved = 0;
        }
    });
    0
}
