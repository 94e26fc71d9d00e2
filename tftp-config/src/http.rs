//! The HTTP faces of the config service: plain HTTP (Unified CM's TCP 6970) and the
//! token-protected HTTPS variant (TCP 6971), both serving from one [`ConfigFiles`].
//!
//! GET and HEAD only (405 otherwise); names case-insensitive; 400 for names that are not plain
//! file names, 404 for unknown files; `ETag`/`If-None-Match` and
//! `Last-Modified`/`If-Modified-Since` answered with 304 (RFC 9110 §13).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use sipreg_store::Directory;

use crate::auth::{may_fetch, token_user, Denied, TokenCheck};
use crate::fetches::{FetchResult, FetchTransport};
use crate::files::{ConfigFile, ConfigFiles, LookupError};

/// The `Content-Type` of every `.cnf.xml` file.
pub const CONTENT_TYPE: &str = "text/xml";

/// Plain HTTP config service (port 6970) over its own [`ConfigFiles`] for `directory`.
pub fn router(directory: Directory) -> Router {
    router_for(Arc::new(ConfigFiles::new(directory)))
}

/// Plain HTTP config service (port 6970): GET and HEAD `/{file}` for anyone, from `files`
/// (share one [`ConfigFiles`] between transports so each change is rendered once).
pub fn router_for(files: Arc<ConfigFiles>) -> Router {
    Router::new()
        .route("/{file}", get(plain_file))
        .with_state(files)
}

/// HTTPS config service (port 6971): like [`router`], but only for a valid bearer access token
/// whose user owns the device (401 without or with an invalid token, 403 for someone else's).
pub fn secure_router(files: Arc<ConfigFiles>, check: Arc<dyn TokenCheck>) -> Router {
    Router::new()
        .route("/{file}", get(secure_file))
        .with_state((files, check))
}

async fn plain_file(
    State(files): State<Arc<ConfigFiles>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match files.fetch(FetchTransport::Http, &name) {
        // Clients must see a changed file at once: they revalidate with the ETag every time.
        Ok(file) => respond(&file, &headers, "no-cache"),
        Err(e) => lookup_failed(e),
    }
}

async fn secure_file(
    State((files, check)): State<(Arc<ConfigFiles>, Arc<dyn TokenCheck>)>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    // Authenticate before looking anything up, so an anonymous caller learns nothing about names.
    let stats = files.fetch_stats();
    let user = match token_user(&headers, check.as_ref(), unix_now()) {
        Ok(user) => user,
        Err(denied) => {
            stats.count(FetchTransport::Https, FetchResult::Denied);
            return refuse(&denied);
        }
    };
    let file = match files.fetch(FetchTransport::Https, &name) {
        Ok(file) => file,
        Err(e) => return lookup_failed(e),
    };
    if let Err(denied) = may_fetch(&user, &file) {
        stats.count(FetchTransport::Https, FetchResult::Denied);
        return refuse(&denied);
    }
    stats.count(FetchTransport::Https, FetchResult::Ok);
    respond(&file, &headers, "private, no-cache")
}

fn respond(file: &ConfigFile, request: &HeaderMap, cache_control: &'static str) -> Response {
    // The header values were built with the file: a response costs reference counts, not copies
    // of the 22 KB body or formatting of the date.
    let modified = !not_modified(file, request);
    let mut response = if modified {
        Response::new(Body::from(file.http_body.clone()))
    } else {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    };
    let headers = response.headers_mut();
    headers.reserve(4);
    if let Some(etag) = &file.etag_header {
        headers.insert(header::ETAG, etag.clone());
    }
    if let Some(date) = &file.last_modified_header {
        headers.insert(header::LAST_MODIFIED, date.clone());
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if modified {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
    }
    response
}

/// RFC 9110 §13.1.2–§13.1.3: `If-None-Match` (weak comparison) wins over `If-Modified-Since`.
fn not_modified(file: &ConfigFile, request: &HeaderMap) -> bool {
    let mut inm = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        return inm
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim())
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == file.etag);
    }
    request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| file.last_modified <= since)
}

fn lookup_failed(e: LookupError) -> Response {
    match e {
        LookupError::BadName => StatusCode::BAD_REQUEST,
        LookupError::NotFound => StatusCode::NOT_FOUND,
        LookupError::Render => StatusCode::INTERNAL_SERVER_ERROR,
    }
    .into_response()
}

