//! The authorization endpoint (RFC 6749 §4.1.1–§4.1.2): a server-rendered login page at
//! `GET /oauth/authorize` and its form at `POST /oauth/authorize`. No JavaScript.
//!
//! Errors about the client or the redirect URI are shown to the user and never redirected (an
//! attacker must not be able to bounce the browser to a URI of their choice); every other error
//! goes back to the client's redirect URI with `error` and `state` (§4.1.2.1).
//!
//! CSRF: the page's form carries a random token that must equal both the one remembered with the
//! pending login and a `__Host-` cookie set with the page (`SameSite=Strict`, `HttpOnly`), so a
//! form posted from another site fails. The page may not be framed (clickjacking).

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use dashmap::DashMap;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::codes::CodeGrant;
use crate::grants::{requested_scope, GrantError};
use crate::pkce;
use crate::web::{cookie, html_escape, unix_now, with_query, ClientAddr};
use crate::TokenService;

/// The CSRF cookie; `__Host-` makes the browser insist on Secure, Path=/ and no Domain.
const CSRF_COOKIE: &str = "__Host-sipreg-login";
/// Most logins in progress at once; beyond it new ones are refused until old ones expire.
const MAX_PENDING: usize = 10_000;

/// Logins in progress: what a login page was opened for, until its form is posted.
#[derive(Debug, Default)]
pub(crate) struct PendingLogins {
    map: DashMap<String, Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    client_id: String,
    client_name: String,
    redirect_uri: String,
    state: Option<String>,
    scope: String,
    code_challenge: String,
    csrf: String,
    expires_at: i64,
}

/// The query of `GET /oauth/authorize`; each parameter at most once (§3.1).
#[derive(Deserialize)]
pub(crate) struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// The login form.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    request: Option<String>,
    csrf: Option<String>,
    username: Option<String>,
    password: Option<String>,
    action: Option<String>,
}

/// How an authorization request ends when it does not show the login page.
enum Outcome {
    /// Shown to the user: the client or the redirect URI cannot be trusted.
    Page(StatusCode, &'static str),
    /// Back to the client (§4.1.2.1).
    Redirect(String),
}

impl TokenService {
    fn error_redirect(
        &self,
        redirect_uri: &str,
        error: &str,
        description: &str,
        state: Option<&str>,
    ) -> Outcome {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(s) = state {
            params.push(("state", s));
        }
        // RFC 9207: tells the client which server answered (mix-up defence).
        params.push(("iss", &self.cfg.issuer));
        Outcome::Redirect(with_query(redirect_uri, &params))
    }

