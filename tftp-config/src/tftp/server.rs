//! The TFTP server's socket layer: one listening socket for requests, and one task with its own
//! ephemeral socket (its transfer ID, RFC 1350 §4) per read transfer, driving a [`Transfer`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::options::{negotiate, Negotiated};
use super::packet::{self, ErrorCode, Packet, MAX_REQUEST};
use super::transfer::{netascii_len, Outcome, Step, Transfer};
use crate::files::{ConfigFiles, LookupError};

/// Limits of the TFTP server.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Transfers in flight at once; further requests are refused with an ERROR until one ends.
    pub max_transfers: usize,
    /// Retransmission timeout unless the client negotiates one (RFC 2349).
    pub timeout: Duration,
    /// Resends of one packet before a silent peer is given up on.
    pub max_retries: u32,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            max_transfers: 256,
            timeout: Duration::from_secs(2),
            max_retries: 5,
        }
    }
}

/// What to do with a datagram that arrived on the listening port.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Answer with this ERROR packet.
    Refuse(Vec<u8>),
    /// Not a request: drop it silently (answering stray packets would make us a reflector).
    Ignore,
    /// Start a read transfer.
    Read {
        file: Arc<[u8]>,
        netascii: bool,
        negotiated: Negotiated,
    },
}

/// Decides on a datagram sent to the listening port.
pub(crate) fn decide(datagram: &[u8], files: &ConfigFiles, cfg: &TftpConfig) -> Decision {
    let refuse = |code, msg: &str| Decision::Refuse(packet::error(code, msg));
    let req = match packet::parse(datagram) {
        Ok(Packet::Read(req)) => req,
        Ok(Packet::Write(_)) => {
            return refuse(
                ErrorCode::AccessViolation,
                "access violation: read-only server",
            )
        }
        Ok(_) => return Decision::Ignore,
        Err(_) if matches!(datagram.get(..2), Some([0, 1 | 2])) => {
            return refuse(ErrorCode::IllegalOperation, "malformed request")
        }
        Err(_) => return Decision::Ignore,
    };
    let netascii = match req.mode.to_ascii_lowercase().as_str() {
        "octet" => false,
        "netascii" => true,
        "mail" => return refuse(ErrorCode::IllegalOperation, "mail mode is not supported"),
        _ => return refuse(ErrorCode::IllegalOperation, "unknown transfer mode"),
    };
    let file = match files.fetch(crate::FetchTransport::Tftp, req.filename) {
        Ok(f) => f,
        Err(LookupError::NotFound) => return refuse(ErrorCode::FileNotFound, "file not found"),
        Err(LookupError::BadName) => {
            return refuse(
                ErrorCode::AccessViolation,
                "access violation: bad file name",
            )
        }
        Err(LookupError::Render) => return refuse(ErrorCode::NotDefined, "internal error"),
    };
    let size = if netascii {
        netascii_len(&file.body)
    } else {
        file.body.len() as u64
    };
    Decision::Read {
        file: file.body.clone(),
        netascii,
        negotiated: negotiate(&req.options, size, cfg.timeout),
    }
}

/// Serves read requests arriving on `socket` from `files` until `cancel` fires.
pub async fn serve(
    socket: UdpSocket,
    files: Arc<ConfigFiles>,
    cfg: TftpConfig,
    cancel: CancellationToken,
) {
    let local_ip = match socket.local_addr() {
        Ok(a) => a.ip(),
        Err(e) => {
            tracing::error!(error = %e, "tftp socket has no local address");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(cfg.max_transfers));
    let mut transfers = JoinSet::new();
    // One byte more than we accept, so an over-long request is seen as such, not truncated.
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        while transfers.try_join_next().is_some() {}
        let (n, peer) = match received {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "tftp receive failed");
                continue;
            }
        };
        let (file, netascii, negotiated) = match decide(&buf[..n], &files, &cfg) {
            Decision::Read {
                file,
                netascii,
                negotiated,
            } => (file, netascii, negotiated),
            Decision::Refuse(reply) => {
                let _ = socket.send_to(&reply, peer).await;
                continue;
            }
            Decision::Ignore => continue,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = cfg.max_transfers, "tftp transfer refused: too many in flight");
            let busy = packet::error(ErrorCode::NotDefined, "server busy, try again");
            let _ = socket.send_to(&busy, peer).await;
            continue;
        };
        let local = SocketAddr::new(local_ip, 0);
        let job = Job {
            peer,
            file,
            netascii,
            negotiated,
            max_retries: cfg.max_retries,
            _permit: permit,
        };
        transfers.spawn(job.run(local, cancel.clone()));
    }
    transfers.shutdown().await;
}

