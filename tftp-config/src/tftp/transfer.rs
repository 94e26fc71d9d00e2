//! One read transfer as a pure state machine (sans-IO): it is fed datagrams from the peer and
//! clock ticks, and says what to send. The caller owns the socket and the clock, so tests drive
//! it deterministically, including lost ACKs, retries and block-number wrap-around.
//!
//! Memory per transfer is one outgoing packet (at most 65468 bytes) plus a shared reference to
//! the file; netascii is converted block by block as it is sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::options::Negotiated;
use super::packet::{self, ErrorCode, Packet};

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The final block was acknowledged.
    Complete,
    /// The peer stayed silent through every retransmission.
    TimedOut,
    /// The peer sent an ERROR (for example code 8, refusing our options).
    PeerError {
        /// The peer's error code.
        code: u16,
        /// The peer's message.
        message: String,
    },
    /// The peer sent something that has no place in a read transfer.
    Illegal,
}

/// What the caller should do after feeding the transfer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Send this datagram to the peer and keep going.
    Send(&'a [u8]),
    /// Nothing to do; wait for the next datagram or the deadline.
    Wait,
    /// The transfer is over; send `reply` (an ERROR) first if there is one.
    Finish {
        /// A last datagram for the peer.
        reply: Option<Vec<u8>>,
        /// Why it ended.
        outcome: Outcome,
    },
}

/// What the packet in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    /// The OACK, confirmed by ACK 0.
    OptionAck,
    /// A DATA block; `last` when shorter than the block size.
    Data { last: bool },
}

/// The bytes to send and how far we are, in octet or netascii form.
#[derive(Debug)]
struct Source {
    file: Arc<[u8]>,
    pos: usize,
    netascii: bool,
    /// The second byte of a netascii pair that did not fit into the previous block.
    pending: Option<u8>,
}

impl Source {
    fn fill(&mut self, out: &mut Vec<u8>, max: usize) {
        let start = out.len();
        if !self.netascii {
            let end = self.file.len().min(self.pos + max);
            out.extend_from_slice(&self.file[self.pos..end]);
            self.pos = end;
            return;
        }
        while out.len() - start < max {
            if let Some(b) = self.pending.take() {
                out.push(b);
                continue;
            }
            let Some(&b) = self.file.get(self.pos) else {
                break;
            };
            self.pos += 1;
            // RFC 764 netascii: LF is sent as CR LF, a bare CR as CR NUL.
            match b {
                b'\n' => {
                    out.push(b'\r');
                    self.pending = Some(b'\n');
                }
                b'\r' => {
                    out.push(b'\r');
                    self.pending = Some(0);
                }
                _ => out.push(b),
            }
        }
    }
}

/// The number of bytes `file` takes on the wire in netascii.
pub fn netascii_len(file: &[u8]) -> u64 {
    file.len() as u64 + file.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64
}

/// A read transfer in progress.
#[derive(Debug)]
pub struct Transfer {
    source: Source,
    blksize: usize,
    timeout: Duration,
    max_retries: u32,
    /// Block number of the DATA in flight (0 while the OACK is in flight; wraps after 65535).
    block: u16,
    in_flight: InFlight,
    packet: Vec<u8>,
    retries: u32,
    deadline: Instant,
    blocks_sent: u64,
}

impl Transfer {
    /// Starts sending `file` with the negotiated parameters; the first datagram (OACK or DATA 1)
    /// is in [`Transfer::packet`].
    pub fn start(
        file: Arc<[u8]>,
        netascii: bool,
        negotiated: &Negotiated,
        max_retries: u32,
        now: Instant,
    ) -> Self {
        let mut t = Transfer {
            source: Source {
                file,
                pos: 0,
                netascii,
                pending: None,
            },
            blksize: negotiated.blksize,
            timeout: negotiated.timeout,
            max_retries,
            block: 0,
            in_flight: InFlight::OptionAck,
            packet: Vec::new(),
            retries: 0,
            deadline: now + negotiated.timeout,
            blocks_sent: 0,
        };
        if negotiated.oack.is_empty() {
            t.next_block(now);
        } else {
            t.packet = packet::oack(&negotiated.oack);
        }
        t
    }

    /// The datagram in flight (to send first, and to resend on timeout).
    pub fn packet(&self) -> &[u8] {
        &self.packet
    }

    /// When [`Transfer::on_timeout`] should next be called.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// DATA blocks sent so far (not counting retransmissions).
    pub fn blocks_sent(&self) -> u64 {
        self.blocks_sent
    }