    /// Validates an authorization request and remembers it as a pending login.
    async fn start_login(&self, q: AuthorizeQuery, now: i64) -> Result<Pending, Outcome> {
        use Outcome::Page;
        let given = |v: Option<String>| v.filter(|s| !s.is_empty());
        let client_id = given(q.client_id).ok_or(Page(
            StatusCode::BAD_REQUEST,
            "The application did not say who it is (client_id is missing).",
        ))?;
        let client = match self.client(&client_id).await {
            Ok(c) => c,
            Err(GrantError::InvalidClient) => {
                return Err(Page(
                    StatusCode::BAD_REQUEST,
                    "The application is not registered with this server.",
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, "authorization request failed");
                return Err(Page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The server failed; try again later.",
                ));
            }
        };
        let redirect_uri = client
            .redirect_uri(given(q.redirect_uri).as_deref())
            .ok_or(Page(
                StatusCode::BAD_REQUEST,
                "The application asked to return to an address it did not register.",
            ))?;
        let state = given(q.state);
        let fail = |error: &str, description: &str| {
            self.error_redirect(&redirect_uri, error, description, state.as_deref())
        };
        if given(q.response_type).as_deref() != Some("code") {
            return Err(fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        let challenge = given(q.code_challenge)
            .ok_or_else(|| fail("invalid_request", "PKCE code_challenge is required"))?;
        // RFC 7636 §4.3: an absent method means `plain`, which we refuse.
        if given(q.code_challenge_method).as_deref() != Some(pkce::S256) {
            return Err(fail(
                "invalid_request",
                "code_challenge_method must be S256",
            ));
        }
        if !pkce::valid_challenge(&challenge) {
            return Err(fail("invalid_request", "malformed code_challenge"));
        }
        let scope = requested_scope(
            given(q.scope).as_deref(),
            &self.cfg.default_scope,
            &client.allowed_scopes(),
        )
        .map_err(|_| fail("invalid_scope", "requested scope is not allowed"))?;
        let pending = Pending {
            client_id: client.id,
            client_name: client.name,
            redirect_uri: redirect_uri.clone(),
            state: state.clone(),
            scope,
            code_challenge: challenge,
            csrf: crate::grants::new_opaque_token(),
            expires_at: now.saturating_add(self.cfg.login_page_ttl_secs),
        };
        let logins = &self.logins.map;
        if logins.len() >= MAX_PENDING {
            logins.retain(|_, p| p.expires_at > now);
            if logins.len() >= MAX_PENDING {
                return Err(fail(
                    "temporarily_unavailable",
                    "too many sign-ins in progress",
                ));
            }
        }
        Ok(pending)
    }
}

/// `GET /oauth/authorize`: the login page, or an error.
pub(crate) async fn authorize_page(
    State(svc): State<Arc<TokenService>>,
    query: Result<Query<AuthorizeQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The sign-in request is malformed (each parameter may appear once).",
        );
    };
    let now = unix_now();
    match svc.start_login(q, now).await {
        Ok(pending) => {
            let request_id = crate::grants::new_opaque_token();
            let page = login_page(&pending, &request_id, None);
            let cookie = csrf_cookie(&pending.csrf, svc.cfg.login_page_ttl_secs);
            svc.logins.map.insert(request_id, pending);
            html(StatusCode::OK, page, Some(cookie))
        }
        Err(outcome) => outcome.into_response(),
    }
}

/// `POST /oauth/authorize`: checks CSRF and the password, then redirects with a code.
pub(crate) async fn authorize_submit(
    State(svc): State<Arc<TokenService>>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return error_page(StatusCode::BAD_REQUEST, "The sign-in form is malformed.");
    };
    let now = unix_now();
    let request_id = form.request.unwrap_or_default();
    let pending = match svc.logins.map.get(&request_id).map(|p| p.clone()) {
        Some(p) if p.expires_at > now => p,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in page has expired. Start again from your application.",
            )
        }
    };
    let csrf_ok = |presented: Option<&str>| {
        presented.is_some_and(|c| bool::from(c.as_bytes().ct_eq(pending.csrf.as_bytes())))
    };
    if !csrf_ok(form.csrf.as_deref()) || !csrf_ok(cookie(&headers, CSRF_COOKIE)) {
        tracing::warn!(addr = ?addr, "login form failed the CSRF check");
        return error_page(
            StatusCode::FORBIDDEN,
            "The sign-in form was not sent from this server's page. Start again from your application.",
        );
    }
    if form.action.as_deref() == Some("cancel") {
        svc.logins.map.remove(&request_id);
        return svc
            .error_redirect(
                &pending.redirect_uri,
                "access_denied",
                "the user cancelled the sign-in",
                pending.state.as_deref(),
            )
            .into_response();
    }
    let username = form.username.unwrap_or_default();
    let password = form.password.unwrap_or_default();
    if username.is_empty() || password.is_empty() || username.len() > 256 || password.len() > 1024 {
        return retry_page(&pending, &request_id, BAD_CREDENTIALS_TEXT);
    }
    match svc.check_password(&username, &password, addr, now).await {
        Ok(true) => {}
        Ok(false) => return retry_page(&pending, &request_id, BAD_CREDENTIALS_TEXT),
        Err(GrantError::TooManyAttempts(wait)) => {
            let text = format!("Too many failed attempts. Try again in {wait} seconds.");
            return retry_page(&pending, &request_id, &text);
        }
        Err(e) => {
            tracing::error!(error = %e, "login failed");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server failed; try again later.",
            );
        }
    }
    // One login per page: a second post of the same form finds nothing.
    if svc.logins.map.remove(&request_id).is_none() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in page has already been used. Start again from your application.",
        );
    }
    let code = svc.codes.issue(
        CodeGrant {
            client_id: pending.client_id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            user: username.clone(),
            scope: pending.scope.clone(),
            code_challenge: pending.code_challenge.clone(),
            expires_at: now.saturating_add(svc.cfg.auth_code_ttl_secs),
        },
        now,
    );
    tracing::info!(user = %username, client_id = %pending.client_id, "authorization code issued");
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = pending.state.as_deref() {
        params.push(("state", s));
    }
    params.push(("iss", &svc.cfg.issuer));
    Outcome::Redirect(with_query(&pending.redirect_uri, &params)).into_response()
}