/// One accepted read request.
struct Job {
    peer: SocketAddr,
    file: Arc<[u8]>,
    netascii: bool,
    negotiated: Negotiated,
    max_retries: u32,
    // Held for the life of the transfer: the cap on transfers in flight.
    _permit: OwnedSemaphorePermit,
}

enum Event {
    Cancelled,
    Tick,
    Received(std::io::Result<(usize, SocketAddr)>),
}

impl Job {
    async fn run(self, local: SocketAddr, cancel: CancellationToken) {
        let peer = self.peer;
        // Our transfer ID: a fresh port, so the listening port stays free for new requests.
        let sock = match UdpSocket::bind(local).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "tftp: cannot open a transfer socket");
                return;
            }
        };
        let mut t = Transfer::start(
            self.file,
            self.netascii,
            &self.negotiated,
            self.max_retries,
            Instant::now(),
        );
        if sock.send_to(t.packet(), peer).await.is_err() {
            return;
        }
        // ACKs and ERRORs are small; anything longer is illegal here and parsed as such.
        let mut buf = [0u8; 1024];
        loop {
            let deadline = tokio::time::Instant::from_std(t.deadline());
            let event = tokio::select! {
                _ = cancel.cancelled() => Event::Cancelled,
                _ = tokio::time::sleep_until(deadline) => Event::Tick,
                r = sock.recv_from(&mut buf) => Event::Received(r),
            };
            let step = match event {
                Event::Cancelled => return,
                Event::Tick => t.on_timeout(Instant::now()),
                Event::Received(Ok((n, from))) if from == peer => {
                    t.on_packet(&buf[..n], Instant::now())
                }
                Event::Received(Ok((_, stranger))) => {
                    // RFC 1350 §4: answer a wrong TID with error 5 and carry on with the transfer.
                    let e = packet::error(ErrorCode::UnknownTransferId, "unknown transfer id");
                    let _ = sock.send_to(&e, stranger).await;
                    continue;
                }
                Event::Received(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tftp transfer receive failed");
                    return;
                }
            };
            match step {
                Step::Send(p) => {
                    if let Err(e) = sock.send_to(p, peer).await {
                        tracing::debug!(%peer, error = %e, "tftp send failed");
                        return;
                    }
                }
                Step::Wait => {}
                Step::Finish { reply, outcome } => {
                    if let Some(r) = reply {
                        let _ = sock.send_to(&r, peer).await;
                    }
                    match outcome {
                        Outcome::Complete => {
                            tracing::debug!(%peer, blocks = t.blocks_sent(), "tftp transfer complete")
                        }
                        other => {
                            tracing::info!(%peer, outcome = ?other, "tftp transfer ended early")
                        }
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::fixture;

    struct Running {
        addr: SocketAddr,
        files: Arc<ConfigFiles>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(cfg: TftpConfig) -> (Running, crate::test_support::Fixture) {
        let f = fixture(false).await;
        let files = Arc::new(ConfigFiles::new(f.directory.clone()));
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(sock, files.clone(), cfg, cancel.clone()));
        (
            Running {
                addr,
                files,
                cancel,
                task,
            },
            f,
        )
    }

    async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("no answer within 5 s")
            .unwrap();
        buf.truncate(n);
        (buf, from)
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    fn error_code(p: &[u8]) -> u16 {
        match packet::parse(p).unwrap() {
            Packet::Error { code, .. } => code,
            other => panic!("expected an ERROR, got {other:?}"),
        }
    }

    /// Reads a whole file, acking from `c`; returns the bytes.
    async fn read_all(
        c: &UdpSocket,
        server: SocketAddr,
        name: &str,
        opts: &[(&str, &str)],
    ) -> Vec<u8> {
        c.send_to(&packet::read_request(name, "octet", opts), server)
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut blksize = 512;
        loop {
            let (p, tid) = recv(c).await;
            assert_ne!(tid, server, "answers come from a new transfer ID");
            match packet::parse(&p).unwrap() {
                Packet::OptionAck(o) => {
                    if let Some((_, v)) = o.iter().find(|(k, _)| *k == "blksize") {
                        blksize = v.parse().unwrap();
                    }
                    c.send_to(&packet::ack(0), tid).await.unwrap();
                }
                Packet::Data { block, data } => {
                    got.extend_from_slice(data);
                    c.send_to(&packet::ack(block), tid).await.unwrap();
                    if data.len() < blksize {
                        return got;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn refusals_carry_the_rfc_error_codes() {
        let (s, _f) = start(TftpConfig::default()).await;
        let c = client().await;
        let cases: [(Vec<u8>, u16); 6] = [
            (packet::read_request("CSFnobody.cnf.xml", "octet", &[]), 1),
            (packet::read_request("../../etc/passwd", "octet", &[]), 2),
            (packet::read_request("CSFjdoe.cnf.xml", "mail", &[]), 4),
            (packet::read_request("CSFjdoe.cnf.xml", "binary", &[]), 4),
            (
                {
                    let mut w = packet::read_request("x.cnf.xml", "octet", &[]);
                    w[1] = 2;
                    w
                },
                2,
            ),
            (vec![0, 1, b'x'], 4),
        ];
        for (req, code) in cases {
            c.send_to(&req, s.addr).await.unwrap();
            let (p, _) = recv(&c).await;
            assert_eq!(error_code(&p), code, "{req:?}");
        }
        // Stray non-requests to the listening port get no answer; the next request still does.
        c.send_to(&packet::ack(1), s.addr).await.unwrap();
        c.send_to(
            &packet::read_request("CSFnobody.cnf.xml", "octet", &[]),
            s.addr,
        )
        .await
        .unwrap();
        let (p, _) = recv(&c).await;
        assert_eq!(error_code(&p), 1);
    }

    #[tokio::test]
    async fn files_are_served_byte_for_byte_with_and_without_options() {
        let (s, _f) = start(TftpConfig::default()).await;
        let want = s.files.lookup("CSFjdoe.cnf.xml").unwrap().body.clone();
        assert!(want.len() > 512, "spans several default blocks");
        let c = client().await;
        assert_eq!(read_all(&c, s.addr, "csfjdoe.cnf.xml", &[]).await, &*want);
        assert_eq!(
            read_all(
                &c,
                s.addr,
                "CSFjdoe.cnf.xml",
                &[("blksize", "100"), ("tsize", "0")]
            )
            .await,
            &*want
        );
    }

    #[tokio::test]
    async fn a_wrong_tid_gets_error_5_and_the_transfer_goes_on() {
        let (s, _f) = start(TftpConfig::default()).await;
        let want = s.files.lookup("CSFjdoe.cnf.xml").unwrap().body.clone();
        let c = client().await;
        let intruder = client().await;
        c.send_to(
            &packet::read_request("CSFjdoe.cnf.xml", "octet", &[]),
            s.addr,
        )
        .await
        .unwrap();
        let (p, tid) = recv(&c).await;
        let Packet::Data { block: 1, data } = packet::parse(&p).unwrap() else {
            panic!()
        };
        let mut got = data.to_vec();
        intruder.send_to(&packet::ack(1), tid).await.unwrap();
        let (e, from) = recv(&intruder).await;
        assert_eq!(error_code(&e), 5);
        assert_eq!(from, tid);
        c.send_to(&packet::ack(1), tid).await.unwrap();
        loop {
            let (p, _) = recv(&c).await;
            let Packet::Data { block, data } = packet::parse(&p).unwrap() else {
                panic!()
            };
            got.extend_from_slice(data);
            c.send_to(&packet::ack(block), tid).await.unwrap();
            if data.len() < 512 {
                break;
            }
        }
        assert_eq!(got, &*want);
    }

    #[tokio::test]
    async fn transfers_in_flight_are_capped() {
        let cfg = TftpConfig {
            max_transfers: 1,
            timeout: Duration::from_secs(1),
            max_retries: 0,
        };
        let (s, _f) = start(cfg).await;
        let a = client().await;
        let b = client().await;
        a.send_to(
            &packet::read_request("CSFjdoe.cnf.xml", "octet", &[]),
            s.addr,
        )
        .await
        .unwrap();
        let (p, _) = recv(&a).await;
        assert!(matches!(
            packet::parse(&p).unwrap(),
            Packet::Data { block: 1, .. }
        ));
        b.send_to(
            &packet::read_request("CSFjdoe.cnf.xml", "octet", &[]),
            s.addr,
        )
        .await
        .unwrap();
        let (p, from) = recv(&b).await;
        assert_eq!(error_code(&p), 0, "busy");
        assert_eq!(from, s.addr);
        // `a` never ACKs: with no retries its transfer ends after one timeout and frees the slot.
        let (p, _) = recv(&a).await;
        assert_eq!(error_code(&p), 0, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let want = s.files.lookup("CSFjdoe.cnf.xml").unwrap().body.clone();
        assert_eq!(read_all(&b, s.addr, "CSFjdoe.cnf.xml", &[]).await, &*want);
    }

    #[tokio::test]
    async fn cancel_stops_the_server() {
        let (s, _f) = start(TftpConfig::default()).await;
        s.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), s.task)
            .await
            .unwrap()
            .unwrap();
    }
}
