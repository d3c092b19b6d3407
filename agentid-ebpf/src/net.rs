//! Outbound connections: `connect` (TCP and connected UDP) and unconnected `sendmsg`
//! (DNS and friends), from cgroup socket-address hooks attached at the cgroup v2 root so
//! every cgroup on the host is covered. A call is refused (`EPERM` in the caller) only for
//! a task of an agent under `enforce = true` and outside its `egress` (`guard.rs`);
//! everything else proceeds: agentid observes.
use agentid_ebpf::{SockRecord, enforce::v4_mapped, kind, sock_flags};
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    common::{current_ids, emit, is_self},
    guard,
};

/// Return value that lets the socket call proceed.
const ALLOW: i32 = 1;
/// Return value that fails the socket call with `EPERM`.
const DENY: i32 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock(&ctx, kind::CONNECT, AF_INET)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock(&ctx, kind::CONNECT, AF_INET6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock(&ctx, kind::SEND, AF_INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock(&ctx, kind::SEND, AF_INET6)
}

/// Reports the call and decides it: [`ALLOW`] or [`DENY`].
#[inline(always)]
fn sock(ctx: &SockAddrContext, kind: u32, family: u16) -> i32 {
    let (tgid, tid) = current_ids();
    if is_self(tgid) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the verifier-checked context, read in aligned 32-bit loads.
    let (addr, port, protocol) = unsafe {
        let addr = if family == AF_INET {
            v4_mapped((*sa).user_ip4.to_ne_bytes())
        } else {
            let mut a = [0u8; 16];
            a[0..4].copy_from_slice(&(*sa).user_ip6[0].to_ne_bytes());
            a[4..8].copy_from_slice(&(*sa).user_ip6[1].to_ne_bytes());
            a[8..12].copy_from_slice(&(*sa).user_ip6[2].to_ne_bytes());
            a[12..16].copy_from_slice(&(*sa).user_ip6[3].to_ne_bytes());
            a
        };
        // user_port holds the port in network byte order in its low 16 bits.
        (
            addr,
            u16::from_be((*sa).user_port as u16),
            (*sa).protocol as u16,
        )
    };
    let allowed = guard::egress_allowed(tgid, &addr, port, protocol);
    emit::<SockRecord>(kind, tgid, tid, |rec| {
        // SAFETY: `rec` is a reserved record; `sa` is the verifier-checked context.
        unsafe {
            (*rec).family = family;
            (*rec).protocol = protocol;
            (*rec).port = port;
            (*rec).flags = if allowed { 0 } else { sock_flags::BLOCKED };
            (*rec).addr = [0; 16];
            if family == AF_INET {
                let ip = (*sa).user_ip4.to_ne_bytes();
                (*rec).addr[0] = ip[0];
                (*rec).addr[1] = ip[1];
                (*rec).addr[2] = ip[2];
                (*rec).addr[3] = ip[3];
            } else {
                // Four separate 32-bit loads: the verifier only allows aligned u32 context
                // reads.
                let w0 = (*sa).user_ip6[0].to_ne_bytes();
                let w1 = (*sa).user_ip6[1].to_ne_bytes();
                let w2 = (*sa).user_ip6[2].to_ne_bytes();
                let w3 = (*sa).user_ip6[3].to_ne_bytes();
                let addr = &mut (*rec).addr;
                addr[0..4].copy_from_slice(&w0);
                addr[4..8].copy_from_slice(&w1);
                addr[8..12].copy_from_slice(&w2);
                addr[12..16].copy_from_slice(&w3);
            }
        }
    });
    if allowed { ALLOW } else { DENY }
}