/// The same words whether the name exists or not.
const BAD_CREDENTIALS_TEXT: &str = "Invalid username or password.";

fn retry_page(pending: &Pending, request_id: &str, message: &str) -> Response {
    html(
        StatusCode::OK,
        login_page(pending, request_id, Some(message)),
        None,
    )
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        match self {
            Outcome::Page(status, text) => error_page(status, text),
            Outcome::Redirect(location) => (
                StatusCode::SEE_OTHER,
                [(LOCATION, location), (CACHE_CONTROL, "no-store".to_owned())],
            )
                .into_response(),
        }
    }
}

fn csrf_cookie(value: &str, max_age: i64) -> String {
    format!("{CSRF_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}")
}

/// Headers of every page: no caching, no framing, no scripts, no referrer leaking the query.
fn html(status: StatusCode, body: String, set_cookie: Option<String>) -> Response {
    let mut headers: Vec<(HeaderName, String)> = vec![
        (CONTENT_TYPE, "text/html; charset=utf-8".into()),
        (CACHE_CONTROL, "no-store".into()),
        (
            HeaderName::from_static("content-security-policy"),
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
                .into(),
        ),
        (HeaderName::from_static("x-frame-options"), "DENY".into()),
        (HeaderName::from_static("referrer-policy"), "no-referrer".into()),
        (
            HeaderName::from_static("x-content-type-options"),
            "nosniff".into(),
        ),
    ];
    if let Some(c) = set_cookie {
        headers.push((SET_COOKIE, c));
    }
    let mut resp = (status, body).into_response();
    for (name, value) in headers {
        if let Ok(v) = value.parse() {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

const STYLE: &str = "body{font-family:sans-serif;max-width:24em;margin:3em auto;padding:0 1em}\
label{display:block;margin-top:1em}input{width:100%;padding:.4em;box-sizing:border-box}\
.error{color:#a00}button{margin-top:1.5em;padding:.5em 1.2em}";

fn login_page(p: &Pending, request_id: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| {
            format!(
                r#"<p class="error" role="alert" id="error">{}</p>"#,
                html_escape(e)
            )
        })
        .unwrap_or_default();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Sign in — sipreg</title><style>{STYLE}</style></head>
<body><h1>Sign in</h1>
<p><strong>{client}</strong> asks to use your account for: <code>{scope}</code></p>
{error}<form method="post" action="/oauth/authorize" id="login">
<input type="hidden" name="request" value="{request}">
<input type="hidden" name="csrf" value="{csrf}">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" name="action" value="login" id="submit">Sign in</button>
<button type="submit" name="action" value="cancel" formnovalidate>Cancel</button>
</form></body></html>
"#,
        client = html_escape(&p.client_name),
        scope = html_escape(&p.scope),
        request = html_escape(request_id),
        csrf = html_escape(&p.csrf),
    )
}

fn error_page(status: StatusCode, text: &str) -> Response {
    let body = format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in error — sipreg</title>
<style>{STYLE}</style></head>
<body><h1>Cannot sign in</h1><p class="error" id="error">{}</p></body></html>
"#,
        html_escape(text)
    );
    html(status, body, None)
}
