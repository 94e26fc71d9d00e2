//! OAuth clients (RFC 6749 §2): the registered ones from the store, plus the built-in public
//! client `softphone` that keeps working without being registered.
//!
//! Every client is public (no secret): soft clients cannot keep one (RFC 8252 §8.4), so PKCE and
//! exact redirect-URI matching protect the authorization code instead.

use sipreg_store::{OAuthClient, Store, StoreError};

/// The public client id of sipreg's soft clients (client ids are fixed, as in Unified CM).
pub const DEFAULT_CLIENT_ID: &str = "softphone";

/// The scope a token needs to register; the only one the built-in client gets.
pub const REGISTER_SCOPE: &str = "sip:register";

/// A client as the grants see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Client {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) redirect_uris: Vec<String>,
    pub(crate) scopes: Vec<String>,
    /// The built-in client: any loopback redirect URI, on any port (RFC 8252 §7.3).
    pub(crate) loopback_any_port: bool,
}

impl From<OAuthClient> for Client {
    fn from(c: OAuthClient) -> Self {
        Client {
            id: c.id,
            name: c.name,
            redirect_uris: c.redirect_uris,
            scopes: c.scopes,
            loopback_any_port: false,
        }
    }
}

/// The built-in client as the API lists it when the store has no row for it.
pub fn builtin_client() -> OAuthClient {
    OAuthClient {
        id: DEFAULT_CLIENT_ID.into(),
        name: "sipreg soft client".into(),
        redirect_uris: vec![
            "http://127.0.0.1:{any port}/{any path}".into(),
            "http://[::1]:{any port}/{any path}".into(),
        ],
        scopes: vec![REGISTER_SCOPE.into()],
        created_at: 0,
    }
}

/// Finds a client: a stored row wins (so an admin can restrict `softphone`), else the built-in.
pub(crate) async fn resolve(store: &dyn Store, id: &str) -> Result<Option<Client>, StoreError> {
    if let Some(c) = store.client(id).await? {
        return Ok(Some(c.into()));
    }
    if id == DEFAULT_CLIENT_ID {
        let b = builtin_client();
        return Ok(Some(Client {
            id: b.id,
            name: b.name,
            redirect_uris: Vec::new(),
            scopes: b.scopes,
            loopback_any_port: true,
        }));
    }
    Ok(None)
}

impl Client {
    /// RFC 6749 §3.1.2.3: the redirect URI to use, or `None` when it does not match exactly.
    pub(crate) fn redirect_uri(&self, requested: Option<&str>) -> Option<String> {
        match requested {
            Some(uri) if self.redirect_uris.iter().any(|r| r == uri) => Some(uri.to_owned()),
            Some(uri) if self.loopback_any_port && is_loopback_redirect(uri) => {
                Some(uri.to_owned())
            }
            Some(_) => None,
            // Only one registered URI makes the parameter optional.
            None if self.redirect_uris.len() == 1 => self.redirect_uris.first().cloned(),
            None => None,
        }
    }

    /// The scope tokens this client may obtain.
    pub(crate) fn allowed_scopes(&self) -> Vec<&str> {
        self.scopes.iter().map(String::as_str).collect()
    }
}

/// `http://127.0.0.1:PORT/...` or `http://[::1]:PORT/...` (RFC 8252 §7.3), no fragment.
fn is_loopback_redirect(uri: &str) -> bool {
    let rest = uri
        .strip_prefix("http://127.0.0.1:")
        .or_else(|| uri.strip_prefix("http://[::1]:"));
    let Some(rest) = rest else { return false };
    let port_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (port, path) = rest.split_at(port_len);
    port.parse::<u16>().is_ok_and(|p| p != 0)
        && (path.is_empty() || path.starts_with('/') || path.starts_with('?'))
        && !uri.contains('#')
        && !uri.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

/// Checks a redirect URI an admin registers: absolute, no fragment (RFC 6749 §3.1.2), and
/// `https`, loopback `http` (RFC 8252 §7.3) or a private-use scheme with a dot (RFC 8252 §7.1).
pub fn validate_redirect_uri(uri: &str) -> Result<(), &'static str> {
    if uri.is_empty() || uri.len() > 2000 {
        return Err("a redirect URI is 1–2000 characters");
    }
    if uri.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("a redirect URI has no spaces or control characters");
    }
    if uri.contains('#') {
        return Err("a redirect URI must not contain a fragment (RFC 6749 §3.1.2)");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err("a redirect URI must be absolute");
    };
    let scheme_ok = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || rest.is_empty() {
        return Err("a redirect URI must be absolute");
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" if rest.starts_with("//") && rest.len() > 2 => Ok(()),
        "http" if is_loopback_redirect(uri) || uri.starts_with("http://localhost:") => Ok(()),
        "http" => Err("plain http is allowed only for loopback redirect URIs (RFC 8252 §7.3)"),
        "javascript" | "data" | "file" | "vbscript" | "blob" => {
            Err("this scheme cannot be a redirect URI")
        }
        s if s.contains('.') => Ok(()),
        _ => Err("use https, loopback http, or a private-use scheme such as com.example.app:/cb"),
    }
}

