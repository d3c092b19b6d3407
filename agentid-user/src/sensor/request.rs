//! A TLS request record → [`Detail::Request`]: the request line (or HTTP/2 pseudo-headers)
//! parsed, query values dropped, and the header fields handed on as secret material for
//! the credential stage. Input is untrusted: any bytes give a result or `None`, never a
//! panic.
use std::collections::HashMap;

use agentid_ebpf::{
    H2_FIELDS, H2_NAME_AT, H2_NAME_LEN, H2_SLOT, H2_VALUE_AT, H2_VALUE_LEN, REQUEST_LEN,
    RequestRecord, request_source,
};
use zeroize::Zeroizing;

use crate::event::{Detail, SecretHeaders, TlsFn};

/// Connections with a request head still open: kept at most this many.
const PENDING_MAX: usize = 1024;

/// A request head that did not end with its write: what the next write on the connection
/// continues. The unfinished last line is secret material (it may be half a header).
#[derive(Debug)]
struct Pending {
    method: String,
    host: Option<String>,
    path: String,
    http_version: String,
    tail: Zeroizing<Vec<u8>>,
}

/// Request heads split across writes, by (process, connection).
#[derive(Debug, Default)]
pub struct Heads {
    pending: HashMap<(u32, u64), Pending>,
}

impl Heads {
    /// The request in `r` of process `tgid`, or `None` when it holds none (a capture that
    /// failed, garbage, or a continuation of a head that had already ended).
    pub fn detail(&mut self, tgid: u32, r: &RequestRecord) -> Option<Detail> {
        let continuation = r.source & request_source::CONTINUATION != 0;
        let source = r.source & !request_source::CONTINUATION;
        let tls_fn = match source {
            request_source::SSL_WRITE => TlsFn::SslWrite,
            request_source::SSL_WRITE_EX => TlsFn::SslWriteEx,
            request_source::NGHTTP2 => return Some(h2(&r.data, r.captured as usize)),
            _ => return None,
        };
        let n = (r.captured as usize).min(REQUEST_LEN);
        let data = r.data.get(..n)?;
        let key = (tgid, r.conn);
        // The whole write was captured: only then can the next write go on from its end.
        let whole = u64::from(r.captured) == r.total_len;
        if continuation {
            let pending = self.pending.remove(&key)?;
            let mut joined = Zeroizing::new(Vec::with_capacity(pending.tail.len() + data.len()));
            joined.extend_from_slice(&pending.tail);
            joined.extend_from_slice(data);
            let (fields, host, rest) = header_fields(&joined);
            let detail = Detail::Request {
                method: pending.method.clone(),
                host: pending.host.clone().or(host),
                path: pending.path.clone(),
                http_version: pending.http_version.clone(),
                tls_fn,
                credential_headers: Vec::new(),
                continued: true,
                headers: SecretHeaders::from_zeroizing(fields),
            };
            if let Some(tail) = rest.filter(|_| whole) {
                self.keep(
                    key,
                    Pending {
                        tail: Zeroizing::new(tail.to_vec()),
                        ..pending
                    },
                );
            }
            return Some(detail);
        }
        let (detail, rest) = http1_with_rest(data, tls_fn)?;
        self.pending.remove(&key);
        if let (Some(tail), true) = (rest, whole)
            && let Detail::Request {
                method,
                host,
                path,
                http_version,
                ..
            } = &detail
        {
            self.keep(
                key,
                Pending {
                    method: method.clone(),
                    host: host.clone(),
                    path: path.clone(),
                    http_version: http_version.clone(),
                    tail: Zeroizing::new(tail.to_vec()),
                },
            );
        }
        Some(detail)
    }

    fn keep(&mut self, key: (u32, u64), pending: Pending) {
        if self.pending.len() >= PENDING_MAX {
            self.pending.clear();
        }
        self.pending.insert(key, pending);
    }
}

/// The request in `r` on its own (no continuation across records).
pub fn detail(r: &RequestRecord) -> Option<Detail> {
    Heads::default().detail(0, r)
}

/// An HTTP/1.x request head: the request line, then header lines up to the blank line.
/// Only lines ended by a line feed inside the capture are kept.
pub fn http1(head: &[u8], tls_fn: TlsFn) -> Option<Detail> {
    http1_with_rest(head, tls_fn).map(|(d, _)| d)
}

/// Header lines up to the blank line: the `name: value` fields (secret), the first `Host`,
/// and — when the blank line was not reached — the unfinished last line (possibly empty).
fn header_fields(bytes: &[u8]) -> (Zeroizing<Vec<u8>>, Option<String>, Option<&[u8]>) {
    // Sized up front: a reallocation would leave an unwiped copy behind.
    let mut fields = Zeroizing::new(Vec::with_capacity(bytes.len()));
    let mut host = None;
    let mut rest = bytes;
    loop {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return (fields, host, Some(rest)); // cut by the write's end
        };
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return (fields, host, None); // end of the head: the body is never looked at
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"host") && host.is_none() {
            host = Some(host_name(value));
        }
        push_field(&mut fields, name, value);
    }
}

