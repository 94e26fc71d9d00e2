//! RFC 3261 §18.3 stream framing: cut a TCP/TLS byte stream into whole SIP messages.
//!
//! rsip and most parsers take "everything after the head" as the body; on a stream that would
//! swallow the next pipelined message, so framing is ours: the head ends at the first CRLFCRLF and
//! the body is exactly `Content-Length` bytes (mandatory on streams). Keep-alive pings (RFC 5626
//! §4.4.1, a double CRLF between messages) are reported so the connection can answer with a pong.

/// Default cap on one message (head and body), in bytes.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// One unit cut from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete SIP message: head, blank line and exactly `Content-Length` body bytes.
    Message(Vec<u8>),
    /// A CRLFCRLF keep-alive ping, to be answered with a single CRLF pong.
    KeepAlivePing,
}

/// Why the stream cannot be framed; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The head or the whole message is larger than the configured cap.
    #[error("message exceeds {limit} bytes")]
    TooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// A stream message without `Content-Length` (RFC 3261 §18.3 makes it mandatory).
    #[error("missing content-length")]
    MissingContentLength,
    /// `Content-Length` is negative, not a number or out of range.
    #[error("invalid content-length {0:?}")]
    InvalidContentLength(String),
    /// Two `Content-Length` headers disagree.
    #[error("conflicting content-length headers")]
    ConflictingContentLength,
    /// A datagram ends before the body `Content-Length` announces (RFC 3261 §18.3).
    #[error("body shorter than content-length")]
    Truncated,
}

/// Incremental framer: [`push`](Self::push) bytes as they arrive, then drain
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    max_message_size: usize,
    /// How much of `buf` is known not to hold the end of the head: a head arriving byte by byte
    /// is scanned once, not once per byte (which would be quadratic, a slowloris lever).
    scanned: usize,
    /// Total length of the message whose head is complete and body still arriving.
    pending_total: Option<usize>,
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl StreamFramer {
    /// A framer that rejects messages larger than `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        StreamFramer {
            buf: Vec::new(),
            max_message_size,
            scanned: 0,
            pending_total: None,
        }
    }

    /// Appends received bytes.
    ///
    /// Refuses to grow the buffer when the pending (incomplete) data already reaches the cap: the
    /// caller drains frames after every push, so anything left over is one partial message, and
    /// a partial message at the cap can never complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if self.buf.len() >= self.max_message_size {
            return Err(FrameError::TooLarge {
                limit: self.max_message_size,
            });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Bytes buffered but not yet returned as a frame (a partial message).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        // Between messages, CRLFCRLF is a ping (RFC 5626 §4.4.1) and a lone CRLF is ignored
        // (RFC 3261 §7.5). A CRLF at the very end may be the first half of a ping: wait.
        loop {
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.drain(..4);
                self.scanned = 0;
                return Ok(Some(Frame::KeepAlivePing));
            }
            if self.buf.starts_with(b"\r\n") {
                if self.buf.len() == 2 || (self.buf.len() == 3 && self.buf[2] == b'\r') {
                    return Ok(None);
                }
                self.buf.drain(..2);
                self.scanned = 0;
                continue;
            }
            if self.buf == b"\r" {
                return Ok(None);
            }
            break;
        }
        if self.buf.is_empty() {
            return Ok(None);
        }

        let limit = self.max_message_size;
        if let Some(total) = self.pending_total {
            // Head already parsed: only wait for the body.
            return Ok(self.take(total));
        }
        let search_end = self.buf.len().min(limit);
        let from = self.scanned.saturating_sub(3).min(search_end);
        let Some(head_end) = find_blank_line(&self.buf[from..search_end]).map(|i| i + from) else {
            self.scanned = search_end;
            if self.buf.len() >= limit {
                return Err(FrameError::TooLarge { limit });
            }
            return Ok(None);
        };
        let head_len = head_end + 4;
        let body_len = content_length(&self.buf[..head_end])?;
        let total = head_len
            .checked_add(body_len)
            .ok_or(FrameError::TooLarge { limit })?;
        // Known before the body arrives: refuse now instead of buffering up to the claimed size.
        if total > limit {
            return Err(FrameError::TooLarge { limit });
        }
        Ok(self.take(total))
    }

    /// The message of `total` bytes if it is all here; otherwise remembers it is pending.
    fn take(&mut self, total: usize) -> Option<Frame> {
        if self.buf.len() < total {
            self.pending_total = Some(total);
            return None;
        }
        let rest = self.buf.split_off(total);
        let msg = std::mem::replace(&mut self.buf, rest);
        self.scanned = 0;
        self.pending_total = None;
        Some(Frame::Message(msg))
    }
}

