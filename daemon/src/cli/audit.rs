//! `herald audit verify`: check the audit log's hash chain, in the store
//! (through the running daemon, or the store of a stopped one) or in a
//! JSON-lines export, which needs neither store nor config.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::source::Source;
use crate::audit_chain::{self, Break, Start, Verified};
use crate::control::VerifyView;

/// The exit code when the log is not what herald wrote (errors reading it exit 1).
pub const BROKEN: u8 = 2;

/// Verify the store's chain.
pub fn verify_store(source: &Source, head: Option<&str>) -> anyhow::Result<ExitCode> {
    if let Some(h) = head {
        audit_chain::parse_head(h).map_err(anyhow::Error::msg)?;
    }
    let VerifyView { verified, broken } = source.verify(head)?;
    report(verified, broken)
}

/// Verify an export made by `herald log --format json`: a whole log, or a
/// contiguous range after the record whose hash is `prev`.
pub fn verify_file(file: &Path, prev: Option<&str>, head: Option<&str>) -> anyhow::Result<ExitCode> {
    let head = head.map(audit_chain::parse_head).transpose().map_err(anyhow::Error::msg)?;
    let start = match prev {
        Some(p) => {
            let (_, hash) = audit_chain::parse_head(&format!("0:{p}"))
                .map_err(|_| anyhow::anyhow!("--prev `{p}` is not a record hash (64 hexadecimal digits)"))?;
            Start::After(hash)
        }
        None => Start::Beginning,
    };
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("opening the export {}", file.display()))?,
    );
    let lines = reader
        .split(b'\n')
        .filter(|l| l.as_ref().map_or(true, |l| !l.iter().all(u8::is_ascii_whitespace)))
        .map(|l| l.map(|bytes| (None, bytes)));
    let outcome = audit_chain::verify(lines, start.clone(), head)
        .with_context(|| format!("reading the export {}", file.display()))?;
    if let (Err(broken), Start::Beginning) = (&outcome, &start)
        && broken.seq == 1
        && broken.problem == "missing"
    {
        eprintln!("(a range of the log? give --prev HASH, the hash of the record before its first)");
    }
    match outcome {
        Ok(verified) => report(Some(verified), None),
        Err(broken) => report(None, Some(broken)),
    }
}

fn report(verified: Option<Verified>, broken: Option<Break>) -> anyhow::Result<ExitCode> {
    if let Some(b) = broken {
        eprintln!("herald: {b}");
        return Ok(ExitCode::from(BROKEN));
    }
    let v = verified.context("the daemon answered neither intact nor broken")?;
    match (&v.head, v.first) {
        (Some((last, hash)), Some(first)) => {
            println!("intact: {} record(s), seq {first}..{last}; head {last}:{hash}", v.records)
        }
        _ => println!("intact: {} record(s), none chained yet", v.records),
    }
    if v.legacy > 0 {
        println!("{} record(s) from before the chain are covered by the digest its first record carries", v.legacy);
    }
    if let Some((seq, hash)) = &v.anchored {
        println!("the log still extends the anchored head {seq}:{hash}");
    }
    Ok(ExitCode::SUCCESS)
}
