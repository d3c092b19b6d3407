//! `agentid rules`: the detection catalogue, from the rules themselves (no daemon needed).
use std::io::{self, Write as _};

use crate::detect::rules::CATALOGUE;

pub fn run(json: bool) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &CATALOGUE)?;
        writeln!(out)?;
        return Ok(out.flush()?);
    }
    writeln!(
        out,
        "{:<22} {:<8} {:<48} DESCRIPTION",
        "RULE", "SEVERITY", "TAGS"
    )?;
    for rule in CATALOGUE {
        writeln!(
            out,
            "{:<22} {:<8} {:<48} {}",
            rule.id,
            rule.severity.as_str(),
            rule.tag_line(),
            rule.description
        )?;
    }
    Ok(out.flush()?)
}
