//! The HTTP face of the token service, with the one mapping of [`GrantError`] to status and JSON:
//! `POST /oauth/token` (RFC 6749 §3.2, §5), `GET|POST /oauth/authorize` (the login page, see
//! [`authorize`](crate::authorize)), `POST /oauth/revoke` (RFC 7009), `POST /oauth/introspect`
//! (RFC 7662), `GET /oauth/jwks.json` and `GET /.well-known/oauth-authorization-server` (RFC 8414).

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sipreg_store::RefreshUse;
use subtle::ConstantTimeEq;

use crate::authorize::{authorize_page, authorize_submit};
use crate::grants::refresh_token_hash;
use crate::validator::MAX_TOKEN_LEN;
use crate::web::{unix_now, ClientAddr};
use crate::{GrantError, TokenService};

/// Token endpoint path.
const TOKEN_PATH: &str = "/oauth/token";
/// Authorization endpoint path (the login page).
const AUTHORIZE_PATH: &str = "/oauth/authorize";
/// Revocation endpoint path.
const REVOKE_PATH: &str = "/oauth/revoke";
/// Introspection endpoint path.
const INTROSPECT_PATH: &str = "/oauth/introspect";
/// JWK Set path.
const JWKS_PATH: &str = "/oauth/jwks.json";
/// RFC 8414 §3: the metadata path for an issuer without a path component.
const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// The form of a token request; unknown parameters are ignored (RFC 6749 §3.2).
#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
}

/// The form of a revocation or introspection request.
#[derive(Deserialize)]
struct TokenForm {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
}

