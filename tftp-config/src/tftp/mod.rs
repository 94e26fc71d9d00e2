//! A read-only TFTP server for config files: RFC 1350 with the option extension (RFC 2347),
//! `blksize` (RFC 2348), and `timeout`/`tsize` (RFC 2349).
//!
//! [`packet`] parses and builds datagrams, [`options`] negotiates, [`Transfer`] is one transfer
//! as a pure state machine with a caller-supplied clock, and [`serve`] is the thin socket layer.

pub mod options;
pub mod packet;
mod server;
mod transfer;

pub use server::{serve, TftpConfig};
pub use transfer::{netascii_len, Outcome, Step, Transfer};
