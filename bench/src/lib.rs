//! Load generator and micro benchmarks for sipreg, and the side-by-side run against Kamailio.
//!
//! The `sipreg-load` binary drives a SIP registrar over TLS, TCP or UDP with one of four
//! [`Scenario`]s (steady refreshes, a new token on every REGISTER, a reconnect storm, idle held
//! connections) and prints a one-line [`Summary`]. The pieces: [`sip`] builds REGISTERs and
//! frames responses, [`transport`] opens connections ([`Connector`]), [`stats`] counts codes and
//! latencies (HdrHistogram), [`cpu`] reads both sides' CPU time and the kernel's listen-queue
//! drops, [`scenario`] runs the load, [`provision`] creates the users, devices
//! and tokens a sipreg run needs through its admin API and token endpoint, [`memory`] reads a
//! server's resident memory and [`footprint`] the location service's.
//!
//! Criterion micro benchmarks live in `benches/micro.rs`; the scripts `compare` (side by side
//! with Kamailio), `profile` (perf of sipreg under one scenario) and `smoke` (every scenario
//! once, tiny, from `scripts/test`) sit beside this crate's `Cargo.toml`. Results and how to read them: `BENCHMARKS.md` at the workspace root.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod cpu;
pub mod footprint;
pub mod memory;
pub mod provision;
pub mod scenario;
pub mod sip;
pub mod stats;
pub mod transport;

pub use scenario::{LoadOptions, Scenario};
pub use stats::{Stats, Summary};
pub use transport::{Connector, Transport};