impl TokenService {
    /// The axum router of every OAuth endpoint above.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(TOKEN_PATH, post(token))
            .route(AUTHORIZE_PATH, get(authorize_page).post(authorize_submit))
            .route(REVOKE_PATH, post(revoke))
            .route(INTROSPECT_PATH, post(introspect))
            .route(JWKS_PATH, get(jwks))
            .route(METADATA_PATH, get(metadata))
            .with_state(self)
    }

    /// RFC 8414 §2 metadata; lists only what this server does.
    pub fn metadata(&self) -> Value {
        let iss = &self.cfg.issuer;
        // The cluster's switches, as they are now: discovery follows a change at once.
        let live = self.live();
        let mut grants = vec!["authorization_code"];
        if live.refresh_login {
            grants.push("refresh_token");
        }
        if live.password_grant {
            grants.push("password");
        }
        json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}{AUTHORIZE_PATH}"),
            "token_endpoint": format!("{iss}{TOKEN_PATH}"),
            "jwks_uri": format!("{iss}{JWKS_PATH}"),
            "revocation_endpoint": format!("{iss}{REVOKE_PATH}"),
            "introspection_endpoint": format!("{iss}{INTROSPECT_PATH}"),
            "scopes_supported": [crate::REGISTER_SCOPE],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": grants,
            "code_challenge_methods_supported": [crate::pkce::S256],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "introspection_endpoint_auth_methods_supported": ["bearer"],
            "authorization_response_iss_parameter_supported": true,
        })
    }

    /// Dispatches a token request by `grant_type`.
    async fn token_request(
        &self,
        req: TokenRequest,
        addr: Option<std::net::IpAddr>,
        now: i64,
    ) -> Result<crate::TokenResponse, GrantError> {
        // RFC 6749 §3.1: a parameter sent without a value counts as omitted.
        let given = |v: Option<String>| v.filter(|s| !s.is_empty());
        let required = |v: Option<String>, missing: &'static str| {
            given(v).ok_or(GrantError::InvalidRequest(missing))
        };
        let grant_type = required(req.grant_type, "missing grant_type")?;
        let scope = given(req.scope);
        match grant_type.as_str() {
            "authorization_code" => {
                let client_id = required(req.client_id, "missing client_id")?;
                let code = required(req.code, "missing code")?;
                let verifier = required(req.code_verifier, "missing code_verifier")?;
                let redirect_uri = given(req.redirect_uri);
                self.authorization_code_grant(
                    &code,
                    redirect_uri.as_deref(),
                    &client_id,
                    &verifier,
                    now,
                )
                .await
            }
            "password" => {
                let client_id = required(req.client_id, "missing client_id")?;
                let username = required(req.username, "missing username")?;
                let password = required(req.password, "missing password")?;
                self.password_grant(
                    &username,
                    &password,
                    &client_id,
                    scope.as_deref(),
                    addr,
                    now,
                )
                .await
            }
            "refresh_token" => {
                let client_id = required(req.client_id, "missing client_id")?;
                let refresh_token = required(req.refresh_token, "missing refresh_token")?;
                self.refresh_grant(&refresh_token, &client_id, scope.as_deref(), now)
                    .await
            }
            _ => Err(GrantError::UnsupportedGrantType),
        }
    }

    /// RFC 7009 §2.1: revokes a refresh token (its whole family) or an access token (its `jti`,
    /// until it expires). Unknown and invalid tokens are not an error (§2.2).
    async fn revoke_token(&self, form: TokenForm, now: i64) -> Result<(), GrantError> {
        let client_id = form
            .client_id
            .filter(|c| !c.is_empty())
            .ok_or(GrantError::InvalidRequest("missing client_id"))?;
        let client = self.client(&client_id).await?;
        let token = form
            .token
            .filter(|t| !t.is_empty())
            .ok_or(GrantError::InvalidRequest("missing token"))?;
        if token.len() > MAX_TOKEN_LEN {
            return Ok(());
        }
        if token.contains('.') {
            // Ours and valid: only its own client may revoke it.
            if let Ok(claims) = self.validator.validate(&token, now) {
                if claims.client_id == client.id {
                    self.validator.revoke_jti(&claims.jti, claims.exp, now);
                    tracing::info!(user = %claims.sub, client_id = %claims.client_id, "access token revoked");
                }
            }
            return Ok(());
        }
        match self
            .store
            .use_refresh_token(&refresh_token_hash(&token), now)
            .await?
        {
            // Presenting it marked it used; dropping the family ends the whole login. A token of
            // another client is revoked too: whoever sends it holds a leaked copy.
            RefreshUse::Fresh(t) | RefreshUse::Reused(t) => {
                self.revoke_family(&t, "refresh token revoked").await?
            }
            RefreshUse::Unknown => {}
        }
        Ok(())
    }

    /// Whether the request carries one of the introspection bearer secrets.
    fn introspection_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(secret) = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let digest = Sha256::digest(secret.trim().as_bytes());
        self.introspection_secrets
            .iter()
            .fold(false, |any, s| any | bool::from(s.ct_eq(digest.as_slice())))
    }

    /// RFC 7662 §2.2: what a resource server may know about an access token.
    fn introspect_token(&self, token: &str, now: i64) -> Value {
        match self.validator.validate(token, now) {
            Ok(c) => json!({
                "active": true,
                "token_type": "Bearer",
                "sub": c.sub,
                "username": c.sub,
                "client_id": c.client_id,
                "scope": c.scope,
                "iat": c.iat,
                "exp": c.exp,
                "jti": c.jti,
                "iss": self.cfg.issuer,
                "aud": self.cfg.audience,
            }),
            // §2.2: nothing about why; a refresh token is never introspectable here.
            Err(_) => json!({ "active": false }),
        }
    }
}

