//! The DNS that agents do: UDP datagrams and the first TCP segment bytes from or to port
//! 53 of sockets in watched cgroups, copied (at most [`DNS_LEN`] bytes) for userspace to
//! learn which addresses each name had for that agent. `cgroup_skb` programs at the cgroup
//! v2 root see every packet of every socket, so the port and cgroup checks come first.
//! They let every packet through but, for enforced agents' cgroups, a query for a name
//! outside `egress` and DNS the agent would serve itself; and before an enforced agent's
//! socket gets an answer from a resolver, its addresses are allowed (`guard.rs`).
use agentid_ebpf::{DNS_LEN, DnsRecord, Header, dns_dir, kind};
use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::{
    common::{count_drop, wake_flags},
    files::OPEN_CGROUPS,
    guard,
};

/// Return value that lets the packet through.
const PASS: i32 = 1;
/// Return value that drops the packet (a UDP send then fails with `EPERM`).
const DROP: i32 = 0;
const DNS_PORT: u16 = 53;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP: u8 = 6;
const UDP: u8 = 17;

#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    dns(&ctx, dns_dir::EGRESS)
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    dns(&ctx, dns_dir::INGRESS)
}

/// Enforcement for a UDP DNS datagram of an enforced agent's socket (`policy`): whether
/// it may pass. Answers from the host's resolvers are learned from here, before the
/// socket can read them.
#[inline(always)]
fn enforce(
    ctx: &SkBuffContext,
    policy: u32,
    direction: u32,
    ports: (u16, u16),
    at: (usize, usize),
) -> i32 {
    let (sport, _dport) = ports;
    let (saddr_off, payload) = at;
    let skb = ctx.skb.skb;
    if direction == dns_dir::EGRESS && sport == DNS_PORT {
        // DNS the agent serves itself (a forged answer to its own query) goes nowhere.
        return DROP;
    }
    if direction == dns_dir::INGRESS && sport != DNS_PORT {
        return PASS;
    }
    let Some(msg) = guard::scratch() else {
        return DROP;
    };
    let total = ctx.len() as usize;
    if payload >= total {
        return if direction == dns_dir::EGRESS {
            DROP
        } else {
            PASS
        };
    }
    let len = if total - payload > guard::MSG_LEN {
        guard::MSG_LEN
    } else {
        total - payload
    };
    let n = (len as u32 - 1) & (guard::MSG_LEN as u32 - 1);
    // SAFETY: the scratch buffer holds MSG_LEN >= n + 1 bytes; the packet is read by the
    // checked helper.
    let loaded = unsafe { bpf_skb_load_bytes(skb.cast(), payload as u32, msg.cast(), n + 1) } == 0;
    // SAFETY: a valid per-CPU map value, not shared while this program runs.
    let msg = unsafe { &*msg };
    if direction == dns_dir::EGRESS {
        return if loaded && guard::dns_query_allowed(policy, msg, n as usize + 1) {
            PASS
        } else {
            DROP
        };
    }
    // Only a resolver's answers teach addresses (the agent's own are dropped above).
    let mut src = [0u8; 16];
    let ok = if saddr_off == 12 {
        let mut v4 = [0u8; 4];
        // SAFETY: a 4-byte buffer, read by the checked helper.
        let ok = unsafe { bpf_skb_load_bytes(skb.cast(), 12, v4.as_mut_ptr().cast(), 4) } == 0;
        src = agentid_ebpf::enforce::v4_mapped(v4);
        ok
    } else {
        // SAFETY: a 16-byte buffer, read by the checked helper.
        unsafe { bpf_skb_load_bytes(skb.cast(), 8, src.as_mut_ptr().cast(), 16) == 0 }
    };
    if loaded && ok && guard::is_resolver(&src) {
        guard::learn_answer(policy, msg, n as usize + 1);
    }
    PASS
}

