//! DNS messages, as much as finding a name's addresses needs (RFC 1035, EDNS0 from RFC 6891):
//! a query for A or AAAA, and the addresses in an answer.
//!
//! Used when `load_balancer.dns_resolver` names a nameserver to ask directly; otherwise the
//! system's resolver answers (state/dns.rs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) const A: u16 = 1;
pub(crate) const AAAA: u16 = 28;
const OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// The UDP payload size drover says it accepts (EDNS0): a headless Service of a few hundred
/// pods fits without falling back to TCP.
pub(crate) const UDP_PAYLOAD: u16 = 4096;

/// A name that cannot be asked for, or an answer that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum DnsError {
    #[error("{0:?} is not a DNS name")]
    NotAName(String),
    #[error("answer too short")]
    TooShort,
    #[error("answer to another query")]
    OtherQuery,
    #[error("not an answer")]
    NotAnAnswer,
    #[error("name runs past the end")]
    NamePastEnd,
    #[error("bad label")]
    BadLabel,
}

/// A query for `name`'s records of type `qtype` (recursion desired, EDNS0 advertised).
pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(64 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // RD
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // one question, one additional (OPT)
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::NotAName(name.to_string()));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    // OPT pseudo-record: root name, type OPT, class = UDP payload size, no flags, no data.
    out.push(0);
    out.extend_from_slice(&OPT.to_be_bytes());
    out.extend_from_slice(&UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(out)
}

/// What an answer says.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    /// The name's addresses (none: the name exists without records of that type).
    Addresses(Vec<IpAddr>),
    /// NXDOMAIN: no such name (a headless Service with no endpoints may answer this).
    NoSuchName,
    /// Cut short: ask again over TCP.
    Truncated,
    /// The server failed (SERVFAIL, REFUSED ...): it says nothing about the name.
    Failed(String),
}

/// Reads the answer to query `id`: every A and AAAA record in its answer section (those of
/// a CNAME's target included, as recursive resolvers send them).
pub(crate) fn answer(id: u16, msg: &[u8]) -> Result<Answer, DnsError> {
    let u16_at = |i: usize| -> Result<u16, DnsError> {
        Ok(u16::from_be_bytes([*msg.get(i).ok_or(DnsError::TooShort)?, *msg.get(i + 1).ok_or(DnsError::TooShort)?]))
    };
    if u16_at(0)? != id {
        return Err(DnsError::OtherQuery);
    }
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotAnAnswer);
    }
    if flags & 0x0200 != 0 {
        return Ok(Answer::Truncated);
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Answer::NoSuchName),
        code => return Ok(Answer::Failed(format!("response code {code}"))),
    }
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    let mut found = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let (rtype, rdlength) = (u16_at(at)?, u16_at(at + 8)? as usize);
        let data = msg.get(at + 10..at + 10 + rdlength).ok_or(DnsError::TooShort)?;
        match (rtype, rdlength) {
            (A, 4) => found.push(IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3]))),
            (AAAA, 16) => {
                let octets: [u8; 16] = data.try_into().expect("16 bytes");
                found.push(IpAddr::V6(Ipv6Addr::from(octets)));
            }
            _ => {}
        }
        at += 10 + rdlength;
    }
    Ok(Answer::Addresses(found))
}

/// The offset just past a (possibly compressed) name starting at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, DnsError> {
    loop {
        let len = *msg.get(at).ok_or(DnsError::NamePastEnd)? as usize;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l if l & 0xc0 == 0 => at += 1 + l,
            _ => return Err(DnsError::BadLabel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as a nameserver writes it: the question echoed, records pointing at it.
    fn reply(id: u16, rcode: u8, truncated: bool, records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.push(0x81 | if truncated { 0x02 } else { 0 });
        m.push(0x80 | rcode);
        m.extend_from_slice(&[0, 1]);
        m.extend_from_slice(&(records.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(b"\x06ollama\x02ai\x00\x00\x01\x00\x01");
        for (rtype, data) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn a_query_is_well_formed() {
        let q = query(0xbeef, "ollama.ai.svc.cluster.local.", A).unwrap();
        assert_eq!(&q[..4], &[0xbe, 0xef, 0x01, 0x00]);
        assert_eq!(&q[12..19], b"\x06ollama");
        assert!(q.ends_with(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]), "{q:?}");
        assert!(query(1, "a..b", A).is_err());
    }

    #[test]
    fn addresses_are_read_and_other_records_skipped() {
        let cname: &[u8] = b"\x03foo\xc0\x0c";
        let msg = reply(7, 0, false, &[(5, cname), (A, &[10, 0, 0, 1]), (AAAA, &[0xfd; 16]), (A, &[10, 0, 0, 2])]);
        let Answer::Addresses(ips) = answer(7, &msg).unwrap() else { panic!() };
        assert_eq!(
            ips,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                IpAddr::V6(Ipv6Addr::from([0xfd; 16])),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(answer(7, &reply(7, 0, false, &[])).unwrap(), Answer::Addresses(vec![]));
    }

    #[test]
    fn codes_truncation_and_damage() {
        assert_eq!(answer(1, &reply(1, 3, false, &[])).unwrap(), Answer::NoSuchName);
        assert!(matches!(answer(1, &reply(1, 2, false, &[])).unwrap(), Answer::Failed(_)));
        assert_eq!(answer(1, &reply(1, 0, true, &[])).unwrap(), Answer::Truncated);
        assert!(answer(2, &reply(1, 0, false, &[])).is_err(), "another query's answer");
        let whole = reply(1, 0, false, &[(A, &[1, 2, 3, 4])]);
        for cut in 0..whole.len() {
            assert!(answer(1, &whole[..cut]).is_err(), "cut at {cut} is an error, not a panic");
        }
    }
}
