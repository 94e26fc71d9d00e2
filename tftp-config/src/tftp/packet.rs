//! TFTP packets (RFC 1350 §5, OACK from RFC 2347): parsing and building, no I/O.

use std::fmt;

/// Longest request we accept (RFC 2347: "the maximum size of a request packet is 512 octets";
/// some clients go a little over, so allow a margin but stay bounded).
pub const MAX_REQUEST: usize = 1024;
/// At most this many options are read from one request; the rest are ignored.
const MAX_OPTIONS: usize = 16;

/// TFTP error codes (RFC 1350 appendix, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// 0: not defined, see message.
    NotDefined = 0,
    /// 1: file not found.
    FileNotFound = 1,
    /// 2: access violation.
    AccessViolation = 2,
    /// 3: disk full or allocation exceeded.
    DiskFull = 3,
    /// 4: illegal TFTP operation.
    IllegalOperation = 4,
    /// 5: unknown transfer ID.
    UnknownTransferId = 5,
    /// 6: file already exists.
    FileExists = 6,
    /// 7: no such user.
    NoSuchUser = 7,
    /// 8: terminate transfer due to option negotiation (RFC 2347).
    OptionNegotiation = 8,
}

/// Opcodes (RFC 1350 §5, RFC 2347).
const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The file name as sent.
    pub filename: &'a str,
    /// The transfer mode as sent (`octet`, `netascii`, `mail`; case-insensitive).
    pub mode: &'a str,
    /// Option name/value pairs in the order sent (RFC 2347).
    pub options: Vec<(&'a str, &'a str)>,
}

/// A parsed TFTP packet borrowing from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Read(Request<'a>),
    /// Write request.
    Write(Request<'a>),
    /// A data block.
    Data {
        /// Block number.
        block: u16,
        /// Payload.
        data: &'a [u8],
    },
    /// Acknowledgement of a block.
    Ack(u16),
    /// An error.
    Error {
        /// Error code (kept raw: peers send codes we do not know).
        code: u16,
        /// Message, lossily decoded.
        message: String,
    },
    /// Option acknowledgement.
    OptionAck(Vec<(&'a str, &'a str)>),
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than its fixed fields.
    #[error("truncated packet")]
    Truncated,
    /// An opcode outside 1–6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field without its terminating NUL, or not UTF-8.
    #[error("malformed string field")]
    BadString,
    /// A request longer than we read.
    #[error("request too long")]
    TooLong,
}

/// Parses one datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, PacketError> {
    let (op, rest) = split_u16(buf)?;
    match op {
        RRQ | WRQ => {
            if buf.len() > MAX_REQUEST {
                return Err(PacketError::TooLong);
            }
            let req = parse_request(rest)?;
            Ok(if op == RRQ {
                Packet::Read(req)
            } else {
                Packet::Write(req)
            })
        }
        DATA => {
            let (block, data) = split_u16(rest)?;
            Ok(Packet::Data { block, data })
        }
        ACK => {
            let (block, _) = split_u16(rest)?;
            Ok(Packet::Ack(block))
        }
        ERROR => {
            let (code, rest) = split_u16(rest)?;
            // Be lenient with a peer's courtesy message: a missing NUL or odd bytes do not matter.
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let message = String::from_utf8_lossy(&rest[..end.min(512)]).into_owned();
            Ok(Packet::Error { code, message })
        }
        OACK => Ok(Packet::OptionAck(parse_pairs(rest)?)),
        other => Err(PacketError::UnknownOpcode(other)),
    }
}

fn split_u16(buf: &[u8]) -> Result<(u16, &[u8]), PacketError> {
    match buf {
        [a, b, rest @ ..] => Ok((u16::from_be_bytes([*a, *b]), rest)),
        _ => Err(PacketError::Truncated),
    }
}

fn take_str(buf: &[u8]) -> Result<(&str, &[u8]), PacketError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(PacketError::BadString)?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| PacketError::BadString)?;
    Ok((s, &buf[end + 1..]))
}

fn parse_request(buf: &[u8]) -> Result<Request<'_>, PacketError> {
    let (filename, rest) = take_str(buf)?;
    let (mode, rest) = take_str(rest)?;
    Ok(Request {
        filename,
        mode,
        options: parse_pairs(rest)?,
    })
}

fn parse_pairs(mut buf: &[u8]) -> Result<Vec<(&str, &str)>, PacketError> {
    let mut pairs = Vec::new();
    // Some clients pad requests with NULs; an empty name ends the list.
    while !buf.is_empty() && buf[0] != 0 && pairs.len() < MAX_OPTIONS {
        let (name, rest) = take_str(buf)?;
        let (value, rest) = take_str(rest)?;
        pairs.push((name, value));
        buf = rest;
    }
    Ok(pairs)
}