fn http1_with_rest(head: &[u8], tls_fn: TlsFn) -> Option<(Detail, Option<&[u8]>)> {
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    let first = lines.next()?;
    let line = first.strip_suffix(b"\n").unwrap_or(first);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next()?;
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let target = parts.next().unwrap_or_default();
    // The HTTP/2 connection preface, not a request (the kernel filters it too).
    if method == b"PRI" && target == b"*" {
        return None;
    }
    let version = parts
        .next()
        .and_then(|v| v.strip_prefix(b"HTTP/"))
        .map_or_else(String::new, |v| String::from_utf8_lossy(v).into_owned());
    // The request line itself must end inside the capture for fields to follow.
    let after = head.get(first.len()..).unwrap_or_default();
    let (fields, host, rest) = if first.ends_with(b"\n") {
        header_fields(after)
    } else {
        (Zeroizing::new(Vec::new()), None, None)
    };
    let detail = Detail::Request {
        method: String::from_utf8_lossy(method).into_owned(),
        host,
        path: path_without_query_values(target),
        http_version: version,
        tls_fn,
        credential_headers: Vec::new(),
        continued: false,
        headers: SecretHeaders::from_zeroizing(fields),
    };
    Some((detail, rest))
}

/// HTTP/2 header fields from nghttp2 slots: pseudo-headers give method, authority and
/// path; a value the kernel did not copy whole (longer than a slot) is left out.
fn h2(data: &[u8], captured: usize) -> Detail {
    let mut fields = Zeroizing::new(Vec::with_capacity(captured.min(H2_FIELDS) * H2_SLOT));
    let (mut method, mut host, mut path) = (String::new(), None, String::new());
    for slot in data.chunks_exact(H2_SLOT).take(captured.min(H2_FIELDS)) {
        let name_len = usize::from(slot[0]).min(H2_NAME_LEN);
        let value_len = usize::from(u16::from_le_bytes([slot[2], slot[3]]));
        let name = &slot[H2_NAME_AT..H2_NAME_AT + name_len];
        if value_len > H2_VALUE_LEN {
            continue;
        }
        let value = &slot[H2_VALUE_AT..H2_VALUE_AT + value_len];
        match name {
            b":method" => method = String::from_utf8_lossy(value).into_owned(),
            b":authority" => host = Some(host_name(value)),
            b":path" => path = path_without_query_values(value),
            _ if name.starts_with(b":") => {}
            _ => push_field(&mut fields, name, value),
        }
    }
    Detail::Request {
        method,
        host,
        path,
        http_version: "2".to_owned(),
        tls_fn: TlsFn::Nghttp2,
        credential_headers: Vec::new(),
        continued: false,
        headers: SecretHeaders::from_zeroizing(fields),
    }
}

/// Appends `name: value\0` without growing past the capacity reserved up front.
fn push_field(fields: &mut Zeroizing<Vec<u8>>, name: &[u8], value: &[u8]) {
    let need = name.len() + 2 + value.len() + 1;
    if fields.len() + need > fields.capacity() {
        return;
    }
    fields.extend_from_slice(name);
    fields.extend_from_slice(b": ");
    fields.extend_from_slice(value);
    fields.push(0);
}

/// A `Host`/`:authority` value without its port, lowercase (`[v6]` brackets kept).
fn host_name(value: &[u8]) -> String {
    let v = String::from_utf8_lossy(value.trim_ascii()).to_ascii_lowercase();
    if v.starts_with('[') {
        return v.split_inclusive(']').next().unwrap_or_default().to_owned();
    }
    match v.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_owned(),
        _ => v,
    }
}