#[inline(always)]
fn dns(ctx: &SkBuffContext, direction: u32) -> i32 {
    // The packet starts at the IP header.
    let Ok(b0) = ctx.load::<u8>(0) else {
        return PASS;
    };
    let (family, proto, l4, saddr_off, addr_len) = match b0 >> 4 {
        4 => {
            let Ok(p) = ctx.load::<u8>(9) else {
                return PASS;
            };
            // A later fragment carries no port: only whole datagrams and first fragments.
            let Ok(frag) = ctx.load::<u16>(6) else {
                return PASS;
            };
            if u16::from_be(frag) & 0x1fff != 0 {
                return PASS;
            }
            (AF_INET, p, usize::from(b0 & 0xf) * 4, 12usize, 4usize)
        }
        // Extension headers are not walked: DNS packets do not carry them.
        6 => {
            let Ok(p) = ctx.load::<u8>(6) else {
                return PASS;
            };
            (AF_INET6, p, 40, 8, 16)
        }
        _ => return PASS,
    };
    if proto != UDP && proto != TCP {
        return PASS;
    }
    let Ok(sport) = ctx.load::<u16>(l4) else {
        return PASS;
    };
    let Ok(dport) = ctx.load::<u16>(l4 + 2) else {
        return PASS;
    };
    let (sport, dport) = (u16::from_be(sport), u16::from_be(dport));
    if sport != DNS_PORT && dport != DNS_PORT {
        return PASS;
    }
    let skb = ctx.skb.skb;
    // SAFETY: the program's own context.
    let cgroup = unsafe { bpf_skb_cgroup_id(skb) };
    if proto == UDP
        && let Some(policy) = guard::cgroup_policy(cgroup)
        && enforce(ctx, policy, direction, (sport, dport), (saddr_off, l4 + 8)) == DROP
    {
        return DROP;
    }
    // SAFETY: map lookup of a plain key.
    if unsafe { OPEN_CGROUPS.get(&cgroup) }.is_none() {
        return PASS;
    }
    let payload = if proto == UDP {
        l4 + 8
    } else {
        let Ok(off) = ctx.load::<u8>(l4 + 12) else {
            return PASS;
        };
        l4 + usize::from(off >> 4) * 4
    };
    let total = ctx.len() as usize;
    if payload >= total {
        // A bare TCP ACK/SYN: no DNS bytes.
        return PASS;
    }
    let orig_len = total - payload;
    // Bounded for the verifier: 1..=DNS_LEN.
    let len = if orig_len > DNS_LEN {
        DNS_LEN
    } else {
        orig_len
    };
    let Some(mut entry) = crate::common::EVENTS.reserve::<DnsRecord>(0) else {
        count_drop(kind::DNS);
        return PASS;
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: a reserved record, written in place; the packet bytes are read by the
    // checked helper.
    unsafe {
        let now = bpf_ktime_get_boot_ns();
        let header: *mut Header = rec.cast();
        (*header).kind = kind::DNS;
        (*header).reserved = 0;
        (*header).ktime_ns = now;
        // No task is named: on ingress the current task is whoever runs the softirq, and
        // cgroup_skb programs may not ask for it at all before 6.3 (no
        // bpf_get_current_pid_tgid there). The socket's cgroup is what names the agent.
        (*header).tgid = 0;
        (*header).tid = 0;
        (*header).uid = 0;
        (*header).gid = 0;
        (*header).cgroup_id = cgroup;
        (*header).comm = [0; 16];
        (*rec).direction = direction;
        (*rec).family = family;
        (*rec).protocol = u16::from(proto);
        (*rec).sport = sport;
        (*rec).dport = dport;
        (*rec).orig_len = orig_len as u32;
        (*rec).reserved = 0;
        (*rec).saddr = [0; 16];
        (*rec).daddr = [0; 16];
        let mut ok = bpf_skb_load_bytes(
            skb.cast(),
            saddr_off as u32,
            (*rec).saddr.as_mut_ptr().cast(),
            addr_len as u32,
        ) == 0;
        ok &= bpf_skb_load_bytes(
            skb.cast(),
            (saddr_off + addr_len) as u32,
            (*rec).daddr.as_mut_ptr().cast(),
            addr_len as u32,
        ) == 0;
        // The mask restates the bound for the verifier (len is 1..=DNS_LEN already).
        let n = (len as u32 - 1) & (DNS_LEN as u32 - 1);
        ok &= bpf_skb_load_bytes(
            skb.cast(),
            payload as u32,
            (*rec).payload.as_mut_ptr().cast(),
            n + 1,
        ) == 0;
        (*rec).len = if ok { n + 1 } else { 0 };
        entry.submit(wake_flags(now));
    }
    PASS
}
