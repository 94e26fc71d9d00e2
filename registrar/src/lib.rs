//! sipreg's SIP registrar: RFC 3261 §10.3 REGISTER processing with Bearer tokens on the SIP
//! OAuth port (Unified CM "SIP OAuth mode" for Jabber, RFC 8898 for others) and Digest on the
//! legacy ports, RFC 3327 Path, RFC 5626 outbound flows, persisted bindings and abuse limits.
//!
//! Layers, outside in: [`SipOAuthListener`] (TLS, live certificate swap) and
//! [`LegacyListeners`] (UDP/TCP/TLS) → [`StreamFramer`] / [`frame_datagram`] (RFC 3261 §18.3
//! framing, RFC 5626 keep-alives) → [`Registrar`] (clock, shared state, [`Stats`], connection
//! caps) → [`register::process`] (the sans-IO RFC 3261 §10.3 decision) over [`Request`],
//! [`Location`], a [`BearerValidator`] supplied by the token service and [`DigestAuth`].
//! [`persist`] writes bindings behind to the store and restores them at start. [`MraListener`]
//! serves edge proxies over mutual TLS on the MRA port, admitting them through [`EdgeTrust`].
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod config;
mod conn;
pub mod digest;
pub mod edge_trust;
pub mod framer;
pub mod legacy;
pub mod limits;
pub mod listener;
pub mod location;
pub mod message;
pub mod mra;
pub mod observe;
pub mod persist;
pub mod register;
pub mod registrar;
pub mod response;
mod slot;

pub use auth::{AuthDialect, BearerError, BearerValidator, TokenIdentity};
pub use config::RegistrarConfig;
pub use digest::{Algorithm, DigestAuth};
pub use edge_trust::{name_matches, EdgeTrust, PeerNames, Refusal};
pub use framer::{frame_datagram, Frame, FrameError, StreamFramer};
pub use legacy::{LegacyAddrs, LegacyError, LegacyListeners};
pub use limits::{Stats, StatsSnapshot};
pub use listener::SipOAuthListener;
pub use location::{AorBindings, Binding, BindingChange, FlowId, FlowState, Location, Transport};
pub use message::{Aor, Contact, ContactAddress, MessageError, Request};
pub use mra::{EdgeConnection, MraError, MraLimits, MraListener};
pub use observe::{ChallengeDialect, ObservedSnapshot, SipListener, TlsFailure};
pub use persist::PersistError;
pub use register::{process, Authenticators, ConnectionFacts, PortKind, Response};
pub use registrar::{Answer, Registrar};
pub use slot::{bind_listener, LISTEN_BACKLOG};
