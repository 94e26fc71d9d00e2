//! sipreg's SIP registrar over TLS ("SIP OAuth mode"): Bearer-token REGISTER processing in the
//! manner of Unified CM for Jabber-like clients, and RFC 8898 for standard ones.
//!
//! Layers, outside in: [`SipOAuthListener`] (TLS sockets, timeouts, live certificate swap) →
//! [`StreamFramer`] (RFC 3261 §18.3 framing, RFC 5626 keep-alives) → [`Registrar`] (clock and
//! shared state) → [`register::process`] (the sans-IO RFC 3261 §10.3 decision) over
//! [`Request`], [`Location`] and a [`BearerValidator`] supplied by the token service.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod framer;
pub mod listener;
pub mod location;
pub mod message;
pub mod register;
pub mod registrar;
pub mod response;

pub use auth::{AuthDialect, BearerError, BearerValidator, TokenIdentity};
pub use framer::{Frame, FrameError, StreamFramer};
pub use listener::SipOAuthListener;
pub use location::{AorBindings, Binding, BindingChange, FlowId, Location};
pub use message::{Aor, Contact, ContactAddress, MessageError, Request};
pub use register::{process, ConnectionFacts, RegistrarConfig, Response};
pub use registrar::Registrar;
