//! The HTTP face of the token service: `POST /oauth/token` (RFC 6749 §3.2, §5) and
//! `GET /oauth/jwks.json`, with the one mapping of [`GrantError`] to status and JSON.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, PRAGMA};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::{GrantError, TokenService};

/// Token endpoint path.
const TOKEN_PATH: &str = "/oauth/token";
/// JWK Set path.
const JWKS_PATH: &str = "/oauth/jwks.json";

/// The form of a token request; unknown parameters are ignored (RFC 6749 §3.2).
#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

impl TokenService {
    /// The axum router serving `POST /oauth/token` and `GET /oauth/jwks.json`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(TOKEN_PATH, post(token))
            .route(JWKS_PATH, get(jwks))
            .with_state(self)
    }

    /// Dispatches a token request by `grant_type`.
    async fn token_request(
        &self,
        req: TokenRequest,
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
            "password" => {
                let client_id = required(req.client_id, "missing client_id")?;
                let username = required(req.username, "missing username")?;
                let password = required(req.password, "missing password")?;
                self.password_grant(&username, &password, &client_id, scope.as_deref(), now)
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
}

async fn token(
    State(svc): State<Arc<TokenService>>,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Response {
    let result = match form {
        Ok(Form(req)) => svc.token_request(req, unix_now()).await,
        Err(_) => Err(GrantError::InvalidRequest(
            "expected an application/x-www-form-urlencoded body with each parameter at most once",
        )),
    };
    match result {
        Ok(tokens) => (StatusCode::OK, no_store(), Json(tokens)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn jwks(State(svc): State<Arc<TokenService>>) -> Response {
    ([(CACHE_CONTROL, "max-age=300")], Json(svc.keys.jwks())).into_response()
}

/// RFC 6749 §5.1: responses carrying tokens must not be cached.
fn no_store() -> [(axum::http::HeaderName, &'static str); 2] {
    [(CACHE_CONTROL, "no-store"), (PRAGMA, "no-cache")]
}

impl IntoResponse for GrantError {
    fn into_response(self) -> Response {
        let status = match &self {
            GrantError::InvalidClient => StatusCode::UNAUTHORIZED,
            GrantError::Server(inner) => {
                tracing::error!(error = %inner, "token request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_REQUEST,
        };
        let body = json!({ "error": self.error_code(), "error_description": self.to_string() });
        (status, no_store(), Json(body)).into_response()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
            ("grant_type=authorization_code&code=x&client_id=softphone", StatusCode::BAD_REQUEST, "unsupported_grant_type"),
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
}
