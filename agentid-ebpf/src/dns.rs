//! The DNS that agents do: UDP datagrams and the first TCP segment bytes from or to port
//! 53 of sockets in watched cgroups, copied (at most [`DNS_LEN`] bytes) for userspace to
//! learn which addresses each name had for that agent. `cgroup_skb` programs at the cgroup
//! v2 root see every packet of every socket, so the port and cgroup checks come first;
//! they always let the packet through.
use agentid_ebpf::{DNS_LEN, DnsRecord, Header, dns_dir, kind};
use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::{
    common::{count_drop, wake_flags},
    files::OPEN_CGROUPS,
};

/// Return value that lets the packet through.
const PASS: i32 = 1;
const DNS_PORT: u16 = 53;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP: u8 = 6;
const UDP: u8 = 17;

#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    dns(&ctx, dns_dir::EGRESS);
    PASS
}

#[cgroup_skb(ingress)]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    dns(&ctx, dns_dir::INGRESS);
    PASS
}

#[inline(always)]
fn dns(ctx: &SkBuffContext, direction: u32) {
    // The packet starts at the IP header.
    let Ok(b0) = ctx.load::<u8>(0) else { return };
    let (family, proto, l4, saddr_off, addr_len) = match b0 >> 4 {
        4 => {
            let Ok(p) = ctx.load::<u8>(9) else { return };
            // A later fragment carries no port: only whole datagrams and first fragments.
            let Ok(frag) = ctx.load::<u16>(6) else { return };
            if u16::from_be(frag) & 0x1fff != 0 {
                return;
            }
            (AF_INET, p, usize::from(b0 & 0xf) * 4, 12usize, 4usize)
        }
        // Extension headers are not walked: DNS packets do not carry them.
        6 => {
            let Ok(p) = ctx.load::<u8>(6) else { return };
            (AF_INET6, p, 40, 8, 16)
        }
        _ => return,
    };
    if proto != UDP && proto != TCP {
        return;
    }
    let Ok(sport) = ctx.load::<u16>(l4) else {
        return;
    };
    let Ok(dport) = ctx.load::<u16>(l4 + 2) else {
        return;
    };
    let (sport, dport) = (u16::from_be(sport), u16::from_be(dport));
    if sport != DNS_PORT && dport != DNS_PORT {
        return;
    }
    let skb = ctx.skb.skb;
    // SAFETY: the program's own context.
    let cgroup = unsafe { bpf_skb_cgroup_id(skb) };
    // SAFETY: map lookup of a plain key.
    if unsafe { OPEN_CGROUPS.get(&cgroup) }.is_none() {
        return;
    }
    let payload = if proto == UDP {
        l4 + 8
    } else {
        let Ok(off) = ctx.load::<u8>(l4 + 12) else {
            return;
        };
        l4 + usize::from(off >> 4) * 4
    };
    let total = ctx.len() as usize;
    if payload >= total {
        // A bare TCP ACK/SYN: no DNS bytes.
        return;
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
        return;
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
}