/// 401 with an RFC 6750 §3 challenge, or 403.
fn refuse(denied: &Denied) -> Response {
    let challenge = match denied {
        Denied::NoToken => "Bearer realm=\"sipreg device config\"".to_owned(),
        Denied::InvalidToken(why) => format!(
            "Bearer realm=\"sipreg device config\", error=\"invalid_token\", error_description=\"{}\"",
            why.replace(['"', '\\'], "'")
        ),
        Denied::NotOwner => return (StatusCode::FORBIDDEN, denied.to_string()).into_response(),
    };
    let value = HeaderValue::from_str(&challenge)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"sipreg device config\""));
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, value)],
        denied.to_string(),
    )
        .into_response()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::FakeCheck;
    use crate::test_support::{fixture, parse};
    use axum::body::to_bytes;
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    impl Reply {
        fn header(&self, name: header::HeaderName) -> Option<&str> {
            self.headers.get(name).map(|v| v.to_str().unwrap())
        }
    }

    async fn send(app: &Router, method: Method, uri: &str, extra: &[(&str, &str)]) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    fn plain(f: &crate::test_support::Fixture) -> Router {
        router(f.directory.clone())
    }

    #[tokio::test]
    async fn get_serves_the_rendered_file_case_insensitively() {
        let f = fixture(true).await;
        let app = plain(&f);
        for uri in ["/CSFjdoe.cnf.xml", "/csfjdoe.cnf.xml", "/CSFJDOE.CNF.XML"] {
            let r = send(&app, Method::GET, uri, &[]).await;
            assert_eq!(r.status, StatusCode::OK, "{uri}");
            assert_eq!(r.header(header::CONTENT_TYPE), Some(CONTENT_TYPE));
            assert_eq!(r.header(header::CACHE_CONTROL), Some("no-cache"));
            let snap = f.directory.snapshot();
            assert_eq!(
                r.body,
                crate::render_device_config(snap.device("CSFjdoe").unwrap(), &snap)
            );
        }
        let r = send(&app, Method::GET, "/SEP001122334455.cnf.xml", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(parse(&r.body).at(&["sipOAuthMode"]), "0");
        let r = send(&app, Method::GET, "/xmldefault.cnf.xml", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = send(&app, Method::GET, "/ConfigFileCacheList.txt", &[]).await;
        assert_eq!(r.header(header::CONTENT_TYPE), Some("text/plain"));
        assert!(r.body.contains("CSFjdoe.cnf.xml\n"), "{}", r.body);
    }

    #[tokio::test]
    async fn head_has_headers_and_no_body() {
        let f = fixture(false).await;
        let app = plain(&f);
        let get = send(&app, Method::GET, "/CSFjdoe.cnf.xml", &[]).await;
        let r = send(&app, Method::HEAD, "/CSFjdoe.cnf.xml", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header(header::CONTENT_TYPE), Some(CONTENT_TYPE));
        assert_eq!(r.header(header::ETAG), get.header(header::ETAG));
        assert_eq!(
            r.header(header::CONTENT_LENGTH),
            Some(get.body.len().to_string().as_str())
        );
        assert!(r.body.is_empty());
        let r = send(&app, Method::HEAD, "/CSFnobody.cnf.xml", &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn conditional_requests_answer_304_until_the_file_changes() {
        let f = fixture(false).await;
        let app = plain(&f);
        let first = send(&app, Method::GET, "/CSFjdoe.cnf.xml", &[]).await;
        let etag = first.header(header::ETAG).unwrap().to_owned();
        let lm = first.header(header::LAST_MODIFIED).unwrap().to_owned();
        assert!(httpdate::parse_http_date(&lm).is_ok(), "{lm}");

        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("if-none-match", &etag)],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert!(r.body.is_empty());
        assert_eq!(r.header(header::ETAG), Some(etag.as_str()));
        let weak_list = format!("\"other\", W/{etag}");
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("if-none-match", &weak_list)],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        let r = send(
            &app,
            Method::HEAD,
            "/CSFjdoe.cnf.xml",
            &[("if-none-match", "*")],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("if-none-match", "\"stale\"")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, first.body);

        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("if-modified-since", &lm)],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        // A non-matching ETag wins over a matching date (RFC 9110 §13.1.3).
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("if-none-match", "\"stale\""), ("if-modified-since", &lm)],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("if-modified-since", "garbage")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);

        use sipreg_store::Store;
        f.store.set_oauth_mode(true).await.unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("if-none-match", &etag)],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "changed file: full answer");
        assert_ne!(r.header(header::ETAG), Some(etag.as_str()));
        assert_eq!(parse(&r.body).at(&["sipOAuthMode"]), "1");
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("if-modified-since", &lm)],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "Last-Modified moved on");
    }

    #[tokio::test]
    async fn unknown_devices_and_files_are_404() {
        let f = fixture(false).await;
        let app = plain(&f);
        for uri in [
            "/CSFnobody.cnf.xml",
            "/CSFjdoe.cnf.xml.sgn",
            "/CSFjdoe.xml",
            "/CSFjdoe",
            "/cnf.xml",
            "/a.b.cnf.xml",
            "/",
            "/dir/CSFjdoe.cnf.xml",
        ] {
            assert_eq!(
                send(&app, Method::GET, uri, &[]).await.status,
                StatusCode::NOT_FOUND,
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn traversal_and_odd_names_are_rejected() {
        let f = fixture(false).await;
        let app = plain(&f);
        for uri in [
            "/..%2F..%2Fetc%2Fpasswd",
            "/..%2FCSFjdoe.cnf.xml",
            "/CSF%00jdoe.cnf.xml",
            "/CSF%20jdoe.cnf.xml",
            "/..cnf.xml",
            "/.cnf.xml",
            "/%2Fetc%2Fpasswd",
        ] {
            assert_eq!(
                send(&app, Method::GET, uri, &[]).await.status,
                StatusCode::BAD_REQUEST,
                "{uri}"
            );
        }
        let long = format!("/{}.cnf.xml", "A".repeat(100));
        assert_eq!(
            send(&app, Method::GET, &long, &[]).await.status,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn other_methods_are_405() {
        let f = fixture(false).await;
        let app = plain(&f);
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(
                send(&app, m.clone(), "/CSFjdoe.cnf.xml", &[]).await.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{m}"
            );
        }
    }

    #[tokio::test]
    async fn https_needs_the_owners_token() {
        let f = fixture(true).await;
        {
            use sipreg_store::{Store, User};
            f.store
                .create_user(&User {
                    id: "mallory".into(),
                    password_hash: String::new(),
                    created_at: 0,
                })
                .await
                .unwrap();
            f.directory.reload(f.store.as_ref()).await.unwrap();
        }
        let app = secure_router(
            Arc::new(ConfigFiles::new(f.directory.clone())),
            Arc::new(FakeCheck),
        );
        let r = send(&app, Method::GET, "/CSFjdoe.cnf.xml", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.header(header::WWW_AUTHENTICATE),
            Some("Bearer realm=\"sipreg device config\"")
        );
        let r = send(&app, Method::GET, "/CSFnobody.cnf.xml", &[]).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "no name probing without a token"
        );
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("authorization", "Bearer forged")],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r
            .header(header::WWW_AUTHENTICATE)
            .unwrap()
            .contains("error=\"invalid_token\""));
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("authorization", "Bearer token-mallory")],
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(!r.body.contains("<device"));
        let r = send(
            &app,
            Method::GET,
            "/CSFjdoe.cnf.xml",
            &[("authorization", "Bearer token-jdoe")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header(header::CACHE_CONTROL), Some("private, no-cache"));
        assert_eq!(parse(&r.body).at(&["userId"]), "jdoe");
        let etag = r.header(header::ETAG).unwrap().to_owned();
        let r = send(
            &app,
            Method::GET,
            "/csfjdoe.cnf.xml",
            &[
                ("authorization", "Bearer token-jdoe"),
                ("if-none-match", &etag),
            ],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        let r = send(
            &app,
            Method::GET,
            "/XMLDefault.cnf.xml",
            &[("authorization", "Bearer token-mallory")],
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "a file about no one goes to any user"
        );
        let r = send(
            &app,
            Method::GET,
            "/CSFnobody.cnf.xml",
            &[("authorization", "Bearer token-jdoe")],
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
}