/// RFC 6749 §3.3: a scope token is `1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn valid_scope_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_store;

    #[tokio::test]
    async fn the_builtin_client_exists_until_a_stored_row_replaces_it() {
        let (_dir, store) = temp_store();
        let c = resolve(store.as_ref(), DEFAULT_CLIENT_ID)
            .await
            .unwrap()
            .unwrap();
        assert!(c.loopback_any_port);
        assert_eq!(c.allowed_scopes(), [REGISTER_SCOPE]);
        assert_eq!(
            c.redirect_uri(Some("http://127.0.0.1:49152/cb")).as_deref(),
            Some("http://127.0.0.1:49152/cb")
        );
        assert_eq!(c.redirect_uri(Some("https://evil.example/cb")), None);
        assert_eq!(c.redirect_uri(None), None, "loopback needs an explicit URI");
        assert!(resolve(store.as_ref(), "other").await.unwrap().is_none());

        store
            .create_client(&OAuthClient {
                id: DEFAULT_CLIENT_ID.into(),
                name: "locked down".into(),
                redirect_uris: vec!["https://app.example/cb".into()],
                scopes: vec![REGISTER_SCOPE.into()],
                created_at: 1,
            })
            .await
            .unwrap();
        let c = resolve(store.as_ref(), DEFAULT_CLIENT_ID)
            .await
            .unwrap()
            .unwrap();
        assert!(!c.loopback_any_port);
        assert_eq!(c.redirect_uri(Some("http://127.0.0.1:49152/cb")), None);
        assert_eq!(
            c.redirect_uri(None).as_deref(),
            Some("https://app.example/cb")
        );
    }

    #[test]
    fn redirect_uris_match_exactly() {
        let c = Client {
            id: "a".into(),
            name: "a".into(),
            redirect_uris: vec!["https://a.example/cb".into(), "com.a.app:/cb".into()],
            scopes: vec![],
            loopback_any_port: false,
        };
        assert!(c.redirect_uri(Some("https://a.example/cb")).is_some());
        for bad in [
            "https://a.example/cb/",
            "https://a.example/cb?x=1",
            "HTTPS://a.example/cb",
            "https://a.example/c",
        ] {
            assert_eq!(c.redirect_uri(Some(bad)), None, "{bad}");
        }
        assert_eq!(c.redirect_uri(None), None, "two registered: must say which");
    }

    #[test]
    fn loopback_redirects() {
        assert!(is_loopback_redirect("http://127.0.0.1:8080/cb"));
        assert!(is_loopback_redirect("http://[::1]:1/"));
        assert!(is_loopback_redirect("http://127.0.0.1:8080"));
        for bad in [
            "http://127.0.0.1.evil.example:80/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:80@evil.example/",
            "http://127.0.0.1:80/#frag",
            "https://127.0.0.1:80/",
        ] {
            assert!(!is_loopback_redirect(bad), "{bad}");
        }
    }

    #[test]
    fn registered_redirect_uris_are_checked() {
        for ok in [
            "https://app.example/cb",
            "http://127.0.0.1:7000/cb",
            "com.example.app:/oauth2redirect",
        ] {
            assert_eq!(validate_redirect_uri(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/relative",
            "https://app.example/cb#x",
            "http://app.example/cb",
            "javascript:alert(1)",
            "data:text/html,x",
            "myapp:/cb",
            "https://",
            "https://a b",
        ] {
            assert!(validate_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scope_token_syntax() {
        assert!(valid_scope_token("sip:register"));
        assert!(!valid_scope_token("a b"));
        assert!(!valid_scope_token("a\"b"));
        assert!(!valid_scope_token("a\\b"));
        assert!(!valid_scope_token(""));
    }
}
