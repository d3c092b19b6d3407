//! Names learned from the agents' own DNS: which addresses each name had for the cgroup
//! that asked, so a connect to an address can say which names the agent meant.
//!
//! The kernel copies the DNS messages that sockets of watched cgroups send and receive
//! ([`agentid_ebpf::DnsRecord`]). An answer teaches an address only when it answers a
//! query the same cgroup sent: same transaction id, question (name and type), resolver
//! address and port, and the client port the query left from. An agent therefore cannot
//! teach agentid an address by sending itself a packet: the forged answer matches no
//! query of its own, or, if it runs the "resolver" itself, the answer leaves one of its
//! own sockets from port 53 and is recognised as self-served.
//!
//! Records arrive in ring-buffer order, so an answer is learned before the connect that
//! follows it is decoded. Names are kept for the answer's TTL, at least `min_hold`, plus
//! `grace` (clients cache answers a little longer than told).
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use agentid_ebpf::{DnsRecord, dns_dir};
use simple_dns::{Packet, PacketFlag, rdata::RData};

/// How long learned names are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsOptions {
    /// Minimum time a learned name is kept, whatever the TTL (short TTLs are common).
    pub min_hold: Duration,
    /// Kept this much past the TTL (or `min_hold`).
    pub grace: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            min_hold: Duration::from_mins(1),
            grace: Duration::from_secs(30),
        }
    }
}

/// A query still waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QueryKey {
    cgroup: u64,
    txid: u16,
    client_port: u16,
    resolver: IpAddr,
    resolver_port: u16,
}

#[derive(Debug, Clone)]
struct Pending {
    qname: String,
    qtype: u16,
    sent_ns: u64,
}

/// An unanswered query is forgotten after this long (resolvers give up long before).
const PENDING_NS: u64 = 30_000_000_000;
/// Bounds, so an agent flooding queries cannot grow the daemon without limit.
const MAX_PENDING: usize = 16_384;
const MAX_ADDRS_PER_CGROUP: usize = 8_192;
/// CNAME hops followed from the question name.
const MAX_CNAME_HOPS: usize = 16;

/// What happened to DNS records, for `status` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    pub queries: u64,
    pub answers: u64,
    /// Answers that matched no query of the cgroup (or were self-served): ignored.
    pub unmatched: u64,
    pub unparsed: u64,
    pub learned: u64,
}

/// Per-cgroup name tables.
#[derive(Debug, Default)]
pub struct Names {
    opts: DnsOptions,
    pending: HashMap<QueryKey, Pending>,
    /// Answers a watched socket itself sent from port 53, by the key their receiver
    /// would look up: a cgroup serving DNS to itself teaches nothing.
    served: HashSet<QueryKey>,
    /// cgroup → address → (name → expiry, boot-clock ns).
    table: HashMap<u64, HashMap<IpAddr, HashMap<String, u64>>>,
    stats: DnsStats,
}

impl Names {
    pub fn new(opts: DnsOptions) -> Self {
        Self {
            opts,
            ..Self::default()
        }
    }

    pub fn stats(&self) -> DnsStats {
        self.stats
    }

