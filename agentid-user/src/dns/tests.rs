use std::{net::IpAddr, time::Duration};

use agentid_ebpf::{DNS_LEN, DnsRecord, Header, dns_dir, kind};
use simple_dns::{
    CLASS, Name, Packet, QCLASS, QTYPE, Question, ResourceRecord, TYPE,
    rdata::{A, CNAME, RData},
};

use super::{DnsOptions, Names};

const AGENT: u64 = 77;
const RESOLVER: [u8; 4] = [127, 0, 0, 53];
const CLIENT: [u8; 4] = [127, 0, 0, 1];
const SEC: u64 = 1_000_000_000;

fn record(
    direction: u32,
    cgroup: u64,
    now: u64,
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    msg: &[u8],
) -> DnsRecord {
    let mut r = DnsRecord {
        header: Header {
            kind: kind::DNS,
            reserved: 0,
            ktime_ns: now,
            tgid: 0,
            tid: 0,
            uid: 0,
            gid: 0,
            cgroup_id: cgroup,
            comm: [0; 16],
        },
        direction,
        family: 2,
        protocol: 17,
        sport: from.1,
        dport: to.1,
        len: u32::try_from(msg.len()).unwrap(),
        orig_len: u32::try_from(msg.len()).unwrap(),
        reserved: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        payload: [0; DNS_LEN],
    };
    r.saddr[..4].copy_from_slice(&from.0);
    r.daddr[..4].copy_from_slice(&to.0);
    r.payload[..msg.len()].copy_from_slice(msg);
    r
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut p = Packet::new_query(id);
    p.questions.push(Question::new(
        Name::new_unchecked(name),
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec().unwrap()
}

/// An answer to `name`: `cname` (owner, target) records, then `a` (owner, address, ttl).
fn answer(id: u16, name: &str, cnames: &[(&str, &str)], a: &[(&str, [u8; 4], u32)]) -> Vec<u8> {
    let mut p = Packet::new_reply(id);
    p.questions.push(Question::new(
        Name::new_unchecked(name),
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    for (owner, target) in cnames {
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked(owner),
            CLASS::IN,
            300,
            RData::CNAME(CNAME(Name::new_unchecked(target))),
        ));
    }
    for (owner, ip, ttl) in a {
        p.answers.push(ResourceRecord::new(
            Name::new_unchecked(owner),
            CLASS::IN,
            *ttl,
            RData::A(A {
                address: u32::from_be_bytes(*ip),
            }),
        ));
    }
    p.build_bytes_vec().unwrap()
}

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

fn ask_and_answer(n: &mut Names, id: u16, name: &str, reply: &[u8]) {
    n.record(&record(
        dns_dir::EGRESS,
        AGENT,
        SEC,
        (CLIENT, 40000),
        (RESOLVER, 53),
        &query(id, name),
    ));
    n.record(&record(
        dns_dir::INGRESS,
        AGENT,
        2 * SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        reply,
    ));
}

#[test]
fn an_answer_to_the_agents_query_names_its_addresses_for_that_agent_only() {
    let mut n = Names::new(DnsOptions::default());
    ask_and_answer(
        &mut n,
        7,
        "API.Example.test.",
        &answer(
            7,
            "api.example.test",
            &[],
            &[("api.example.test", [10, 0, 0, 5], 300)],
        ),
    );
    assert_eq!(
        n.names(AGENT, ip([10, 0, 0, 5]), 3 * SEC),
        ["api.example.test"]
    );
    // a v4-mapped v6 destination is the same address
    assert_eq!(
        n.names(AGENT, "::ffff:10.0.0.5".parse().unwrap(), 3 * SEC),
        ["api.example.test"]
    );
    assert!(n.names(AGENT + 1, ip([10, 0, 0, 5]), 3 * SEC).is_empty());
    assert!(n.names(AGENT, ip([10, 0, 0, 6]), 3 * SEC).is_empty());
    assert_eq!(n.stats().learned, 1);
}

#[test]
fn cname_chains_are_followed_and_the_asked_name_is_kept() {
    let mut n = Names::new(DnsOptions::default());
    ask_and_answer(
        &mut n,
        9,
        "www.example.test",
        &answer(
            9,
            "www.example.test",
            &[
                ("www.example.test", "edge.cdn.test"),
                ("edge.cdn.test", "e1.cdn.test"),
            ],
            &[
                ("e1.cdn.test", [10, 0, 0, 9], 60),
                ("unrelated.test", [10, 0, 0, 10], 60),
            ],
        ),
    );
    assert_eq!(
        n.names(AGENT, ip([10, 0, 0, 9]), 3 * SEC),
        ["www.example.test"]
    );
    // an address for a name outside the chain is not learned
    assert!(n.names(AGENT, ip([10, 0, 0, 10]), 3 * SEC).is_empty());
}

#[test]
fn names_are_held_for_ttl_or_min_hold_plus_grace() {
    let opts = DnsOptions {
        min_hold: Duration::from_mins(1),
        grace: Duration::from_secs(30),
    };
    let mut n = Names::new(opts);
    ask_and_answer(
        &mut n,
        1,
        "short.test",
        &answer(1, "short.test", &[], &[("short.test", [10, 0, 0, 1], 1)]),
    );
    ask_and_answer(
        &mut n,
        2,
        "long.test",
        &answer(2, "long.test", &[], &[("long.test", [10, 0, 0, 2], 600)]),
    );
    // answered at 2 s: short held 60 + 30 s, long 600 + 30 s
    assert_eq!(n.names(AGENT, ip([10, 0, 0, 1]), 91 * SEC), ["short.test"]);
    assert!(n.names(AGENT, ip([10, 0, 0, 1]), 93 * SEC).is_empty());
    assert_eq!(n.names(AGENT, ip([10, 0, 0, 2]), 631 * SEC), ["long.test"]);
    assert!(n.names(AGENT, ip([10, 0, 0, 2]), 633 * SEC).is_empty());
}

#[test]
fn forged_answers_teach_nothing() {
    let good = |id| {
        answer(
            id,
            "allowed.test",
            &[],
            &[("allowed.test", [10, 0, 0, 66], 300)],
        )
    };
    let mut n = Names::new(DnsOptions::default());
    // no query at all
    n.record(&record(
        dns_dir::INGRESS,
        AGENT,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        &good(5),
    ));
    // a query, but the answer has another transaction id / port / resolver / question
    n.record(&record(
        dns_dir::EGRESS,
        AGENT,
        SEC,
        (CLIENT, 40000),
        (RESOLVER, 53),
        &query(5, "allowed.test"),
    ));
    n.record(&record(
        dns_dir::INGRESS,
        AGENT,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        &good(6),
    ));
    n.record(&record(
        dns_dir::INGRESS,
        AGENT,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40001),
        &good(5),
    ));
    n.record(&record(
        dns_dir::INGRESS,
        AGENT,
        SEC,
        ([127, 0, 0, 99], 53),
        (CLIENT, 40000),
        &good(5),
    ));
    n.record(&record(
        dns_dir::INGRESS,
        AGENT + 1,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        &good(5),
    ));
    let other = answer(5, "other.test", &[], &[("other.test", [10, 0, 0, 66], 300)]);
    n.record(&record(
        dns_dir::INGRESS,
        AGENT,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        &other,
    ));
    assert!(n.names(AGENT, ip([10, 0, 0, 66]), 2 * SEC).is_empty());
    // the agent serving its own query from port 53
    let mut n = Names::new(DnsOptions::default());
    n.record(&record(
        dns_dir::EGRESS,
        AGENT,
        SEC,
        (CLIENT, 40000),
        (RESOLVER, 53),
        &query(5, "allowed.test"),
    ));
    n.record(&record(
        dns_dir::EGRESS,
        AGENT,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        &good(5),
    ));
    n.record(&record(
        dns_dir::INGRESS,
        AGENT,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        &good(5),
    ));
    assert!(n.names(AGENT, ip([10, 0, 0, 66]), 2 * SEC).is_empty());
    assert_eq!(n.stats().unmatched, 1);
}

#[test]
fn garbage_and_cut_messages_are_counted_not_fatal() {
    let mut n = Names::new(DnsOptions::default());
    n.record(&record(
        dns_dir::INGRESS,
        AGENT,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        &[0xff; 40],
    ));
    let full = answer(3, "x.test", &[], &[("x.test", [10, 0, 0, 3], 300)]);
    n.record(&record(
        dns_dir::EGRESS,
        AGENT,
        SEC,
        (CLIENT, 40000),
        (RESOLVER, 53),
        &query(3, "x.test"),
    ));
    n.record(&record(
        dns_dir::INGRESS,
        AGENT,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        &full[..full.len() - 3],
    ));
    assert_eq!(n.stats().unparsed, 2);
    assert!(n.names(AGENT, ip([10, 0, 0, 3]), 2 * SEC).is_empty());
}

#[test]
fn tcp_answers_in_one_segment_are_read_past_their_length_prefix() {
    let tcp = |msg: &[u8]| {
        let mut framed = u16::try_from(msg.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(msg);
        framed
    };
    let mut n = Names::new(DnsOptions::default());
    let mut q = record(
        dns_dir::EGRESS,
        AGENT,
        SEC,
        (CLIENT, 40000),
        (RESOLVER, 53),
        &tcp(&query(4, "tcp.test")),
    );
    q.protocol = 6;
    n.record(&q);
    let reply = answer(4, "tcp.test", &[], &[("tcp.test", [10, 0, 0, 4], 300)]);
    let mut a = record(
        dns_dir::INGRESS,
        AGENT,
        SEC,
        (RESOLVER, 53),
        (CLIENT, 40000),
        &tcp(&reply),
    );
    a.protocol = 6;
    n.record(&a);
    assert_eq!(n.names(AGENT, ip([10, 0, 0, 4]), 2 * SEC), ["tcp.test"]);
}