async fn token(
    State(svc): State<Arc<TokenService>>,
    ClientAddr(addr): ClientAddr,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Response {
    let (grant, result) = match form {
        Ok(Form(req)) => {
            let grant = crate::metrics::grant_index(req.grant_type.as_deref());
            (grant, svc.token_request(req, addr, unix_now()).await)
        }
        Err(_) => (crate::metrics::grant_index(None), Err(bad_form())),
    };
    svc.metrics.count(grant, &result);
    match result {
        Ok(tokens) => (StatusCode::OK, no_store(), Json(tokens)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn bad_form() -> GrantError {
    GrantError::InvalidRequest(
        "expected an application/x-www-form-urlencoded body with each parameter at most once",
    )
}

async fn revoke(
    State(svc): State<Arc<TokenService>>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let result = match form {
        Ok(Form(f)) => svc.revoke_token(f, unix_now()).await,
        Err(_) => Err(bad_form()),
    };
    match result {
        Ok(()) => (StatusCode::OK, no_store()).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn introspect(
    State(svc): State<Arc<TokenService>>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    if !svc.introspection_allowed(&headers) {
        let body = json!({"error": "invalid_client", "error_description": "introspection needs `Authorization: Bearer <resource server secret>`"});
        return (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer realm=\"introspection\"")],
            no_store(),
            Json(body),
        )
            .into_response();
    }
    let token = match form {
        Ok(Form(TokenForm { token: Some(t), .. })) if !t.is_empty() => t,
        Ok(_) => return GrantError::InvalidRequest("missing token").into_response(),
        Err(_) => return bad_form().into_response(),
    };
    (
        StatusCode::OK,
        no_store(),
        Json(svc.introspect_token(&token, unix_now())),
    )
        .into_response()
}

async fn jwks(State(svc): State<Arc<TokenService>>) -> Response {
    ([(CACHE_CONTROL, "max-age=300")], Json(svc.keys.jwks())).into_response()
}

async fn metadata(State(svc): State<Arc<TokenService>>) -> Response {
    ([(CACHE_CONTROL, "max-age=3600")], Json(svc.metadata())).into_response()
}

/// RFC 6749 §5.1: responses carrying tokens must not be cached.
fn no_store() -> [(axum::http::HeaderName, &'static str); 2] {
    [(CACHE_CONTROL, "no-store"), (PRAGMA, "no-cache")]
}

impl IntoResponse for GrantError {
    fn into_response(self) -> Response {
        let status = match &self {
            GrantError::InvalidClient => StatusCode::UNAUTHORIZED,
            GrantError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            GrantError::Server(inner) => {
                tracing::error!(error = %inner, "token request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        };
        let body = json!({ "error": self.error_code(), "error_description": self.to_string() });
        let mut resp = (status, no_store(), Json(body)).into_response();
        if let GrantError::TooManyAttempts(wait) = self {
            if let Ok(v) = wait.to_string().parse() {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::tests::fixture;
    use axum::body::{to_bytes, Body};
    use axum::http::{header, Request};
    use serde_json::Value;
    use tower::ServiceExt;

    async fn post_form(router: &Router, body: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
        let req = Request::post(TOKEN_PATH)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap();
        send(router, req).await
    }

    async fn send(
        router: &Router,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let resp = router.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = to_bytes(body, 1 << 20).await.unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (parts.status, parts.headers, json)
    }

    fn assert_error(
        got: &(StatusCode, axum::http::HeaderMap, Value),
        status: StatusCode,
        code: &str,
    ) {
        assert_eq!(got.0, status, "{}", got.2);
        assert_eq!(got.2["error"], code, "{}", got.2);
        assert!(got.2["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
        assert_eq!(got.1[CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn password_then_refresh_over_http() {
        let f = fixture().await;
        let router = f.service.clone().router();
        let (status, headers, body) = post_form(
            &router,
            "grant_type=password&username=jdoe&password=secret&client_id=softphone",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(headers[PRAGMA], "no-cache");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["scope"], "sip:register");
        let access = body["access_token"].as_str().unwrap();
        assert_eq!(
            f.validator.validate(access, unix_now()).unwrap().sub,
            "jdoe"
        );

        let refresh = body["refresh_token"].as_str().unwrap().to_owned();
        let form = format!("grant_type=refresh_token&refresh_token={refresh}&client_id=softphone");
        let (status, _, renewed) = post_form(&router, &form).await;
        assert_eq!(status, StatusCode::OK, "{renewed}");
        assert_ne!(renewed["refresh_token"], refresh.as_str());
        assert_error(
            &post_form(&router, &form).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        );
    }

    #[tokio::test]
    async fn token_endpoint_errors_follow_rfc6749() {
        let f = fixture().await;
        let router = f.service.clone().router();
        let bad_password = post_form(
            &router,
            "grant_type=password&username=jdoe&password=nope&client_id=softphone",
        )
        .await;
        assert_error(&bad_password, StatusCode::BAD_REQUEST, "invalid_grant");
        let unknown_user = post_form(
            &router,
            "grant_type=password&username=ghost&password=nope&client_id=softphone",
        )
        .await;
        assert_error(&unknown_user, StatusCode::BAD_REQUEST, "invalid_grant");
        assert_eq!(
            bad_password.2, unknown_user.2,
            "identical bodies: no user enumeration"
        );

        let cases = [
            ("grant_type=password&username=jdoe&password=secret&client_id=evil", StatusCode::UNAUTHORIZED, "invalid_client"),
            ("grant_type=password&username=jdoe&password=secret", StatusCode::BAD_REQUEST, "invalid_request"),
            ("grant_type=password&username=jdoe&client_id=softphone", StatusCode::BAD_REQUEST, "invalid_request"),
            ("grant_type=password&username=jdoe&password=&client_id=softphone", StatusCode::BAD_REQUEST, "invalid_request"),
            ("username=jdoe&password=secret&client_id=softphone", StatusCode::BAD_REQUEST, "invalid_request"),
            ("grant_type=client_credentials&client_id=softphone", StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            ("grant_type=authorization_code&code=x&client_id=softphone", StatusCode::BAD_REQUEST, "invalid_request"),
            ("grant_type=authorization_code&code=x&client_id=softphone&code_verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", StatusCode::BAD_REQUEST, "invalid_grant"),
            ("grant_type=implicit&client_id=softphone", StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            ("grant_type=password&username=jdoe&password=secret&client_id=softphone&scope=admin", StatusCode::BAD_REQUEST, "invalid_scope"),
            ("grant_type=refresh_token&client_id=softphone", StatusCode::BAD_REQUEST, "invalid_request"),
            ("grant_type=refresh_token&refresh_token=bogus&client_id=softphone", StatusCode::BAD_REQUEST, "invalid_grant"),
            ("grant_type=password&grant_type=password&username=jdoe&password=secret&client_id=softphone", StatusCode::BAD_REQUEST, "invalid_request"),
        ];
        for (form, status, code) in cases {
            let got = post_form(&router, form).await;
            assert_eq!(got.0, status, "{form}: {}", got.2);
            assert_eq!(got.2["error"], code, "{form}");
        }
    }

    #[tokio::test]
    async fn a_json_body_is_an_invalid_request() {
        let f = fixture().await;
        let req = Request::post(TOKEN_PATH)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"grant_type":"password"}"#))
            .unwrap();
        assert_error(
            &send(&f.service.clone().router(), req).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }

    #[tokio::test]
    async fn jwks_is_served_cacheable_and_public_only() {
        let f = fixture().await;
        let req = Request::get(JWKS_PATH).body(Body::empty()).unwrap();
        let (status, headers, body) = send(&f.service.clone().router(), req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CACHE_CONTROL], "max-age=300");
        assert_eq!(body, f.service.keys.jwks());
        let key = &body["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert!(key.get("d").is_none());
        assert!(!body.to_string().contains("PRIVATE"));
    }

    #[tokio::test]
    async fn the_token_endpoint_only_takes_post() {
        let f = fixture().await;
        let req = Request::get(TOKEN_PATH).body(Body::empty()).unwrap();
        let (status, _, _) = send(&f.service.clone().router(), req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    async fn send_raw(router: &Router, req: Request<Body>) -> axum::http::Response<String> {
        let resp = router.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = to_bytes(body, 1 << 20).await.unwrap();
        axum::http::Response::from_parts(parts, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// The value of `name="..." value="..."` in the page.
    fn hidden(page: &str, name: &str) -> String {
        let at = page.find(&format!(r#"name="{name}" value=""#)).unwrap();
        let rest = &page[at + name.len() + 15..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    fn query_param(location: &str, name: &str) -> Option<String> {
        let query = location.split_once('?')?.1;
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.replace("%3A", ":").replace("%2F", "/"))
        })
    }

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const REDIRECT: &str = "http://127.0.0.1:7777/cb";

    fn authorize_url(extra: &str) -> String {
        format!(
            "/oauth/authorize?response_type=code&client_id=softphone&redirect_uri=http%3A%2F%2F127.0.0.1%3A7777%2Fcb&state=xyz&code_challenge={CHALLENGE}&code_challenge_method=S256{extra}"
        )
    }

    /// Opens the login page; returns (request id, csrf, cookie header value).
    async fn open_login(router: &Router) -> (String, String, String) {
        let page = send_raw(
            router,
            Request::get(authorize_url("")).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(page.status(), StatusCode::OK, "{}", page.body());
        assert_eq!(page.headers()["x-frame-options"], "DENY");
        assert!(page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
        assert!(!page.body().contains("<script"), "no JavaScript");
        let cookie = page.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(cookie.starts_with("__Host-sipreg-login="), "{cookie}");
        for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        let cookie = cookie.split(';').next().unwrap().to_owned();
        (
            hidden(page.body(), "request"),
            hidden(page.body(), "csrf"),
            cookie,
        )
    }

    fn login_post(body: String, cookie: Option<&str>) -> Request<Body> {
        let mut req = Request::post("/oauth/authorize")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        req.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn the_login_page_gives_a_code_that_the_token_endpoint_exchanges_with_pkce() {
        let f = fixture().await;
        let router = f.service.clone().router();
        let (request, csrf, cookie) = open_login(&router).await;

        let wrong =
            format!("request={request}&csrf={csrf}&username=jdoe&password=nope&action=login");
        let page = send_raw(&router, login_post(wrong, Some(&cookie))).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.body().contains("Invalid username or password."));
        let ghost =
            format!("request={request}&csrf={csrf}&username=ghost&password=nope&action=login");
        let ghost_page = send_raw(&router, login_post(ghost, Some(&cookie))).await;
        assert_eq!(
            ghost_page.body(),
            page.body(),
            "an unknown user looks exactly like a wrong password"
        );

        let good =
            format!("request={request}&csrf={csrf}&username=jdoe&password=secret&action=login");
        let resp = send_raw(&router, login_post(good.clone(), Some(&cookie))).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{}", resp.body());
        let location = resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            location.starts_with(&format!("{REDIRECT}?code=")),
            "{location}"
        );
        assert_eq!(query_param(&location, "state").as_deref(), Some("xyz"));
        assert_eq!(
            query_param(&location, "iss").as_deref(),
            Some(f.service.config().issuer.as_str())
        );
        let code = query_param(&location, "code").unwrap();

        let again = send_raw(&router, login_post(good, Some(&cookie))).await;
        assert_eq!(
            again.status(),
            StatusCode::BAD_REQUEST,
            "a page logs in once"
        );

        let exchange = |verifier: &str| {
            format!("grant_type=authorization_code&code={code}&client_id=softphone&redirect_uri=http%3A%2F%2F127.0.0.1%3A7777%2Fcb&code_verifier={verifier}")
        };
        let (status, _, body) = post_form(&router, &exchange(VERIFIER)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let claims = f
            .validator
            .validate(body["access_token"].as_str().unwrap(), unix_now())
            .unwrap();
        assert_eq!(claims.sub, "jdoe");
        assert_error(
            &post_form(&router, &exchange(VERIFIER)).await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        );
    }

    #[tokio::test]
    async fn a_login_form_without_the_csrf_cookie_or_token_is_refused() {
        let f = fixture().await;
        let router = f.service.clone().router();
        let (request, csrf, cookie) = open_login(&router).await;
        let form = |csrf: &str| {
            format!("request={request}&csrf={csrf}&username=jdoe&password=secret&action=login")
        };
        for (body, cookie) in [
            (form(&csrf), None),
            (form(&csrf), Some("__Host-sipreg-login=forged")),
            (form("forged"), Some(cookie.as_str())),
            (form(""), Some(cookie.as_str())),
        ] {
            let resp = send_raw(&router, login_post(body, cookie)).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{cookie:?}");
            assert!(resp.headers().get(header::LOCATION).is_none());
        }
        let resp = send_raw(&router, login_post(form(&csrf), Some(&cookie))).await;
        assert_eq!(
            resp.status(),
            StatusCode::SEE_OTHER,
            "the real form still works"
        );
    }

    #[tokio::test]
    async fn authorization_errors_are_shown_or_redirected_per_rfc6749() {
        let f = fixture().await;
        let router = f.service.clone().router();
        let get = |uri: String| Request::get(uri).body(Body::empty()).unwrap();
        // Client or redirect URI untrusted: an error page, never a redirect.
        for uri in [
            "/oauth/authorize?response_type=code&client_id=evil&redirect_uri=http%3A%2F%2F127.0.0.1%3A7777%2Fcb".to_owned(),
            "/oauth/authorize?response_type=code&client_id=softphone&redirect_uri=https%3A%2F%2Fevil.example%2Fcb".to_owned(),
            "/oauth/authorize?response_type=code&client_id=softphone".to_owned(),
            "/oauth/authorize?response_type=code".to_owned(),
            format!("{}&client_id=softphone", authorize_url("")),
        ] {
            let resp = send_raw(&router, get(uri.clone())).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{uri}");
            assert!(resp.headers().get(header::LOCATION).is_none(), "{uri}");
        }
        // Anything else goes back to the client with `error` and `state`.
        let base = "/oauth/authorize?client_id=softphone&redirect_uri=http%3A%2F%2F127.0.0.1%3A7777%2Fcb&state=s1";
        for (extra, error) in [
            (format!("&response_type=token&code_challenge={CHALLENGE}&code_challenge_method=S256"), "unsupported_response_type"),
            ("&response_type=code".to_owned(), "invalid_request"),
            (format!("&response_type=code&code_challenge={CHALLENGE}"), "invalid_request"),
            (format!("&response_type=code&code_challenge={CHALLENGE}&code_challenge_method=plain"), "invalid_request"),
            ("&response_type=code&code_challenge=short&code_challenge_method=S256".to_owned(), "invalid_request"),
            (format!("&response_type=code&code_challenge={CHALLENGE}&code_challenge_method=S256&scope=admin"), "invalid_scope"),
        ] {
            let resp = send_raw(&router, get(format!("{base}{extra}"))).await;
            assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{extra}");
            let location = resp.headers()[header::LOCATION].to_str().unwrap();
            assert!(location.starts_with(REDIRECT), "{location}");
            assert_eq!(query_param(location, "error").as_deref(), Some(error), "{extra}");
            assert_eq!(query_param(location, "state").as_deref(), Some("s1"));
        }
        // Cancel: access_denied.
        let (request, csrf, cookie) = open_login(&router).await;
        let resp = send_raw(
            &router,
            login_post(
                format!("request={request}&csrf={csrf}&action=cancel"),
                Some(&cookie),
            ),
        )
        .await;
        let location = resp.headers()[header::LOCATION].to_str().unwrap();
        assert_eq!(
            query_param(location, "error").as_deref(),
            Some("access_denied")
        );
    }

    #[tokio::test]
    async fn html_in_the_client_name_is_escaped() {
        let f = fixture().await;
        f.store
            .create_client(&sipreg_store::OAuthClient {
                id: "evil-name".into(),
                name: "<script>alert(1)</script>".into(),
                redirect_uris: vec!["https://app.example/cb".into()],
                scopes: vec!["sip:register".into()],
                created_at: 1,
            })
            .await
            .unwrap();
        let router = f.service.clone().router();
        let uri = format!("/oauth/authorize?response_type=code&client_id=evil-name&code_challenge={CHALLENGE}&code_challenge_method=S256");
        let page = send_raw(&router, Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(!page.body().contains("<script>"));
        assert!(page.body().contains("&lt;script&gt;"));
    }

    #[tokio::test]
    async fn metadata_lists_every_endpoint_under_the_issuer() {
        let f = fixture().await;
        let req = Request::get(METADATA_PATH).body(Body::empty()).unwrap();
        let (status, _, body) = send(&f.service.clone().router(), req).await;
        assert_eq!(status, StatusCode::OK);
        let iss = f.service.config().issuer.clone();
        assert_eq!(body["issuer"], iss.as_str());
        for (k, path) in [
            ("authorization_endpoint", AUTHORIZE_PATH),
            ("token_endpoint", TOKEN_PATH),
            ("jwks_uri", JWKS_PATH),
            ("revocation_endpoint", REVOKE_PATH),
            ("introspection_endpoint", INTROSPECT_PATH),
        ] {
            assert_eq!(body[k], format!("{iss}{path}"), "{k}");
        }
        assert_eq!(body["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            body["grant_types_supported"],
            json!(["authorization_code", "refresh_token", "password"])
        );
    }

    #[tokio::test]
    async fn revoking_a_refresh_token_ends_the_login_and_revoking_an_access_token_bites() {
        let f = fixture().await;
        let router = f.service.clone().router();
        let (_, _, t) = post_form(
            &router,
            "grant_type=password&username=jdoe&password=secret&client_id=softphone",
        )
        .await;
        let refresh = t["refresh_token"].as_str().unwrap();
        let access = t["access_token"].as_str().unwrap();
        let (status, _, _) = post_form_to(
            &router,
            REVOKE_PATH,
            &format!("token={refresh}&client_id=softphone"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_error(
            &post_form(
                &router,
                &format!("grant_type=refresh_token&refresh_token={refresh}&client_id=softphone"),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        );
        assert!(f.validator.validate(access, unix_now()).is_ok());
        // Another client may not revoke it; its own may.
        for (client, revoked) in [("other", false), ("softphone", true)] {
            let (status, _, _) = post_form_to(
                &router,
                REVOKE_PATH,
                &format!("token={access}&client_id={client}"),
            )
            .await;
            let expected = if client == "other" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected);
            assert_eq!(f.validator.validate(access, unix_now()).is_err(), revoked);
        }
        // Unknown tokens are fine (RFC 7009 §2.2); a missing one is not.
        let (status, _, _) =
            post_form_to(&router, REVOKE_PATH, "token=nonsense&client_id=softphone").await;
        assert_eq!(status, StatusCode::OK);
        let got = post_form_to(&router, REVOKE_PATH, "client_id=softphone").await;
        assert_error(&got, StatusCode::BAD_REQUEST, "invalid_request");
    }

    #[tokio::test]
    async fn introspection_needs_the_resource_server_secret() {
        let f = fixture().await;
        let svc = Arc::new(
            TokenService::new(
                f.store.clone(),
                f.service.keys().clone(),
                f.service.config().clone(),
            )
            .with_introspection_secret(Sha256::digest(b"rs-secret").into()),
        );
        let router = svc.clone().router();
        let token = svc
            .issue_access_token("jdoe", "softphone", "sip:register", unix_now())
            .unwrap();
        let call = |auth: Option<&str>, body: String| {
            let mut req = Request::post(INTROSPECT_PATH)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            req.body(Body::from(body)).unwrap()
        };
        for auth in [None, Some("Bearer wrong"), Some("Basic cnMtc2VjcmV0")] {
            let (status, headers, body) = send(&router, call(auth, format!("token={token}"))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert!(headers.contains_key(header::WWW_AUTHENTICATE));
            assert!(body.get("active").is_none(), "nothing leaks");
        }
        let (status, _, body) = send(
            &router,
            call(Some("Bearer rs-secret"), format!("token={token}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["active"], true);
        assert_eq!(body["sub"], "jdoe");
        assert_eq!(body["client_id"], "softphone");
        assert_eq!(body["scope"], "sip:register");
        let (_, _, body) = send(
            &router,
            call(Some("Bearer rs-secret"), "token=garbage".into()),
        )
        .await;
        assert_eq!(body, json!({"active": false}));
    }

    async fn post_form_to(
        router: &Router,
        path: &str,
        body: &str,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap();
        send(router, req).await
    }
}
