//! The canonical text written straight from an event equals the `Value` path's
//! (`canonical(&to_value(x))`), for every kind of event and alert and hostile strings; and
//! the store's split by member spans equals the split of the value.
use std::{collections::BTreeMap, collections::HashMap, sync::Arc};

use proptest::prelude::*;
use serde::Serialize;
use serde_json::Value;

use super::{canonical, sample_connect, sample_event};
use crate::{
    attribution::{AttributedEvent, ProcIdentity},
    detect::Alert,
    event::{Detail, EventKind, FileId, Protocol, ScanIncomplete, SocketFamily, TlsFn},
    outputs::fanout::{EventJson, epoch_ns},
};

fn via_value<T: Serialize>(x: &T) -> String {
    canonical(&serde_json::to_value(x).unwrap())
}

fn direct<T: Serialize>(x: &T) -> String {
    let mut out = Vec::new();
    super::write_direct(x, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// The daemon's encoding of `e` equals the `Value` path's, and so does the store's split.
fn check_event(e: &AttributedEvent) {
    let json = EventJson::new(e).unwrap();
    let value = serde_json::to_value(e).unwrap();
    assert_eq!(*json.text, canonical(&value));
    let (ts, kind, pid) = (epoch_ns(e.event.time), e.event.kind.as_str(), e.event.pid);
    let by_spans = crate::store::split_members(&json.text, &json.members, ts, kind, pid).unwrap();
    let by_value = crate::store::split_value(&value, ts, kind, pid).unwrap();
    assert_eq!(by_spans.context, by_value.context);
    assert_eq!(by_spans.row, by_value.row);
}

/// One event of `kind` (nine shapes), its strings taken from `words`.
fn event_of(kind: usize, words: &[String; 4], n: u32) -> AttributedEvent {
    let mut ev = sample_event("research-bot", n);
    ev.event.comm.clone_from(&words[0]);
    let even = n.is_multiple_of(2);
    match kind % 9 {
        0 => {
            ev.event.detail = Detail::Exec {
                filename: words[1].clone(),
                argv: words.to_vec(),
                argv_truncated: even,
                argv_missing: n.is_multiple_of(3),
                loginuid: (!even).then_some(n),
                env: crate::event::SecretEnv::default(),
                scan_incomplete: n
                    .is_multiple_of(4)
                    .then_some(ScanIncomplete::ARGV_BEYOND_CAP),
            };
        }
        1 => {
            ev = sample_connect("research-bot", n);
            if let Detail::Sock { dst_names, .. } = &mut ev.event.detail {
                *dst_names = words[1..3].to_vec();
            }
        }
        2 => {
            ev.event.kind = EventKind::Send;
            ev.event.detail = Detail::Sock {
                dst_ip: std::net::IpAddr::from([
                    0xfd00,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    n.to_be_bytes()[3].into(),
                ]),
                dst_port: 53,
                protocol: Protocol::Other(1),
                dst_names: vec![words[3].clone()],
            };
        }
        3 => {
            ev.event.kind = EventKind::Request;
            ev.event.detail = Detail::Request {
                method: words[0].clone(),
                host: even.then(|| words[1].clone()),
                path: words[2].clone(),
                http_version: "2".into(),
                tls_fn: TlsFn::Nghttp2,
                credential_headers: vec![words[3].clone()],
                continued: n.is_multiple_of(3),
                headers: crate::event::SecretEnv::default(),
            };
        }
        4 => {
            ev.event.kind = EventKind::Exit;
            ev.event.detail = Detail::Exit {
                exit_code: even.then_some(-1),
                signal: (!even).then_some(9),
            };
        }
        other => other_kinds(&mut ev, other % 9, words, n),
    }
    ev
}

/// [`event_of`] for fork, open, socket, and an unregistered, ambiguous, escaped process.
fn other_kinds(ev: &mut AttributedEvent, kind: usize, words: &[String; 4], n: u32) {
    match kind {
        5 => {
            ev.event.kind = EventKind::Fork;
            ev.event.ppid = None;
            ev.event.detail = Detail::Fork {};
        }
        6 => {
            ev.event.kind = EventKind::Open;
            ev.event.detail = Detail::Open {
                path: words[1].clone(),
                open_flags: n,
                inode: n.is_multiple_of(2).then_some(FileId {
                    dev: 8,
                    ino: u64::MAX,
                }),
            };
        }
        7 => {
            ev.event.kind = EventKind::Socket;
            ev.event.blocked = true;
            ev.event.detail = Detail::Socket {
                family: if n.is_multiple_of(2) {
                    SocketFamily::Packet
                } else {
                    SocketFamily::Other(n)
                },
                sock_type: 3,
                protocol: 768,
            };
        }
        _ => {
            // Every optional part of the identity.
            ev.event.cgroup = None;
            ev.identity = Arc::new(ProcIdentity {
                agent: None,
                ambiguous: words[..2].to_vec(),
                session: None,
                acting_for: vec![words[2].clone()],
                escaped_to: Some(words[3].clone()),
                ..(*ev.identity).clone()
            });
        }
    }
}

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[\"\\\\\u{0}-\u{1f}\u{7f} a-zé日\u{2028}]{0,24}",
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_event_kind_encodes_as_the_value_path_does(
        kind in 0usize..9, a in hostile(), b in hostile(), c in hostile(), d in hostile(),
        n in any::<u32>(),
    ) {
        check_event(&event_of(kind, &[a, b, c, d], n));
    }

    #[test]
    fn alerts_encode_as_the_value_path_does(title in hostile(), arg in hostile(), id in hostile()) {
        let mut a = Alert::sample();
        a.title = title;
        a.uid = id;
        a.evidence.processes[0].argv.push(arg);
        prop_assert_eq!(direct(&a), via_value(&a));
    }
}

#[test]
fn every_kind_with_plain_strings() {
    let s = [
        "python3".to_owned(),
        "/usr/bin/x".to_owned(),
        "-c".to_owned(),
        "api.example.org".to_owned(),
    ];
    for kind in 0..9 {
        check_event(&event_of(kind, &s, 7));
    }
}

/// What events do not use today but a field added tomorrow might: unsorted and repeated
/// keys (flatten), maps with number keys, floats, bytes, every kind of enum variant.
#[test]
fn every_serde_shape_encodes_as_the_value_path_does() {
    #[derive(Serialize)]
    enum Variant {
        Unit,
        Newtype(u8),
        Tuple(i8, String),
        Struct { z: u8, a: Option<String> },
    }
    #[derive(Serialize)]
    struct Inner {
        zeta: f32,
        alpha: f64,
        dup: &'static str,
    }
    #[derive(Serialize)]
    struct Outer {
        z: (),
        #[serde(flatten)]
        inner: Inner,
        dup: u8,
        m: Value,
        #[serde(with = "serde_bytes_like")]
        bytes: Vec<u8>,
        variants: Vec<Variant>,
        by_number: BTreeMap<i64, bool>,
        by_word: HashMap<String, Option<u64>>,
        chars: (char, char),
        big: (u64, i64, i128, u128),
        nan: f64,
    }
    mod serde_bytes_like {
        pub(super) fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b)
        }
    }
    let x = Outer {
        z: (),
        inner: Inner {
            zeta: 0.1,
            alpha: -1.5e300,
            dup: "first",
        },
        dup: 2,
        m: serde_json::json!({"b": [1, 2.5, null], "a": {"y": true, "x": "\u{1}"}}),
        bytes: vec![0, 255, 10],
        variants: vec![
            Variant::Unit,
            Variant::Newtype(3),
            Variant::Tuple(-1, "t".into()),
            Variant::Struct { z: 1, a: None },
        ],
        by_number: [(-3, true), (10, false), (2, true)].into(),
        by_word: [
            ("é".to_owned(), Some(1)),
            ("\"q".to_owned(), None),
            ("a".to_owned(), Some(u64::MAX)),
        ]
        .into(),
        chars: ('"', '日'),
        big: (u64::MAX, i64::MIN, -5, 7),
        nan: f64::NAN,
    };
    assert_eq!(direct(&x), via_value(&x));
    assert_eq!(direct(&serde_json::json!([])), "[]");
    assert_eq!(direct(&serde_json::json!({})), "{}");
}
