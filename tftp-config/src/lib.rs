//! The device config service: the files Unified CM's TFTP service hands to SIP clients, over
//! HTTP (6970), token-protected HTTPS (6971) and TFTP (UDP 69).
//!
//! - [`render_device_config`] / [`render_default_config`] turn the directory into
//!   `<device>.cnf.xml` and `XMLDefault.cnf.xml`, following Unified CM's element order (spec §1.3).
//! - [`ConfigFiles`] renders a file when it is first asked for and serves it from a cache bounded
//!   by bytes ([`DEFAULT_CACHE_BYTES`]) until what it shows changes, so one device change costs one
//!   render; all transports serve the same cached bytes (plus `ConfigFileCacheList.txt`).
//! - [`router`]/[`router_for`] and [`secure_router`] are the HTTP and HTTPS faces; the latter asks a
//!   [`TokenCheck`] for the token's user and serves a device's file only to its owner.
//! - [`tftp`] is a read-only TFTP server whose per-transfer logic, [`tftp::Transfer`], is sans-IO.
//!
//! No secret ever goes into a file: the files are also fetched without authentication.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod auth;
mod fetches;
mod files;
mod http;
mod names;
mod render;
#[cfg(test)]
mod test_support;
pub mod tftp;

pub use auth::{Denied, TokenCheck};
pub use fetches::{FetchResult, FetchStats, FetchTransport};
pub use files::{ConfigFile, ConfigFiles, LookupError, DEFAULT_CACHE_BYTES};
pub use http::{router, router_for, secure_router, CONTENT_TYPE};
pub use names::{device_kind, DeviceKind, CACHE_LIST, XML_DEFAULT};
pub use render::{line_contact, render_default_config, render_device_config, RenderError};