/// The target with every query value removed (`/v1?key=SECRET&x=1` → `/v1?key=&x=`) and
/// any fragment dropped. Names stay: they say what was passed, not what.
pub fn path_without_query_values(target: &[u8]) -> String {
    let target = String::from_utf8_lossy(target);
    let target = target.split('#').next().unwrap_or_default();
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let names: Vec<String> = query
        .split('&')
        .map(|pair| format!("{}=", pair.split('=').next().unwrap_or_default()))
        .collect();
    format!("{path}?{}", names.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(d: &Detail) -> Vec<String> {
        let Detail::Request { headers, .. } = d else {
            panic!("not a request: {d:?}");
        };
        headers
            .entries()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect()
    }

    #[test]
    fn http1_head_parsed_body_and_cut_lines_ignored() {
        let head = b"POST /v1/chat?key=SECRET&beta=true HTTP/1.1\r\nHost: API.openai.com:443\r\n\
            Authorization: Bearer abc\r\nContent-Length: 9\r\n\r\nx-api-key: body-not-head\r\n";
        let d = http1(head, TlsFn::SslWriteEx).expect("request");
        let Detail::Request {
            method,
            host,
            path,
            http_version,
            ..
        } = &d
        else {
            panic!()
        };
        assert_eq!(method, "POST");
        assert_eq!(host.as_deref(), Some("api.openai.com"));
        assert_eq!(path, "/v1/chat?key=&beta=");
        assert_eq!(http_version, "1.1");
        assert_eq!(
            fields(&d),
            [
                "Host: API.openai.com:443",
                "Authorization: Bearer abc",
                "Content-Length: 9"
            ]
        );
        // The capture ended mid-line: that line is not a field.
        let cut = b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer sk-cut";
        assert_eq!(
            fields(&http1(cut, TlsFn::SslWrite).expect("request")),
            ["Host: h"]
        );
    }

    fn record(source: u32, conn: u64, data: &[u8], total: u64) -> Box<RequestRecord> {
        // SAFETY: all-zero bytes are a valid record (integers and byte arrays only).
        let mut r: Box<RequestRecord> = Box::new(unsafe { std::mem::zeroed() });
        r.source = source;
        r.conn = conn;
        r.captured = u32::try_from(data.len()).expect("short");
        r.total_len = total;
        r.data[..data.len()].copy_from_slice(data);
        r
    }

    #[test]
    fn a_head_split_across_writes_is_continued() {
        let mut heads = Heads::default();
        let first = b"GET /split HTTP/1.1\r\nHost: evil.example\r\nAuthori";
        let r = record(request_source::SSL_WRITE_EX, 9, first, first.len() as u64);
        assert_eq!(
            fields(&heads.detail(7, &r).expect("request")),
            ["Host: evil.example"]
        );
        let second = b"zation: Bearer tok\r\n\r\nbody";
        let c = request_source::SSL_WRITE_EX | request_source::CONTINUATION;
        let r = record(c, 9, second, second.len() as u64);
        let d = heads.detail(7, &r).expect("continued");
        assert_eq!(fields(&d), ["Authorization: Bearer tok"]);
        let Detail::Request {
            continued,
            host,
            path,
            ..
        } = &d
        else {
            panic!()
        };
        assert!(continued);
        assert_eq!(
            (host.as_deref(), path.as_str()),
            (Some("evil.example"), "/split")
        );
        // The head ended: a further write on the connection is not a head.
        assert!(heads.detail(7, &r).is_none());
        // Another connection's continuation never joins this one.
        let r = record(request_source::SSL_WRITE_EX, 9, first, first.len() as u64);
        heads.detail(7, &r);
        assert!(heads.detail(7, &record(c, 10, second, 30)).is_none());
    }

    #[test]
    fn not_a_request_line() {
        assert!(http1(b"hello world\r\n", TlsFn::SslWrite).is_none());
        assert!(http1(b"", TlsFn::SslWrite).is_none());
        assert!(http1(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", TlsFn::SslWrite).is_none());
    }

    #[test]
    fn h2_slots() {
        let mut data = vec![0u8; H2_FIELDS * H2_SLOT];
        let put = |data: &mut [u8], i: usize, name: &[u8], value: &[u8], real: usize| {
            let slot = &mut data[i * H2_SLOT..(i + 1) * H2_SLOT];
            slot[0] = u8::try_from(name.len()).expect("short");
            slot[2..4].copy_from_slice(&u16::try_from(real).expect("short").to_le_bytes());
            slot[H2_NAME_AT..H2_NAME_AT + name.len()].copy_from_slice(name);
            slot[H2_VALUE_AT..H2_VALUE_AT + value.len()].copy_from_slice(value);
        };
        put(&mut data, 0, b":method", b"GET", 3);
        put(&mut data, 1, b":authority", b"api.github.com", 14);
        put(&mut data, 2, b":path", b"/user?access_token=x", 20);
        put(&mut data, 3, b"authorization", b"token abc", 9);
        put(&mut data, 4, b"x-long", b"", 400);
        let d = h2(&data, 5);
        let Detail::Request {
            method, host, path, ..
        } = &d
        else {
            panic!()
        };
        assert_eq!(
            (method.as_str(), host.as_deref(), path.as_str()),
            ("GET", Some("api.github.com"), "/user?access_token=")
        );
        assert_eq!(fields(&d), ["authorization: token abc"]);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = http1(&bytes, TlsFn::SslWrite);
            let mut data = vec![0u8; H2_FIELDS * H2_SLOT];
            data[..bytes.len()].copy_from_slice(&bytes);
            let _ = h2(&data, 40);
        }
    }
}
