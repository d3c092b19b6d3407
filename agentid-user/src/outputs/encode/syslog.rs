//! RFC 5424 messages and their transport framing.
use std::{fmt::Write as _, time::SystemTime};

use super::rfc3339_micros;
use crate::detect::Severity;

/// Our private structured-data id (`name@PEN`).
pub const SD_ID: &str = "agentid@32473";

/// Default facility: local0.
pub const DEFAULT_FACILITY: u8 = 16;

const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const PROCID_MAX: usize = 128;
const MSGID_MAX: usize = 32;

/// Syslog severity (RFC 5424 §6.2.1) for an alert severity.
pub fn severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

/// A header field: printable US-ASCII only (33..=126), cut to `max`, `-` when empty.
pub fn header_field(s: &str, max: usize) -> String {
    let out: String = s.chars().filter(char::is_ascii_graphic).take(max).collect();
    if out.is_empty() { "-".to_owned() } else { out }
}

/// Escapes an SD-PARAM value: `"`, `\` and `]` get a backslash (RFC 5424 §6.3.3).
pub fn escape_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The parts of a message other than the payload.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    pub facility: u8,
    pub severity: u8,
    pub time: SystemTime,
    pub hostname: &'a str,
    pub app_name: &'a str,
    pub procid: &'a str,
    pub msgid: &'a str,
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`.
///
/// `params` become one SD element `[agentid@32473 k="v" ...]`; names must be valid
/// SD-NAMEs (the callers pass constants). The payload is written as is: callers pass
/// single-line encodings (compact JSON, CEF), so line-based receivers work too.
pub fn message(h: &Header<'_>, params: &[(&str, &str)], msg: &str) -> String {
    let pri = u16::from(h.facility.min(23)) * 8 + u16::from(h.severity.min(7));
    let mut out = format!(
        "<{pri}>1 {} {} {} {} {} ",
        rfc3339_micros(h.time),
        header_field(h.hostname, HOSTNAME_MAX),
        header_field(h.app_name, APP_NAME_MAX),
        header_field(h.procid, PROCID_MAX),
        header_field(h.msgid, MSGID_MAX),
    );
    if params.is_empty() {
        out.push('-');
    } else {
        out.push('[');
        out.push_str(SD_ID);
        for (k, v) in params {
            let _ = write!(out, " {k}=\"{}\"", escape_param(v));
        }
        out.push(']');
    }
    if !msg.is_empty() {
        out.push(' ');
        out.push_str(msg);
    }
    out
}

/// Octet-counting frame (RFC 6587 §3.4.1, RFC 5425 §4.3): `MSG-LEN SP SYSLOG-MSG`.
pub fn octet_counted(msg: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg);
    out
}