/// Where the first CRLFCRLF in `hay` starts. Looks for LF bytes and checks the three before,
/// instead of comparing a 4-byte window at every position.
fn find_blank_line(hay: &[u8]) -> Option<usize> {
    let mut from = 3;
    while from < hay.len() {
        let lf = from + hay[from..].iter().position(|&b| b == b'\n')?;
        if &hay[lf - 3..lf] == b"\r\n\r" {
            return Some(lf - 3);
        }
        from = lf + 1;
    }
    None
}

/// Cuts one UDP datagram to its SIP message (RFC 3261 §18.3): `Content-Length` is optional;
/// bytes after the announced body are discarded; a body shorter than announced is an error.
/// `Ok(None)` for keep-alives (CRLFs, RFC 5626 §4.4.2 STUN) that get no SIP answer.
pub fn frame_datagram(data: &[u8], max_message_size: usize) -> Result<Option<&[u8]>, FrameError> {
    if data.len() > max_message_size {
        return Err(FrameError::TooLarge {
            limit: max_message_size,
        });
    }
    let mut start = 0;
    while data[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let data = &data[start..];
    // STUN messages start with two zero bits (RFC 5389 §6); SIP starts with a letter.
    if data.is_empty() || data[0] < 0x20 {
        return Ok(None);
    }
    let Some(head_end) = find_blank_line(data) else {
        return Ok(Some(data));
    };
    let body_at = head_end + 4;
    match content_length_opt(&data[..head_end])? {
        None => Ok(Some(data)),
        Some(len) => {
            let end = body_at.checked_add(len).ok_or(FrameError::Truncated)?;
            if end > data.len() {
                return Err(FrameError::Truncated);
            }
            Ok(Some(&data[..end]))
        }
    }
}

/// Reads `Content-Length` (or compact `l`) from a head; folded continuation lines are joined.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    content_length_opt(head)?.ok_or(FrameError::MissingContentLength)
}

fn content_length_opt(head: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut found: Option<usize> = None;
    // Skip the start line; unfold header lines (RFC 3261 §7.3.1). A logical line is borrowed
    // from the head; only one with continuation lines (rare) is copied to be joined.
    let mut current: Option<std::borrow::Cow<'_, [u8]>> = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match (line.first(), current.as_mut()) {
            (Some(b' ' | b'\t'), Some(prev)) => {
                let prev = prev.to_mut();
                prev.push(b' ');
                prev.extend_from_slice(line);
            }
            _ => {
                if let Some(prev) = current.replace(std::borrow::Cow::Borrowed(line)) {
                    check_content_length(&prev, &mut found)?;
                }
            }
        }
    }
    if let Some(last) = current {
        check_content_length(&last, &mut found)?;
    }
    Ok(found)
}

