//! A TLS request record → [`Detail::Request`]: the request line (or HTTP/2 pseudo-headers)
//! parsed, query values dropped, and the header fields handed on as secret material for
//! the credential stage. Input is untrusted: any bytes give a result or `None`, never a
//! panic.
use agentid_ebpf::{
    H2_FIELDS, H2_NAME_AT, H2_NAME_LEN, H2_SLOT, H2_VALUE_AT, H2_VALUE_LEN, REQUEST_LEN,
    RequestRecord, request_source,
};
use zeroize::Zeroizing;

use crate::event::{Detail, SecretHeaders, TlsFn};

/// The request in `r`, or `None` when it is not one (a capture that failed, or garbage).
pub fn detail(r: &RequestRecord) -> Option<Detail> {
    match r.source {
        request_source::SSL_WRITE | request_source::SSL_WRITE_EX => {
            let n = (r.captured as usize).min(REQUEST_LEN);
            let tls_fn = if r.source == request_source::SSL_WRITE {
                TlsFn::SslWrite
            } else {
                TlsFn::SslWriteEx
            };
            http1(r.data.get(..n)?, tls_fn)
        }
        request_source::NGHTTP2 => Some(h2(&r.data, r.captured as usize)),
        _ => None,
    }
}

/// An HTTP/1.x request head: the request line, then header lines up to the blank line.
/// Only lines ended by a line feed inside the capture are kept.
pub fn http1(head: &[u8], tls_fn: TlsFn) -> Option<Detail> {
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    let first = lines.next()?;
    let first = first.strip_suffix(b"\n").unwrap_or(first);
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let mut parts = first.splitn(3, |&b| b == b' ');
    let method = parts.next()?;
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let target = parts.next().unwrap_or_default();
    let version = parts
        .next()
        .and_then(|v| v.strip_prefix(b"HTTP/"))
        .map_or_else(String::new, |v| String::from_utf8_lossy(v).into_owned());
    // Sized up front: a reallocation would leave an unwiped copy behind.
    let mut fields = Zeroizing::new(Vec::with_capacity(head.len()));
    let mut host = None;
    for line in lines {
        let Some(line) = line.strip_suffix(b"\n") else {
            break; // cut by the capture
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // end of the head: the body is never looked at
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
    Some(Detail::Request {
        method: String::from_utf8_lossy(method).into_owned(),
        host,
        path: path_without_query_values(target),
        http_version: version,
        tls_fn,
        credential_headers: Vec::new(),
        headers: SecretHeaders::from_zeroizing(fields),
    })
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
            ["Host: API.openai.com:443", "Authorization: Bearer abc", "Content-Length: 9"]
        );
        // The capture ended mid-line: that line is not a field.
        let cut = b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer sk-cut";
        assert_eq!(fields(&http1(cut, TlsFn::SslWrite).expect("request")), ["Host: h"]);
    }

    #[test]
    fn not_a_request_line() {
        assert!(http1(b"hello world\r\n", TlsFn::SslWrite).is_none());
        assert!(http1(b"", TlsFn::SslWrite).is_none());
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
        assert_eq!((method.as_str(), host.as_deref(), path.as_str()), (
            "GET",
            Some("api.github.com"),
            "/user?access_token="
        ));
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
