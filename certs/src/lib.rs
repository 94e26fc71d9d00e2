//! Keys, certificates and trust for sipreg's TLS listeners.
//!
//! [`load_or_create`] keeps a local CA and a server certificate in a private directory
//! ([`PkiPaths`]), issuing again when the names change or expiry nears. [`server_config`],
//! [`server_config_mtls`] and [`client_config`] build rustls configs on the aws-lc-rs provider
//! (TLS 1.2 and 1.3 only), and [`ReloadableServerConfig`] lets listeners pick up a new certificate
//! without a restart. Errors are [`CertError`].
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod error;
mod files;
mod inspect;
mod install;
mod pki;
mod reload;
mod tls;

pub use error::CertError;
pub use files::write_secret_file;
pub use inspect::{summarize_der, summarize_pem, CertSummary};
pub use install::{
    check_server_pair, install_server_cert, server_ca_file, server_cert_is_installed, CheckedPair,
};
pub use pki::{load_or_create, regenerate_server_cert, PkiPaths};
pub use reload::ReloadableServerConfig;
pub use tls::{
    client_config, client_config_with_cert, server_config, server_config_mtls, sip_server_config,
};
