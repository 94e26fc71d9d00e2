//! Device configuration files (`<device>.cnf.xml`) and the HTTP service that hands them out.
//!
//! [`render_device_config`] turns a [`Device`](sipreg_store::Device) and the current
//! [`DirectorySnapshot`](sipreg_store::DirectorySnapshot) into the XML a Jabber-like client or SIP
//! phone reads to find its nodes, ports, lines and the cluster's SIP OAuth mode. [`router`] serves
//! those files over HTTP like Unified CM's TFTP service does on port 6970. No secret ever goes
//! into a file: the files are fetched without authentication.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod http;
mod render;
#[cfg(test)]
mod test_support;

pub use http::{router, CONTENT_TYPE};
pub use render::{line_contact, render_device_config, RenderError};