/// If `line` is a `Content-Length` header, records its value in `found` (conflicts refused).
fn check_content_length(line: &[u8], found: &mut Option<usize>) -> Result<(), FrameError> {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Ok(());
    };
    let name = line[..colon].trim_ascii();
    if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
        return Ok(());
    }
    let raw = line[colon + 1..].trim_ascii();
    let invalid = || FrameError::InvalidContentLength(String::from_utf8_lossy(raw).into_owned());
    if raw.is_empty() || !raw.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    // Digits only (checked above): overflow is the one way this can fail.
    let value = raw.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    });
    let value = value.ok_or_else(invalid)?;
    match *found {
        Some(prev) if prev != value => Err(FrameError::ConflictingContentLength),
        _ => {
            *found = Some(value);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &[u8] =
        b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS a\r\nContent-Length: 0\r\n\r\n";

    fn frames(f: &mut StreamFramer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(fr) = f.next_frame().unwrap() {
            out.push(fr);
        }
        out
    }

    #[test]
    fn whole_message_is_one_frame() {
        let mut f = StreamFramer::default();
        f.push(REG).unwrap();
        assert_eq!(frames(&mut f), vec![Frame::Message(REG.to_vec())]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn split_reads_byte_by_byte() {
        let msg = b"OPTIONS sip:a SIP/2.0\r\nl: 5\r\n\r\nhello";
        let mut f = StreamFramer::default();
        let mut got = Vec::new();
        for b in msg.iter() {
            f.push(&[*b]).unwrap();
            got.extend(frames(&mut f));
        }
        assert_eq!(got, vec![Frame::Message(msg.to_vec())]);
    }

    #[test]
    fn pipelined_messages_and_remainder_stays() {
        let mut data = REG.to_vec();
        data.extend_from_slice(
            b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 3\r\n\r\nabcREGISTER sip:x",
        );
        let mut f = StreamFramer::default();
        f.push(&data).unwrap();
        let got = frames(&mut f);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Frame::Message(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 3\r\n\r\nabc".to_vec())
        );
        assert_eq!(f.buffered(), b"REGISTER sip:x".len());
    }

    #[test]
    fn body_is_exactly_content_length_even_if_more_follows() {
        let mut f = StreamFramer::default();
        f.push(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 2\r\n\r\nhiXYZ")
            .unwrap();
        assert_eq!(
            f.next_frame().unwrap(),
            Some(Frame::Message(
                b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 2\r\n\r\nhi".to_vec()
            ))
        );
        assert_eq!(f.buffered(), 3);
    }

    #[test]
    fn ping_and_lone_crlf() {
        let mut f = StreamFramer::default();
        f.push(b"\r\n\r\n").unwrap();
        assert_eq!(frames(&mut f), vec![Frame::KeepAlivePing]);
        // A lone CRLF before a message is skipped, not a ping.
        f.push(b"\r\n").unwrap();
        assert_eq!(f.next_frame().unwrap(), None, "may be half a ping: wait");
        f.push(REG).unwrap();
        assert_eq!(frames(&mut f), vec![Frame::Message(REG.to_vec())]);
        // A ping split over two reads.
        f.push(b"\r\n").unwrap();
        assert_eq!(f.next_frame().unwrap(), None);
        f.push(b"\r\n").unwrap();
        assert_eq!(frames(&mut f), vec![Frame::KeepAlivePing]);
    }

    #[test]
    fn ping_between_pipelined_messages() {
        let mut data = REG.to_vec();
        data.extend_from_slice(b"\r\n\r\n");
        data.extend_from_slice(REG);
        let mut f = StreamFramer::default();
        f.push(&data).unwrap();
        assert_eq!(
            frames(&mut f),
            vec![
                Frame::Message(REG.to_vec()),
                Frame::KeepAlivePing,
                Frame::Message(REG.to_vec())
            ]
        );
    }

    #[test]
    fn content_length_name_forms() {
        for head in [
            "content-length: 1",
            "CONTENT-LENGTH:1",
            "Content-Length   :  1",
            "l: 1",
            "L:1",
            "Content-Length:\r\n 1",
        ] {
            let msg = format!("INFO sip:a SIP/2.0\r\n{head}\r\n\r\nX");
            let mut f = StreamFramer::default();
            f.push(msg.as_bytes()).unwrap();
            assert_eq!(
                f.next_frame().unwrap(),
                Some(Frame::Message(msg.clone().into_bytes())),
                "{head}"
            );
        }
    }

    #[test]
    fn bad_content_lengths_are_errors() {
        let cases: [(&str, FrameError); 5] = [
            (
                "Content-Length: -1",
                FrameError::InvalidContentLength("-1".into()),
            ),
            (
                "Content-Length: abc",
                FrameError::InvalidContentLength("abc".into()),
            ),
            (
                "Content-Length: 99999999999999999999999",
                FrameError::InvalidContentLength("99999999999999999999999".into()),
            ),
            (
                "Content-Length: 1\r\nl: 2",
                FrameError::ConflictingContentLength,
            ),
            ("Via: x", FrameError::MissingContentLength),
        ];
        for (head, want) in cases {
            let msg = format!("INFO sip:a SIP/2.0\r\n{head}\r\n\r\nXY");
            let mut f = StreamFramer::default();
            f.push(msg.as_bytes()).unwrap();
            assert_eq!(f.next_frame(), Err(want), "{head}");
        }
        // Equal duplicates are fine.
        let msg = "INFO sip:a SIP/2.0\r\nContent-Length: 1\r\nl: 1\r\n\r\nX";
        let mut f = StreamFramer::default();
        f.push(msg.as_bytes()).unwrap();
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn head_without_end_beyond_cap_is_rejected_before_buffering_more() {
        let mut f = StreamFramer::new(64);
        f.push(&[b'A'; 40]).unwrap();
        assert_eq!(f.next_frame(), Ok(None));
        f.push(&[b'A'; 40]).unwrap();
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 64 }));
        assert_eq!(f.push(b"more"), Err(FrameError::TooLarge { limit: 64 }));
        assert_eq!(f.buffered(), 80, "nothing appended after the cap");
    }

    #[test]
    fn declared_body_beyond_cap_is_rejected_before_it_arrives() {
        let mut f = StreamFramer::new(100);
        f.push(b"INFO sip:a SIP/2.0\r\nContent-Length: 1000\r\n\r\n")
            .unwrap();
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 100 }));
    }

    #[test]
    fn datagrams_cut_at_content_length_and_keepalives_are_silent() {
        let two = b"OPTIONS sip:a SIP/2.0\r\nl: 2\r\n\r\nhiINVITE sip:b SIP/2.0\r\n\r\n";
        assert_eq!(
            frame_datagram(two, 1000),
            Ok(Some(&b"OPTIONS sip:a SIP/2.0\r\nl: 2\r\n\r\nhi"[..]))
        );
        let no_cl = b"\r\nOPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\nbody";
        assert_eq!(frame_datagram(no_cl, 1000), Ok(Some(&no_cl[2..])));
        assert_eq!(
            frame_datagram(b"OPTIONS sip:a SIP/2.0\r\nl: 9\r\n\r\nhi", 1000),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            frame_datagram(b"OPTIONS sip:a SIP/2.0\r\nl: -1\r\n\r\n", 1000),
            Err(FrameError::InvalidContentLength("-1".into()))
        );
        assert_eq!(frame_datagram(b"\r\n\r\n", 1000), Ok(None));
        assert_eq!(frame_datagram(&[0, 1, 0, 0, 0x21, 0x12], 1000), Ok(None));
        assert_eq!(
            frame_datagram(&[b'A'; 11], 10),
            Err(FrameError::TooLarge { limit: 10 })
        );
    }

    #[test]
    fn a_head_trickling_in_is_scanned_once() {
        // 60 KiB of header bytes one at a time, then the end: linear, not quadratic, and the
        // head end split across pushes is still found.
        let mut f = StreamFramer::default();
        let mut msg = b"OPTIONS sip:a SIP/2.0\r\nX: ".to_vec();
        msg.extend(std::iter::repeat_n(b'a', 60 * 1024));
        msg.extend_from_slice(b"\r\nl: 0\r\n\r\n");
        for b in &msg {
            f.push(&[*b]).unwrap();
            if let Some(fr) = f.next_frame().unwrap() {
                assert_eq!(fr, Frame::Message(msg.clone()));
            }
        }
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn message_exactly_at_cap_is_accepted() {
        let mut f = StreamFramer::new(REG.len());
        f.push(REG).unwrap();
        assert_eq!(f.next_frame(), Ok(Some(Frame::Message(REG.to_vec()))));
    }
}
