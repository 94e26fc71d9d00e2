//! SIP on the wire for the load generator: REGISTER requests and the framing of responses.

use std::io::Write as _;
use std::net::SocketAddr;

use crate::transport::Transport;

/// The Cisco/Jabber Contact parameter naming the registering device; sipreg authorizes the
/// line against that device by name (a hash lookup) instead of scanning the user's devices.
pub const DEVICE_NAME_PARAM: &str = "+u.sip!devicename.ccm.cisco.com";

/// Everything that varies between two REGISTERs of one run.
#[derive(Debug, Clone, Copy)]
pub struct RegisterParams<'a> {
    /// Transport named in Via and Contact.
    pub transport: Transport,
    /// Our address (Via sent-by, Contact host).
    pub local: SocketAddr,
    /// Domain of Request-URI, From and To.
    pub domain: &'a str,
    /// Line number: the AOR is `sip:<line>@<domain>`.
    pub line: u64,
    /// Device named in the Contact, when the server wants one.
    pub device: Option<&'a str>,
    /// Distinguishes runs, so a Call-ID is never reused with a lower CSeq.
    pub run_id: u64,
    /// CSeq number; increases per Call-ID.
    pub cseq: u32,
    /// Requested expiry (seconds).
    pub expires: u32,
    /// Bearer access token, if the server wants one.
    pub token: Option<&'a str>,
}

/// Serialises one REGISTER into `out` (cleared first), reusing its allocation: the request is
/// written straight into `out`, with no intermediate `String` (this runs once per REGISTER on
/// the server's cores).
pub fn write_register(out: &mut Vec<u8>, p: &RegisterParams<'_>) {
    out.clear();
    let t = p.transport.via_name();
    let lower = match p.transport {
        Transport::Tls => "tls",
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/{t} {local};branch=z9hG4bK{run:x}.{line}.{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{line}@{domain}>;tag={run:x}{line}\r\n\
         To: <sip:{line}@{domain}>\r\n\
         Call-ID: {run:x}-{line}@sipreg-load\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{line}@{local};transport={lower}>",
        domain = p.domain,
        local = p.local,
        run = p.run_id,
        line = p.line,
        cseq = p.cseq,
    );
    if let Some(d) = p.device {
        let _ = write!(out, ";{DEVICE_NAME_PARAM}=\"{d}\"");
    }
    let _ = write!(out, "\r\nExpires: {}\r\n", p.expires);
    if let Some(tok) = p.token {
        out.extend_from_slice(b"Authorization: Bearer ");
        out.extend_from_slice(tok.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"User-Agent: sipreg-load\r\nContent-Length: 0\r\n\r\n");
}

/// What the load generator needs from a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// CSeq number, to match the request.
    pub cseq: u32,
}

/// Errors of response framing and parsing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SipError {
    /// The start line is not `SIP/2.0 <code> ...`.
    #[error("malformed status line")]
    StatusLine,
    /// No usable CSeq header.
    #[error("missing or malformed cseq")]
    CSeq,
    /// Content-Length is not a number.
    #[error("malformed content-length")]
    ContentLength,
    /// A response grew past the size limit without ending.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
}

/// Largest response accepted (a 200 listing ten bindings is far below this).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// Parses the status line and CSeq of one complete response.
pub fn parse_response(msg: &[u8]) -> Result<ResponseHead, SipError> {
    let text = std::str::from_utf8(msg).map_err(|_| SipError::StatusLine)?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("SIP/2.0 "))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(SipError::StatusLine)?;
    let cseq = lines
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("CSeq"))
                .then(|| value.split_whitespace().next()?.parse::<u32>().ok())
                .flatten()
        })
        .ok_or(SipError::CSeq)?;
    Ok(ResponseHead { status, cseq })
}

/// Splits complete messages off a byte stream (RFC 3261 §18.3: headers, blank line,
/// Content-Length bytes of body). Bare CRLFs between messages (keep-alive pongs, RFC 5626 §4.4.1)
/// are counted and dropped.
#[derive(Debug, Default)]
pub struct ResponseFramer {
    buf: Vec<u8>,
    pongs: u64,
}

