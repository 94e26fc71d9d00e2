//! The admin REST API under `/api/v1`: OAuth mode, users and devices, applied live.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sipreg_store::{Change, Device, Line, Store, User};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, check_if_match, with_etag, Actor};
use crate::live::Live;
use crate::problem::Problem;

/// Shared state of the admin API.
#[derive(Clone)]
pub struct ApiState {
    /// The store every change goes to.
    pub store: Arc<dyn Store>,
    /// Applies changes to running listeners and caches.
    pub live: Arc<Live>,
    /// SHA-256 of the admin token; compared in constant time.
    pub admin_token_sha256: [u8; 32],
    /// What `status` reports.
    pub status: Arc<crate::api_status::StatusInfo>,
    /// The server certificate and the TLS configs presenting it.
    pub certs: Arc<crate::api_certs::CertControl>,
    /// The token service (key rotation, settings).
    pub tokens: Arc<sipreg_tokensvc::TokenService>,
}

/// The `/api/v1` router, every route behind the admin token, and the OpenAPI document.
pub fn router(state: ApiState) -> Router {
    let (documented, mut doc) = documented_routes().split_for_parts();
    crate::openapi::add_problem_responses(&mut doc);
    let doc: axum::body::Bytes = serde_json::to_vec(&doc).unwrap_or_default().into();
    let protected = documented
        .route(
            "/api/v1/{*rest}",
            put(no_such_api)
                .get(no_such_api)
                .post(no_such_api)
                .delete(no_such_api)
                .patch(no_such_api),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::admin_auth::require_admin,
        ))
        .with_state(state);
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || {
                std::future::ready(([(header::CONTENT_TYPE, "application/json")], doc.clone()))
            }),
        )
        .merge(protected)
}

/// Every route the OpenAPI document describes.
pub fn documented_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(get_oauth_mode, put_oauth_mode))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, delete_user, patch_user))
        .routes(routes!(list_devices, create_device))
        .routes(routes!(get_device, delete_device, patch_device))
        .merge(crate::api_cluster::router())
        .merge(crate::api_profiles::router())
        .merge(crate::api_lines::router())
        .merge(crate::api_nodes::router())
        .merge(crate::api_edges::router())
        .merge(crate::api_issuers::router())
        .merge(crate::admin_auth::router())
        .merge(crate::api_status::router())
        .merge(crate::api_tokens::router())
        .merge(crate::api_digest::router())
        .merge(crate::api_registrations::router())
        .merge(crate::api_certs::router())
}

async fn no_such_api() -> Problem {
    Problem::not_found("no such API resource; see README.md for the /api/v1 routes")
}

/// A JSON body whose rejections become problem responses.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(Problem::bad_body(rejection_text(&e))),
        }
    }
}

/// A query string whose rejections become problem responses.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(Problem::bad_query(e.body_text())),
        }
    }
}

fn rejection_text(e: &JsonRejection) -> String {
    match e {
        JsonRejection::MissingJsonContentType(_) => {
            "send the body as JSON with `Content-Type: application/json`".into()
        }
        other => other.body_text(),
    }
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
struct OAuthMode {
    enabled: bool,
}

#[utoipa::path(get, path = "/api/v1/oauth-mode", tag = "cluster", responses((status = 200, description = "Cluster SIP OAuth mode", body = OAuthMode)))]
async fn get_oauth_mode(State(s): State<ApiState>) -> Result<Response, Problem> {
    Ok(with_etag(OAuthMode {
        enabled: s.store.cluster_settings().await?.oauth_mode,
    }))
}

#[utoipa::path(put, path = "/api/v1/oauth-mode", tag = "cluster", params(("If-Match" = Option<String>, Header, description = "ETag from a GET")), request_body = OAuthMode, responses((status = 200, description = "Applied: the SIP OAuth port is open or closed now", body = OAuthMode)))]
async fn put_oauth_mode(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OAuthMode>,
) -> Result<Response, Problem> {
    let before = OAuthMode {
        enabled: s.store.cluster_settings().await?.oauth_mode,
    };
    check_if_match(&headers, &before)?;
    s.store.set_oauth_mode(body.enabled).await?;
    // Apply before answering, so the port is open (or closed) when the admin sees 200.
    s.live.apply().await?;
    tracing::info!(enabled = body.enabled, actor = %actor.name, "cluster OAuth mode changed");
    audit(
        &s,
        &actor,
        "PUT /api/v1/oauth-mode".into(),
        json!(before),
        json!(body),
    )
    .await;
    Ok(with_etag(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    id: String,
    password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct UserView {
    id: String,
    created_at: i64,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            created_at: u.created_at,
        }
    }
}

fn valid_id(field: &'static str, v: &str, max: usize, extra: &[char]) -> Result<(), Problem> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c));
    if ok {
        Ok(())
    } else {
        Err(Problem::invalid(
            field,
            format!(
                "`{field}` must be 1–{max} characters of letters, digits and {}",
                extra
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ))
    }
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser, responses((status = 201, description = "Created", body = UserView)))]
async fn create_user(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<UserView>), Problem> {
    valid_id("id", &body.id, 64, &['.', '_', '-', '@'])?;
    let hash = hash_new_password(body.password).await?;
    let user = User {
        id: body.id,
        password_hash: hash,
        created_at: crate::now(),
    };
    s.store.create_user(&user).await?;
    s.live.apply_change(Change::User(user.id.clone())).await?;
    let view = UserView::from(user);
    audit(
        &s,
        &actor,
        format!("POST /api/v1/users/{}", view.id),
        Value::Null,
        json!(view),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(Page), responses((status = 200, description = "Users", body = [UserView])))]
async fn list_users(
    State(s): State<ApiState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Response, Problem> {
    let users: Vec<UserView> = s
        .store
        .users()
        .await?
        .into_iter()
        .map(UserView::from)
        .collect();
    Ok(page.apply("users", users))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path, description = "User id")), responses((status = 200, description = "The user", body = UserView)))]