/// Writes a DATA packet into `out` (cleared first).
pub fn write_data(out: &mut Vec<u8>, block: u16, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(&DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An ACK packet.
pub fn ack(block: u16) -> Vec<u8> {
    let mut out = ACK.to_be_bytes().to_vec();
    out.extend_from_slice(&block.to_be_bytes());
    out
}

/// An ERROR packet.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = ERROR.to_be_bytes().to_vec();
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
    out
}

/// An OACK packet listing the accepted options.
pub fn oack<N: AsRef<str>, V: AsRef<str>>(options: &[(N, V)]) -> Vec<u8> {
    let mut out = OACK.to_be_bytes().to_vec();
    for (n, v) in options {
        out.extend_from_slice(n.as_ref().as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// A read request, for clients and tests.
pub fn read_request(filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = RRQ.to_be_bytes().to_vec();
    for s in [filename, mode] {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    for (n, v) in options {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", *self as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_options() {
        let raw = read_request(
            "SEP001122334455.cnf.xml",
            "OcTeT",
            &[("blksize", "1428"), ("tsize", "0")],
        );
        assert_eq!(
            parse(&raw).unwrap(),
            Packet::Read(Request {
                filename: "SEP001122334455.cnf.xml",
                mode: "OcTeT",
                options: vec![("blksize", "1428"), ("tsize", "0")],
            })
        );
        let mut wrq = raw.clone();
        wrq[1] = 2;
        assert!(matches!(parse(&wrq).unwrap(), Packet::Write(_)));
        // Trailing NUL padding is tolerated.
        let mut padded = read_request("f", "octet", &[]);
        padded.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            parse(&padded).unwrap(),
            Packet::Read(Request {
                filename: "f",
                mode: "octet",
                options: vec![]
            })
        );
    }

    #[test]
    fn malformed_datagrams_are_errors_not_panics() {
        assert_eq!(parse(&[]), Err(PacketError::Truncated));
        assert_eq!(parse(&[0]), Err(PacketError::Truncated));
        assert_eq!(parse(&[0, 4, 1]), Err(PacketError::Truncated));
        assert_eq!(parse(&[0, 9, 0, 0]), Err(PacketError::UnknownOpcode(9)));
        assert_eq!(parse(&[0, 1, b'f']), Err(PacketError::BadString));
        assert_eq!(parse(&[0, 1, b'f', 0, b'o']), Err(PacketError::BadString));
        assert_eq!(
            parse(&[0, 1, 0xff, 0, b'o', 0]),
            Err(PacketError::BadString)
        );
        assert_eq!(
            parse(&[0, 1, b'f', 0, b'o', 0, b'b', 0]),
            Err(PacketError::BadString),
            "option without value"
        );
        let mut long = read_request("f", "octet", &[]);
        long.resize(MAX_REQUEST + 1, b'x');
        assert_eq!(parse(&long), Err(PacketError::TooLong));
        // Every prefix of a valid request parses or errors; none panics.
        let raw = read_request("abc", "netascii", &[("timeout", "3")]);
        for n in 0..raw.len() {
            let _ = parse(&raw[..n]);
        }
    }

    #[test]
    fn option_count_is_bounded() {
        let many: Vec<(String, String)> = (0..40).map(|i| (format!("o{i}"), "1".into())).collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let raw = read_request("f", "octet", &refs);
        let Packet::Read(r) = parse(&raw).unwrap() else {
            panic!()
        };
        assert_eq!(r.options.len(), MAX_OPTIONS);
    }

    #[test]
    fn built_packets_have_the_rfc_layout() {
        let mut d = Vec::new();
        write_data(&mut d, 0x1234, b"xy");
        assert_eq!(d, [0, 3, 0x12, 0x34, b'x', b'y']);
        assert_eq!(
            parse(&d).unwrap(),
            Packet::Data {
                block: 0x1234,
                data: b"xy"
            }
        );
        assert_eq!(ack(65535), [0, 4, 0xff, 0xff]);
        assert_eq!(parse(&ack(7)).unwrap(), Packet::Ack(7));
        let e = error(ErrorCode::UnknownTransferId, "unknown\0 transfer id");
        assert_eq!(&e[..4], [0, 5, 0, 5]);
        assert_eq!(*e.last().unwrap(), 0);
        assert_eq!(
            parse(&e).unwrap(),
            Packet::Error {
                code: 5,
                message: "unknown transfer id".into()
            }
        );
        let o = oack(&[("blksize", "8"), ("tsize", "42")]);
        assert_eq!(o, b"\x00\x06blksize\x008\x00tsize\x0042\x00");
        assert_eq!(
            parse(&o).unwrap(),
            Packet::OptionAck(vec![("blksize", "8"), ("tsize", "42")])
        );
    }
}