    /// Takes one kernel DNS record.
    pub fn record(&mut self, r: &DnsRecord) {
        let len = (r.len as usize).min(r.payload.len());
        let mut msg = &r.payload[..len];
        if r.protocol == 6 {
            // DNS over TCP: a 2-byte length prefix, then the message.
            let Some(rest) = msg.get(2..) else { return };
            msg = rest;
        }
        let (Some(src), Some(dst)) = (addr(r.family, &r.saddr), addr(r.family, &r.daddr)) else {
            return;
        };
        let Ok(packet) = Packet::parse(msg) else {
            self.stats.unparsed += 1;
            return;
        };
        let response = packet.has_flags(PacketFlag::RESPONSE);
        let cgroup = r.header.cgroup_id;
        let now = r.header.ktime_ns;
        match (r.direction, response) {
            // A query the cgroup sends to a resolver.
            (dns_dir::EGRESS, false) if r.dport == 53 => {
                let Some(q) = packet.questions.first() else {
                    return;
                };
                self.stats.queries += 1;
                if self.pending.len() >= MAX_PENDING {
                    self.pending
                        .retain(|_, p| now.saturating_sub(p.sent_ns) < PENDING_NS);
                    if self.pending.len() >= MAX_PENDING {
                        return;
                    }
                }
                self.pending.insert(
                    QueryKey {
                        cgroup,
                        txid: packet.id(),
                        client_port: r.sport,
                        resolver: dst,
                        resolver_port: r.dport,
                    },
                    Pending {
                        qname: normalise(&q.qname.to_string()),
                        qtype: u16::from(q.qtype),
                        sent_ns: now,
                    },
                );
            }
            // An answer a watched socket serves from port 53: remember it so that, when
            // it reaches a watched socket, it is not taken for a resolver's.
            (dns_dir::EGRESS, true) if r.sport == 53 => {
                if self.served.len() >= MAX_PENDING {
                    self.served.clear();
                }
                self.served.insert(QueryKey {
                    cgroup: 0,
                    txid: packet.id(),
                    client_port: r.dport,
                    resolver: src,
                    resolver_port: r.sport,
                });
            }
            (dns_dir::INGRESS, true) if r.sport == 53 => {
                self.stats.answers += 1;
                let key = QueryKey {
                    cgroup,
                    txid: packet.id(),
                    client_port: r.dport,
                    resolver: src,
                    resolver_port: r.sport,
                };
                let served = self.served.remove(&QueryKey {
                    cgroup: 0,
                    ..key.clone()
                });
                let Some(query) = self.pending.remove(&key) else {
                    self.stats.unmatched += 1;
                    return;
                };
                let same_question = packet.questions.first().is_some_and(|q| {
                    normalise(&q.qname.to_string()) == query.qname
                        && u16::from(q.qtype) == query.qtype
                });
                if served || !same_question {
                    self.stats.unmatched += 1;
                    return;
                }
                self.learn(cgroup, now, &query.qname, &packet);
            }
            _ => {}
        }
    }

    /// The addresses the answer gives for `qname` (through its CNAME chain), each under
    /// `qname`: the name the agent asked for is the name it meant.
    fn learn(&mut self, cgroup: u64, now: u64, qname: &str, packet: &Packet<'_>) {
        let mut chain = vec![qname.to_owned()];
        for _ in 0..MAX_CNAME_HOPS {
            let Some(last) = chain.last() else { break };
            let next = packet.answers.iter().find_map(|rr| match &rr.rdata {
                RData::CNAME(target) if normalise(&rr.name.to_string()) == *last => {
                    Some(normalise(&target.0.to_string()))
                }
                _ => None,
            });
            match next {
                Some(n) if !chain.contains(&n) => chain.push(n),
                _ => break,
            }
        }
        let Self {
            opts, table, stats, ..
        } = self;
        let addrs = table.entry(cgroup).or_default();
        for rr in &packet.answers {
            let ip = match &rr.rdata {
                RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
                RData::AAAA(a) => IpAddr::V6(Ipv6Addr::from(a.address)),
                _ => continue,
            };
            if !chain.contains(&normalise(&rr.name.to_string())) {
                continue;
            }
            let hold = Duration::from_secs(u64::from(rr.ttl)).max(opts.min_hold) + opts.grace;
            let expires = now.saturating_add(u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX));
            if addrs.len() >= MAX_ADDRS_PER_CGROUP && !addrs.contains_key(&ip) {
                addrs.retain(|_, names| {
                    names.retain(|_, e| *e > now);
                    !names.is_empty()
                });
                if addrs.len() >= MAX_ADDRS_PER_CGROUP {
                    continue;
                }
            }
            let e = addrs
                .entry(ip)
                .or_default()
                .entry(qname.to_owned())
                .or_default();
            *e = (*e).max(expires);
            stats.learned += 1;
        }
    }

    /// The names `cgroup` resolved to `ip` that are still held at `now` (boot-clock ns),
    /// sorted.
    pub fn names(&self, cgroup: u64, ip: IpAddr, now: u64) -> Vec<String> {
        let ip = ip.to_canonical();
        let mut out: Vec<String> = self
            .table
            .get(&cgroup)
            .and_then(|a| a.get(&ip))
            .into_iter()
            .flatten()
            .filter(|(_, e)| **e > now)
            .map(|(n, _)| n.clone())
            .collect();
        out.sort_unstable();
        out
    }
}

/// Lowercase, no trailing dot.
fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn addr(family: u16, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        2 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        10 => Some(IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