    fn next_block(&mut self, now: Instant) {
        self.block = self.block.wrapping_add(1);
        packet::write_data(&mut self.packet, self.block, &[]);
        self.source.fill(&mut self.packet, self.blksize);
        let len = self.packet.len() - 4;
        self.in_flight = InFlight::Data {
            last: len < self.blksize,
        };
        self.blocks_sent += 1;
        self.retries = 0;
        self.deadline = now + self.timeout;
    }

    /// Feeds a datagram that came from the peer's transfer ID.
    pub fn on_packet(&mut self, datagram: &[u8], now: Instant) -> Step<'_> {
        match packet::parse(datagram) {
            Ok(Packet::Ack(block)) => {
                let expected = match self.in_flight {
                    InFlight::OptionAck => 0,
                    InFlight::Data { .. } => self.block,
                };
                if block != expected {
                    // A duplicate or stale ACK: resending on it would start the Sorcerer's
                    // Apprentice syndrome (RFC 1123 §4.2.3.1), so only the timer resends.
                    return Step::Wait;
                }
                if self.in_flight == (InFlight::Data { last: true }) {
                    return Step::Finish {
                        reply: None,
                        outcome: Outcome::Complete,
                    };
                }
                self.next_block(now);
                Step::Send(&self.packet)
            }
            Ok(Packet::Error { code, message }) => Step::Finish {
                reply: None,
                outcome: Outcome::PeerError { code, message },
            },
            Ok(_) | Err(_) => Step::Finish {
                reply: Some(packet::error(
                    ErrorCode::IllegalOperation,
                    "illegal tftp operation: expected an ACK",
                )),
                outcome: Outcome::Illegal,
            },
        }
    }

    /// Advances the clock: resends the packet in flight when the deadline has passed, and gives
    /// up after `max_retries` resends.
    pub fn on_timeout(&mut self, now: Instant) -> Step<'_> {
        if now < self.deadline {
            return Step::Wait;
        }
        if self.retries >= self.max_retries {
            return Step::Finish {
                reply: Some(packet::error(ErrorCode::NotDefined, "timed out")),
                outcome: Outcome::TimedOut,
            };
        }
        self.retries += 1;
        self.deadline = now + self.timeout;
        Step::Send(&self.packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::options::negotiate;

    const T: Duration = Duration::from_secs(2);

    fn file(bytes: &[u8]) -> Arc<[u8]> {
        bytes.to_vec().into()
    }

    /// Runs a transfer against a client that ACKs every block; returns the received bytes and
    /// the block numbers seen.
    fn run_to_end(t: &mut Transfer, now: Instant) -> (Vec<u8>, Vec<u16>) {
        let mut got = Vec::new();
        let mut blocks = Vec::new();
        let mut pkt = t.packet().to_vec();
        loop {
            let Ok(Packet::Data { block, data }) = packet::parse(&pkt) else {
                // OACK: confirm it.
                pkt = match t.on_packet(&packet::ack(0), now) {
                    Step::Send(p) => p.to_vec(),
                    other => panic!("{other:?}"),
                };
                continue;
            };
            got.extend_from_slice(data);
            blocks.push(block);
            match t.on_packet(&packet::ack(block), now) {
                Step::Send(p) => pkt = p.to_vec(),
                Step::Finish {
                    reply: None,
                    outcome: Outcome::Complete,
                } => return (got, blocks),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn without_options_data_1_comes_first_and_a_short_block_ends_it() {
        let now = Instant::now();
        let body: Vec<u8> = (0..1300u32).map(|i| i as u8).collect();
        let mut t = Transfer::start(file(&body), false, &negotiate(&[], 1300, T), 5, now);
        assert_eq!(&t.packet()[..4], [0, 3, 0, 1]);
        assert_eq!(t.packet().len(), 516);
        let (got, blocks) = run_to_end(&mut t, now);
        assert_eq!(got, body);
        assert_eq!(blocks, [1, 2, 3]);
    }

    #[test]
    fn a_file_that_fills_its_last_block_ends_with_an_empty_block() {
        let now = Instant::now();
        let body = vec![7u8; 1024];
        let mut t = Transfer::start(file(&body), false, &negotiate(&[], 1024, T), 5, now);
        let (got, blocks) = run_to_end(&mut t, now);
        assert_eq!(got, body);
        assert_eq!(blocks, [1, 2, 3], "block 3 is empty");
        let mut empty = Transfer::start(file(b""), false, &negotiate(&[], 0, T), 5, now);
        assert_eq!(empty.packet(), [0, 3, 0, 1]);
        assert_eq!(run_to_end(&mut empty, now).1, [1]);
    }

    #[test]
    fn oack_is_confirmed_by_ack_0_then_blocks_use_the_negotiated_size() {
        let now = Instant::now();
        let body = vec![1u8; 20];
        let n = negotiate(&[("blksize", "8"), ("tsize", "0")], 20, T);
        let mut t = Transfer::start(file(&body), false, &n, 5, now);
        assert_eq!(
            t.packet(),
            packet::oack(&[("blksize", "8"), ("tsize", "20")])
        );
        // ACK 1 before ACK 0 is stale: ignored.
        assert_eq!(t.on_packet(&packet::ack(1), now), Step::Wait);
        let (got, blocks) = run_to_end(&mut t, now);
        assert_eq!(got, body);
        assert_eq!(blocks, [1, 2, 3]);
    }

    #[test]
    fn a_lost_ack_is_recovered_by_retransmission_and_retries_are_bounded() {
        let t0 = Instant::now();
        let body = vec![9u8; 600];
        let mut t = Transfer::start(file(&body), false, &negotiate(&[], 600, T), 3, t0);
        let first = t.packet().to_vec();
        assert_eq!(t.on_timeout(t0 + T / 2), Step::Wait, "not yet");
        // The ACK for block 1 is lost: block 1 is sent again at each deadline.
        let mut now = t0;
        for _ in 0..3 {
            now = t.deadline();
            assert_eq!(t.on_timeout(now), Step::Send(&first[..]));
        }
        // A duplicate ACK of an older block never causes a resend.
        assert_eq!(t.on_packet(&packet::ack(0), now), Step::Wait);
        match t.on_timeout(t.deadline()) {
            Step::Finish {
                reply: Some(e),
                outcome: Outcome::TimedOut,
            } => {
                assert_eq!(&e[..4], [0, 5, 0, 0]);
            }
            other => panic!("{other:?}"),
        }

        // After a resend, the ACK that finally arrives moves the transfer on and resets retries.
        let mut t = Transfer::start(file(&body), false, &negotiate(&[], 600, T), 1, t0);
        let d = t.deadline();
        assert!(matches!(t.on_timeout(d), Step::Send(_)));
        let Step::Send(p) = t.on_packet(&packet::ack(1), d) else {
            panic!()
        };
        assert_eq!(&p[..4], [0, 3, 0, 2]);
        let d = t.deadline();
        assert!(
            matches!(t.on_timeout(d), Step::Send(_)),
            "a fresh retry budget for block 2"
        );
    }

    #[test]
    fn block_numbers_wrap_from_65535_to_0() {
        // More than 65535 blocks of the default size: 33.5 MB, shared, never copied.
        let now = Instant::now();
        let len = 65_536 * 512 + 100;
        let body: Arc<[u8]> = (0..len)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let mut t = Transfer::start(body.clone(), false, &negotiate(&[], len as u64, T), 5, now);
        let (got, blocks) = run_to_end(&mut t, now);
        assert!(got == *body, "content survives the wrap");
        assert_eq!(blocks.len(), 65_537);
        assert_eq!(blocks[65_534], 65_535);
        assert_eq!(blocks[65_535], 0);
        assert_eq!(blocks[65_536], 1);
        assert_eq!(t.blocks_sent(), 65_537);
    }

    #[test]
    fn netascii_converts_line_ends_across_block_boundaries() {
        let now = Instant::now();
        let body = b"1234567\nab\rc\n\n";
        let n = negotiate(&[("blksize", "8"), ("tsize", "0")], netascii_len(body), T);
        assert_eq!(n.oack[1], ("tsize".to_string(), "18".to_string()));
        let mut t = Transfer::start(file(body), true, &n, 5, now);
        let (got, blocks) = run_to_end(&mut t, now);
        assert_eq!(got, b"1234567\r\nab\r\0c\r\n\r\n");
        assert_eq!(got.len() as u64, netascii_len(body));
        assert_eq!(blocks, [1, 2, 3]);
    }

    #[test]
    fn peer_errors_and_illegal_packets_end_the_transfer() {
        let now = Instant::now();
        let n = negotiate(&[("blksize", "1024")], 10, T);
        let mut t = Transfer::start(file(b"0123456789"), false, &n, 5, now);
        assert_eq!(
            t.on_packet(&packet::error(ErrorCode::OptionNegotiation, "no"), now),
            Step::Finish {
                reply: None,
                outcome: Outcome::PeerError {
                    code: 8,
                    message: "no".into()
                }
            }
        );
        let mut t = Transfer::start(file(b"x"), false, &n, 5, now);
        for bad in [
            &b"\x00\x03\x00\x01data"[..],
            b"\x00\x01f\x00octet\x00",
            b"\x00",
            b"\x00\x09",
        ] {
            match t.on_packet(bad, now) {
                Step::Finish {
                    reply: Some(e),
                    outcome: Outcome::Illegal,
                } => assert_eq!(&e[..4], [0, 5, 0, 4]),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