async fn get_user(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, Problem> {
    s.store
        .user(&id)
        .await?
        .map(|u| with_etag(UserView::from(u)))
        .ok_or_else(|| Problem::not_found(format!("user {id} not found")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    /// The new password, stored as an Argon2id hash.
    password: String,
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id"), ("If-Match" = Option<String>, Header, description = "ETag from a GET")),
    request_body = UserPatch,
    responses((status = 200, description = "Password changed; the old one no longer gets tokens", body = UserView)))]
async fn patch_user(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UserPatch>,
) -> Result<Response, Problem> {
    let user = s
        .store
        .user(&id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("user {id} not found")))?;
    let view = UserView::from(user);
    check_if_match(&headers, &view)?;
    let hash = hash_new_password(body.password).await?;
    s.store.set_password_hash(&id, &hash).await?;
    audit(
        &s,
        &actor,
        format!("PATCH /api/v1/users/{id}"),
        json!(view),
        json!({"password": "changed"}),
    )
    .await;
    Ok(with_etag(view))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", params(("id" = String, Path, description = "User id"), ("If-Match" = Option<String>, Header, description = "ETag from a GET")), responses((status = 204, description = "Deleted with its devices and tokens")))]
async fn delete_user(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let before = s.store.user(&id).await?.map(UserView::from);
    if let Some(b) = &before {
        check_if_match(&headers, b)?;
    }
    s.store.delete_user(&id).await?;
    s.live.apply_change(Change::User(id.clone())).await?;
    audit(
        &s,
        &actor,
        format!("DELETE /api/v1/users/{id}"),
        json!(before),
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a new password's length and hashes it with Argon2id off the async runtime.
async fn hash_new_password(password: String) -> Result<String, Problem> {
    if password.is_empty() || password.len() > 1024 {
        return Err(Problem::invalid(
            "password",
            "`password` must be 1–1024 bytes",
        ));
    }
    tokio::task::spawn_blocking(move || sipreg_tokensvc::hash_password(&password))
        .await
        .map_err(|e| Problem::internal(format!("hashing task failed: {e}")))?
        .map_err(|e| Problem::internal(e.to_string()))
}

/// A line as the API accepts it: `"1010"` or `{"dn": "1010", "display_name": "Jo"}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum LineIn {
    Dn(String),
    Full {
        dn: String,
        display_name: Option<String>,
    },
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    name: String,
    owner: String,
    lines: Vec<LineIn>,
    /// Older clients: without `profile`, picks the default OAuth or non-OAuth profile; with
    /// `profile`, must agree with the profile's `oauth` if given.
    oauth: Option<bool>,
    /// The device model; default "Cisco Unified Client Services Framework".
    model: Option<String>,
    /// The security profile's name; it must exist.
    profile: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", request_body = NewDevice, responses((status = 201, description = "Created", body = Device)))]
async fn create_device(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewDevice>,
) -> Result<(StatusCode, Json<Device>), Problem> {
    valid_id("name", &body.name, 64, &['_', '-', '.'])?;
    valid_id("owner", &body.owner, 64, &['.', '_', '-', '@'])?;
    let lines = parse_lines(body.lines)?;
    let model = crate::api_profiles::valid_model(body.model)?;
    let profile = crate::api_profiles::device_profile(&s, body.profile, body.oauth, None).await?;
    let device = Device {
        name: body.name,
        owner: body.owner,
        lines,
        oauth: body.oauth.unwrap_or(false),
        updated_at: crate::now(),
        model: model.unwrap_or_default(),
        profile,
    };
    s.store.create_device(&device).await?;
    s.live
        .apply_change(Change::Device(device.name.clone()))
        .await?;
    // The stored device: defaults filled in, `oauth` from its profile.
    let device = s.store.device(&device.name).await?.unwrap_or(device);
    audit(
        &s,
        &actor,
        format!("POST /api/v1/devices/{}", device.name),
        Value::Null,
        json!(device),
    )
    .await;
    Ok((StatusCode::CREATED, Json(device)))
}

/// Validates a device's lines: 1–64, each a valid directory number, none twice.
fn parse_lines(input: Vec<LineIn>) -> Result<Vec<Line>, Problem> {
    if input.is_empty() || input.len() > 64 {
        return Err(Problem::invalid("lines", "a device needs 1–64 lines"));
    }
    let mut lines: Vec<Line> = Vec::with_capacity(input.len());
    for l in input {
        let (dn, display_name) = match l {
            LineIn::Dn(dn) => (dn, None),
            LineIn::Full { dn, display_name } => (dn, display_name),
        };
        valid_id("lines", &dn, 32, &['+', '*', '#', '.', '-', '_'])?;
        if display_name
            .as_ref()
            .is_some_and(|d| d.len() > 128 || d.chars().any(char::is_control))
        {
            return Err(Problem::invalid(
                "lines",
                "a display name is at most 128 characters, no control characters",
            ));
        }
        if lines.iter().any(|x| x.dn == dn) {
            return Err(Problem::invalid(
                "lines",
                format!("line {dn} is listed twice"),
            ));
        }
        lines.push(Line { dn, display_name });
    }
    Ok(lines)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DevicePatch {
    owner: Option<String>,
    lines: Option<Vec<LineIn>>,
    /// Older clients: switches to the default OAuth or non-OAuth profile unless the device's
    /// profile already says so (or `profile` is given, which it must then agree with).
    oauth: Option<bool>,
    /// The device model.
    model: Option<String>,
    /// The security profile's name; it must exist.
    profile: Option<String>,
}

#[utoipa::path(patch, path = "/api/v1/devices/{name}", tag = "devices",
    params(("name" = String, Path, description = "Device name"), ("If-Match" = Option<String>, Header, description = "ETag from a GET")),
    request_body = DevicePatch,
    responses((status = 200, description = "Changed; config files and registrations follow at once", body = Device)))]
async fn patch_device(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<DevicePatch>,
) -> Result<Response, Problem> {
    let before = s
        .store
        .device(&name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("device {name} not found")))?;
    check_if_match(&headers, &before)?;
    let mut after = before.clone();
    if let Some(owner) = body.owner {
        valid_id("owner", &owner, 64, &['.', '_', '-', '@'])?;
        after.owner = owner;
    }
    if let Some(lines) = body.lines {
        after.lines = parse_lines(lines)?;
    }
    if let Some(model) = crate::api_profiles::valid_model(body.model)? {
        after.model = model;
    }
    if body.profile.is_some() || body.oauth.is_some() {
        after.profile =
            crate::api_profiles::device_profile(&s, body.profile, body.oauth, Some(&before))
                .await?;
    }
    if let Some(oauth) = body.oauth {
        after.oauth = oauth;
    }
    after.updated_at = crate::now();
    s.store.update_device(&after).await?;
    s.live
        .apply_change(Change::Device(after.name.clone()))
        .await?;
    let after = s.store.device(&after.name).await?.unwrap_or(after);
    audit(
        &s,
        &actor,
        format!("PATCH /api/v1/devices/{}", before.name),
        json!(before),
        json!(after),
    )
    .await;
    Ok(with_etag(after))
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(Page), responses((status = 200, description = "Devices", body = [Device])))]
async fn list_devices(
    State(s): State<ApiState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Response, Problem> {
    Ok(page.apply("devices", s.store.devices().await?))
}

#[utoipa::path(get, path = "/api/v1/devices/{name}", tag = "devices", params(("name" = String, Path, description = "Device name")), responses((status = 200, description = "The device", body = Device)))]
async fn get_device(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    s.store
        .device(&name)
        .await?
        .map(with_etag)
        .ok_or_else(|| Problem::not_found(format!("device {name} not found")))
}

#[utoipa::path(delete, path = "/api/v1/devices/{name}", tag = "devices", params(("name" = String, Path, description = "Device name"), ("If-Match" = Option<String>, Header, description = "ETag from a GET")), responses((status = 204, description = "Deleted")))]
async fn delete_device(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    let before = s.store.device(&name).await?;
    if let Some(b) = &before {
        check_if_match(&headers, b)?;
    }
    s.store.delete_device(&name).await?;
    s.live.apply_change(Change::Device(name.clone())).await?;
    audit(
        &s,
        &actor,
        format!("DELETE /api/v1/devices/{name}"),
        json!(before),
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `?limit=&offset=` on list endpoints; the answer stays a JSON array, with `X-Total-Count` and an
/// RFC 8288 `Link: <...>; rel="next"` while more remain.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_page")]
    limit: usize,
}

fn default_page() -> usize {
    500
}

impl Page {
    /// Slices `items` and adds the paging headers.
    pub fn apply<T: Serialize>(&self, path: &str, items: Vec<T>) -> Response {
        let total = items.len();
        let limit = self.limit.clamp(1, 5000);
        let page: Vec<T> = items.into_iter().skip(self.offset).take(limit).collect();
        let mut resp = Json(page).into_response();
        let h = resp.headers_mut();
        h.insert("x-total-count", HeaderValue::from(total));
        if self.offset + limit < total {
            let next = format!(
                "</api/v1/{path}?offset={}&limit={limit}>; rel=\"next\"",
                self.offset + limit
            );
            if let Ok(v) = HeaderValue::from_str(&next) {
                h.insert(header::LINK, v);
            }
        }
        resp
    }
}
