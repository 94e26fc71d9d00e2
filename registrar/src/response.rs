//! Building SIP responses to a request (RFC 3261 §8.2.6).

use crate::message::Request;

/// The `Server` header value.
pub const SERVER: &str = concat!("sipreg/", env!("CARGO_PKG_VERSION"));

/// A response under construction; [`build`](Self::build) serialises it.
#[derive(Debug, Clone)]
pub struct ResponseBuilder<'a> {
    req: &'a Request,
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
}

/// Starts a response to `req` with `status` and `reason`.
pub fn response<'a>(req: &'a Request, status: u16, reason: &str) -> ResponseBuilder<'a> {
    ResponseBuilder {
        req,
        status,
        reason: sanitize(reason),
        headers: Vec::new(),
    }
}

impl ResponseBuilder<'_> {
    /// Adds a header after the copied ones (order is kept).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        // The usual clean value is kept as is, not copied.
        let value = if value.chars().any(char::is_control) {
            sanitize(&value)
        } else {
            value
        };
        self.headers.push((name.to_owned(), value));
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Serialises: all Via in order, From, To (with a tag), Call-ID, CSeq, Server, the extra
    /// headers, `Content-Length: 0`.
    pub fn build(self) -> Vec<u8> {
        // One buffer sized up front: the copied headers are a few hundred bytes, the extra ones
        // are known; growing by doubling would copy the response several times.
        let extra: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum();
        let copied: usize = ["Via", "From", "To", "Call-ID", "CSeq"]
            .iter()
            .flat_map(|n| self.req.all(n))
            .map(|v| v.len() + 16)
            .sum();
        let mut out = String::with_capacity(128 + copied + extra + SERVER.len());
        // Writing into a String cannot fail.
        out.push_str("SIP/2.0 ");
        crate::message::push_u32(&mut out, u32::from(self.status));
        out.push(' ');
        out.push_str(&self.reason);
        out.push_str("\r\n");
        for via in self.req.all("Via") {
            push(&mut out, "Via", via);
        }
        if let Some(from) = self.req.first("From") {
            push(&mut out, "From", from);
        }
        if let Some(to) = self.req.first("To") {
            // RFC 3261 §8.2.6.2: add a tag if the request had none (never for 100, which we
            // do not send).
            let has_tag = self
                .req
                .to_header()
                .map(|t| t.tag().is_some())
                .unwrap_or(true);
            if has_tag {
                push(&mut out, "To", to);
            } else {
                out.push_str("To: ");
                out.push_str(to);
                out.push_str(";tag=");
                // 16 lowercase hex digits, as `{:016x}` would print them.
                let tag = rand::random::<u64>();
                for shift in (0..16).rev() {
                    let nibble = ((tag >> (shift * 4)) & 0xf) as u8;
                    out.push(char::from(b"0123456789abcdef"[usize::from(nibble)]));
                }
                out.push_str("\r\n");
            }
        }
        if let Some(call_id) = self.req.first("Call-ID") {
            push(&mut out, "Call-ID", call_id);
        }
        if let Some(cseq) = self.req.first("CSeq") {
            push(&mut out, "CSeq", cseq);
        }
        push(&mut out, "Server", SERVER);
        for (name, value) in &self.headers {
            push(&mut out, name, value);
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out.into_bytes()
    }
}

fn push(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push_str("\r\n");
}

/// Keeps CR/LF (and other controls) from client-influenced text out of the response.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(extra: &str) -> Request {
        let msg = format!(
            "REGISTER sip:a SIP/2.0\r\nv: SIP/2.0/TLS a;branch=z9hG4bK1\r\nVia: SIP/2.0/TLS b;branch=z9hG4bK2\r\n\
f: <sip:1@a>;tag=f1\r\ni: cid\r\nCSeq: 7 REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Request::parse(msg.as_bytes()).unwrap()
    }

    #[test]
    fn copies_headers_and_adds_a_to_tag() {
        let r = req("t: <sip:1@a>\r\n");
        let out =
            String::from_utf8(response(&r, 200, "OK").header("Expires", "60").build()).unwrap();
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines[0], "SIP/2.0 200 OK");
        assert_eq!(lines[1], "Via: SIP/2.0/TLS a;branch=z9hG4bK1");
        assert_eq!(lines[2], "Via: SIP/2.0/TLS b;branch=z9hG4bK2");
        assert_eq!(lines[3], "From: <sip:1@a>;tag=f1");
        assert!(lines[4].starts_with("To: <sip:1@a>;tag="), "{}", lines[4]);
        assert!(lines[4].len() > "To: <sip:1@a>;tag=".len());
        assert_eq!(lines[5], "Call-ID: cid");
        assert_eq!(lines[6], "CSeq: 7 REGISTER");
        assert_eq!(lines[7], format!("Server: {SERVER}"));
        assert_eq!(lines[8], "Expires: 60");
        assert_eq!(lines[9], "Content-Length: 0");
        assert!(out.ends_with("\r\n\r\n"));
    }

    #[test]
    fn keeps_an_existing_to_tag_and_strips_crlf_injection() {
        let r = req("To: <sip:1@a>;tag=t9\r\n");
        let out = String::from_utf8(
            response(&r, 403, "No\r\nX: y")
                .header("Warning", "a\r\nb")
                .build(),
        )
        .unwrap();
        assert!(out.contains("\r\nTo: <sip:1@a>;tag=t9\r\n"));
        assert!(out.starts_with("SIP/2.0 403 No  X: y\r\n"));
        assert!(out.contains("\r\nWarning: a  b\r\n"));
    }
}
