//! The HTTP face of the config service (Unified CM serves the same files on TCP 6970).

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sipreg_store::Directory;

use crate::render::try_render;

/// The `Content-Type` of every configuration file.
pub const CONTENT_TYPE: &str = "text/xml";

const SUFFIX: &str = ".cnf.xml";
/// Unified CM device names are at most 15 characters (`SEP` + 12 hex digits); leave headroom.
const MAX_NAME_LEN: usize = 64;

/// HTTP config service: GET and HEAD `/{name}.cnf.xml`, device names case-insensitive.
///
/// Unknown devices and other file names answer 404, names with characters outside
/// `[A-Za-z0-9._-]` (path traversal, separators) answer 400, other methods 405. Each request
/// renders from the directory's current snapshot, so changes are served at once.
pub fn router(directory: Directory) -> Router {
    Router::new()
        .route("/{file}", get(config_file))
        .with_state(directory)
}

async fn config_file(State(directory): State<Directory>, Path(file): Path<String>) -> Response {
    let name = match device_name(&file) {
        Ok(name) => name,
        Err(status) => return status.into_response(),
    };
    let snap = directory.snapshot();
    let Some(device) = snap.device(name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match try_render(device, &snap) {
        Ok(xml) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)),
                // Clients must see a changed file at once; the versionStamp says whether it changed.
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            xml,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(device = %device.name, error = %e, "cannot render device config");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The device name inside a requested file name, or the status to answer.
fn device_name(file: &str) -> Result<&str, StatusCode> {
    let ok_chars = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if file.len() > MAX_NAME_LEN + SUFFIX.len() || !ok_chars(file) || file.contains("..") {
        return Err(StatusCode::BAD_REQUEST);
    }
    let split = file
        .len()
        .checked_sub(SUFFIX.len())
        .ok_or(StatusCode::NOT_FOUND)?;
    let (name, suffix) = file.split_at_checked(split).ok_or(StatusCode::NOT_FOUND)?;
    if !suffix.eq_ignore_ascii_case(SUFFIX) || name.is_empty() || name.contains('.') {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{fixture, parse};
    use axum::body::{to_bytes, Body};
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    async fn send(app: &Router, method: Method, uri: &str) -> (StatusCode, Option<String>, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn get_serves_the_rendered_file_case_insensitively() {
        let f = fixture(true).await;
        let app = router(f.directory.clone());
        for uri in ["/CSFjdoe.cnf.xml", "/csfjdoe.cnf.xml", "/CSFJDOE.CNF.XML"] {
            let (status, ct, body) = send(&app, Method::GET, uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(ct.as_deref(), Some(CONTENT_TYPE));
            let snap = f.directory.snapshot();
            assert_eq!(
                body,
                crate::render_device_config(snap.device("CSFjdoe").unwrap(), &snap)
            );
        }
        let (status, _, body) = send(&app, Method::GET, "/SEP001122334455.cnf.xml").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(parse(&body).at(&["sipOAuthMode"]), "0");
    }

    #[tokio::test]
    async fn head_has_headers_and_no_body() {
        let f = fixture(false).await;
        let app = router(f.directory.clone());
        let (status, ct, body) = send(&app, Method::HEAD, "/CSFjdoe.cnf.xml").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(CONTENT_TYPE));
        assert!(body.is_empty());
        let (status, _, _) = send(&app, Method::HEAD, "/CSFnobody.cnf.xml").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn unknown_devices_and_files_are_404() {
        let f = fixture(false).await;
        let app = router(f.directory.clone());
        for uri in [
            "/CSFnobody.cnf.xml",
            "/CSFjdoe.cnf.xml.sgn",
            "/CSFjdoe.xml",
            "/CSFjdoe",
            "/.cnf.xml",
            "/cnf.xml",
            "/a.b.cnf.xml",
            "/",
            "/dir/CSFjdoe.cnf.xml",
        ] {
            assert_eq!(
                send(&app, Method::GET, uri).await.0,
                StatusCode::NOT_FOUND,
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn traversal_and_odd_names_are_rejected() {
        let f = fixture(false).await;
        let app = router(f.directory.clone());
        for uri in [
            "/..%2F..%2Fetc%2Fpasswd",
            "/..%2FCSFjdoe.cnf.xml",
            "/CSF%00jdoe.cnf.xml",
            "/CSF%20jdoe.cnf.xml",
            "/..cnf.xml",
        ] {
            let status = send(&app, Method::GET, uri).await.0;
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
                "{uri}: {status}"
            );
            assert_ne!(status, StatusCode::OK);
        }
        let long = format!("/{}.cnf.xml", "A".repeat(MAX_NAME_LEN + 1));
        assert_eq!(
            send(&app, Method::GET, &long).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            send(&app, Method::GET, "/..%2FCSFjdoe.cnf.xml").await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn other_methods_are_405() {
        let f = fixture(false).await;
        let app = router(f.directory.clone());
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(
                send(&app, m.clone(), "/CSFjdoe.cnf.xml").await.0,
                StatusCode::METHOD_NOT_ALLOWED,
                "{m}"
            );
        }
    }

    #[tokio::test]
    async fn changes_in_the_directory_are_served_at_once() {
        let f = fixture(false).await;
        let app = router(f.directory.clone());
        let (_, _, before) = send(&app, Method::GET, "/CSFjdoe.cnf.xml").await;
        assert_eq!(parse(&before).at(&["sipOAuthMode"]), "0");
        use sipreg_store::Store;
        f.store.set_oauth_mode(true).await.unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let (_, _, after) = send(&app, Method::GET, "/CSFjdoe.cnf.xml").await;
        assert_eq!(parse(&after).at(&["sipOAuthMode"]), "1");
    }

    #[test]
    fn device_name_parsing() {
        assert_eq!(
            device_name("SEP001122334455.cnf.xml"),
            Ok("SEP001122334455")
        );
        assert_eq!(device_name("CSFjdoe.CNF.XML"), Ok("CSFjdoe"));
        assert_eq!(device_name("a/b.cnf.xml"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(device_name("..%2f.cnf.xml"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(device_name("x.cnf"), Err(StatusCode::NOT_FOUND));
        assert_eq!(device_name("x"), Err(StatusCode::NOT_FOUND));
        assert_eq!(device_name("ä.cnf.xml"), Err(StatusCode::BAD_REQUEST));
    }
}
