//! Option negotiation for a read request: `blksize` (RFC 2348), `timeout` and `tsize` (RFC 2349).

use std::time::Duration;

/// RFC 1350's block size, used when the client negotiates none.
pub const DEFAULT_BLKSIZE: usize = 512;
/// RFC 2348's range of block sizes.
pub const MIN_BLKSIZE: usize = 8;
/// Largest block size (RFC 2348); a bigger request is answered with this value.
pub const MAX_BLKSIZE: usize = 65464;

/// The parameters of one read transfer after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Data bytes per DATA packet.
    pub blksize: usize,
    /// Retransmission timeout.
    pub timeout: Duration,
    /// The accepted options to send in an OACK, in the order requested; empty means no OACK.
    pub oack: Vec<(String, String)>,
}

/// Accepts what we support from `requested` (RFC 2347: unknown or invalid options are dropped
/// silently, never answered with an error). `size` is the number of bytes the transfer will send
/// (after netascii conversion), returned for `tsize`.
pub fn negotiate(requested: &[(&str, &str)], size: u64, default_timeout: Duration) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        timeout: default_timeout,
        oack: Vec::new(),
    };
    let mut seen = [false; 3];
    for (name, value) in requested {
        let name = name.to_ascii_lowercase();
        let slot = match name.as_str() {
            "blksize" => 0,
            "timeout" => 1,
            "tsize" => 2,
            _ => continue,
        };
        // The first occurrence counts; repeats are ignored.
        if std::mem::replace(&mut seen[slot], true) {
            continue;
        }
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        match slot {
            0 if v >= MIN_BLKSIZE as u64 => {
                // RFC 2348: the server may answer a smaller size than requested, never larger.
                let size = usize::try_from(v).unwrap_or(MAX_BLKSIZE).min(MAX_BLKSIZE);
                n.blksize = size;
                n.oack.push((name, size.to_string()));
            }
            // RFC 2349: 1–255 seconds, echoed unchanged.
            1 if (1..=255).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                n.oack.push((name, v.to_string()));
            }
            // RFC 2349: on a read request the client sends 0 and the server answers the size.
            2 => n.oack.push((name, size.to_string())),
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    fn oack(n: &Negotiated) -> Vec<(&str, &str)> {
        n.oack
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }

    #[test]
    fn no_options_means_rfc_1350_and_no_oack() {
        let n = negotiate(&[], 100, T);
        assert_eq!((n.blksize, n.timeout), (512, T));
        assert!(n.oack.is_empty());
    }

    #[test]
    fn accepted_options_are_echoed_in_request_order() {
        let n = negotiate(
            &[("TSize", "0"), ("blksize", "1428"), ("timeout", "3")],
            4242,
            T,
        );
        assert_eq!(n.blksize, 1428);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            oack(&n),
            [("tsize", "4242"), ("blksize", "1428"), ("timeout", "3")]
        );
    }

    #[test]
    fn blksize_is_bounded_to_rfc_2348() {
        assert_eq!(negotiate(&[("blksize", "8")], 0, T).blksize, 8);
        assert_eq!(negotiate(&[("blksize", "65464")], 0, T).blksize, 65464);
        let big = negotiate(&[("blksize", "70000")], 0, T);
        assert_eq!(big.blksize, MAX_BLKSIZE);
        assert_eq!(oack(&big), [("blksize", "65464")]);
        let huge = negotiate(&[("blksize", "99999999999999999999")], 0, T);
        assert_eq!(huge.blksize, 512, "unparseable: ignored");
        for bad in ["7", "0", "-1", "x", ""] {
            let n = negotiate(&[("blksize", bad)], 0, T);
            assert_eq!(n.blksize, 512, "{bad}");
            assert!(n.oack.is_empty(), "{bad}");
        }
    }

    #[test]
    fn timeout_outside_1_to_255_and_unknown_options_are_dropped() {
        for bad in ["0", "256", "x"] {
            let n = negotiate(&[("timeout", bad)], 0, T);
            assert_eq!(n.timeout, T);
            assert!(n.oack.is_empty(), "{bad}");
        }
        let n = negotiate(
            &[
                ("windowsize", "4"),
                ("multicast", ""),
                ("blksize", "1024"),
                ("blksize", "8"),
            ],
            0,
            T,
        );
        assert_eq!(oack(&n), [("blksize", "1024")]);
        assert_eq!(
            n.blksize, 1024,
            "a repeated option does not override the first"
        );
    }
}