impl ResponseFramer {
    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Keep-alive pongs seen so far.
    pub fn pongs(&self) -> u64 {
        self.pongs
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, SipError> {
        let lead = self.buf.chunks(2).take_while(|c| *c == b"\r\n").count();
        if lead > 0 {
            self.pongs += lead as u64;
            self.buf.drain(..lead * 2);
        }
        let Some(end) = find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > MAX_RESPONSE {
                return Err(SipError::TooLarge(MAX_RESPONSE));
            }
            return Ok(None);
        };
        let head_len = end + 4;
        let body_len = content_length(&self.buf[..end])?;
        let total = head_len + body_len;
        if total > MAX_RESPONSE {
            return Err(SipError::TooLarge(MAX_RESPONSE));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let msg: Vec<u8> = self.buf.drain(..total).collect();
        Ok(Some(msg))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> Result<usize, SipError> {
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("Content-Length") || name == "l" {
            return value.trim().parse().map_err(|_| SipError::ContentLength);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(token: Option<&str>) -> RegisterParams<'_> {
        RegisterParams {
            transport: Transport::Tls,
            local: "127.0.0.1:40000".parse().unwrap(),
            domain: "localhost",
            line: 100_007,
            device: Some("BENCH0"),
            run_id: 0xabc,
            cseq: 3,
            expires: 3600,
            token,
        }
    }

    #[test]
    fn register_is_accepted_by_the_registrar_parser() {
        let mut out = Vec::new();
        write_register(&mut out, &params(Some("a.b.c")));
        let req = sipreg_registrar::Request::parse(&out).unwrap();
        assert_eq!(req.method, "REGISTER");
        assert_eq!(req.cseq().unwrap().seq, 3);
        let aor = req.aor().unwrap();
        assert_eq!(aor.user.as_deref(), Some("100007"));
        assert_eq!(aor.host, "localhost");
        assert_eq!(req.authorization(), vec!["Bearer a.b.c"]);
        let contacts = req.contacts().unwrap();
        let sipreg_registrar::Contact::Address(c) = &contacts[0] else {
            panic!("wildcard")
        };
        assert_eq!(c.device_name.as_deref(), Some("BENCH0"));
        assert!(req.via()[0].starts_with("SIP/2.0/TLS 127.0.0.1:40000"));
    }

    #[test]
    fn register_without_token_has_no_authorization() {
        let mut out = Vec::new();
        write_register(&mut out, &params(None));
        let req = sipreg_registrar::Request::parse(&out).unwrap();
        assert!(req.authorization().is_empty());
    }

    #[test]
    fn framer_splits_pipelined_responses_and_counts_pongs() {
        let mut f = ResponseFramer::default();
        f.push(b"\r\n\r\nSIP/2.0 200 OK\r\nCSeq: 7 REGISTER\r\nContent-Length: 2\r\n\r\nhi");
        f.push(b"SIP/2.0 401 Unauthorized\r\ncseq:  8 REGISTER\r\n");
        let first = f.next_message().unwrap().unwrap();
        assert_eq!(
            parse_response(&first).unwrap(),
            ResponseHead {
                status: 200,
                cseq: 7
            }
        );
        assert_eq!(f.pongs(), 2);
        assert_eq!(f.next_message().unwrap(), None);
        f.push(b"Content-Length: 0\r\n\r\n");
        let second = f.next_message().unwrap().unwrap();
        assert_eq!(parse_response(&second).unwrap().status, 401);
        assert_eq!(parse_response(&second).unwrap().cseq, 8);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(SipError::StatusLine)
        );
        assert_eq!(
            parse_response(b"SIP/2.0 200 OK\r\n\r\n"),
            Err(SipError::CSeq)
        );
        let mut f = ResponseFramer::default();
        f.push(b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n");
        assert_eq!(f.next_message(), Err(SipError::ContentLength));
        let mut f = ResponseFramer::default();
        f.push(&vec![b'a'; MAX_RESPONSE + 1]);
        assert_eq!(f.next_message(), Err(SipError::TooLarge(MAX_RESPONSE)));
    }
}
