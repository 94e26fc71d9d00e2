//! `/api/v1/lines`: directory numbers across devices. A line is not stored on its own: it is the
//! set of its appearances on devices, so the view is built from the device list, and a display
//! name change is written to every device carrying the line in one store transaction.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use sipreg_store::{Change, Device};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, check_if_match, with_etag, Actor};
use crate::api::{ApiJson, ApiQuery, ApiState};
use crate::problem::Problem;

/// The line routes.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_lines))
        .routes(routes!(get_line, patch_line))
}

/// Where a line appears.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Appearance {
    /// The device's name.
    device: String,
    /// The device's owner.
    owner: String,
    /// The line's button on the device, from 1.
    position: usize,
    /// The display name on this device.
    display_name: Option<String>,
}

/// A directory number and the devices it appears on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct LineView {
    /// The directory number.
    dn: String,
    /// The display name (of the first appearance, by device name); `null` when none is set.
    display_name: Option<String>,
    /// Every device carrying the line, by device name.
    devices: Vec<Appearance>,
}

/// Every line, by directory number.
fn lines_of(devices: &[Device]) -> BTreeMap<String, LineView> {
    let mut out: BTreeMap<String, LineView> = BTreeMap::new();
    for d in devices {
        for (i, l) in d.lines.iter().enumerate() {
            let v = out.entry(l.dn.clone()).or_insert_with(|| LineView {
                dn: l.dn.clone(),
                display_name: None,
                devices: Vec::new(),
            });
            if v.devices.is_empty() {
                v.display_name = l.display_name.clone();
            }
            v.devices.push(Appearance {
                device: d.name.clone(),
                owner: d.owner.clone(),
                position: i + 1,
                display_name: l.display_name.clone(),
            });
        }
    }
    out
}

/// Filters and paging of `GET /api/v1/lines`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LineQuery {
    /// Only directory numbers starting with this.
    dn: Option<String>,
    /// Only lines on a device of this user.
    owner: Option<String>,
    /// Only lines on this device (name compared ignoring case).
    device: Option<String>,
    /// Lines to skip.
    #[serde(default)]
    offset: usize,
    /// At most this many lines (1–5000, default 500).
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    500
}

/// Percent-encodes a query value or one path segment (RFC 3986 unreserved characters pass).
pub(crate) fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[utoipa::path(get, path = "/api/v1/lines", tag = "lines", params(LineQuery), responses((status = 200, description = "Lines by directory number, with `X-Total-Count` and a `Link` to the next page", body = [LineView])))]
async fn list_lines(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<LineQuery>,
) -> Result<Response, Problem> {
    let devices = s.store.devices().await?;
    let all: Vec<LineView> = lines_of(&devices)
        .into_values()
        .filter(|l| q.dn.as_ref().is_none_or(|p| l.dn.starts_with(p.as_str())))
        .filter(|l| {
            q.owner
                .as_ref()
                .is_none_or(|o| l.devices.iter().any(|a| &a.owner == o))
        })
        .filter(|l| {
            q.device
                .as_ref()
                .is_none_or(|d| l.devices.iter().any(|a| a.device.eq_ignore_ascii_case(d)))
        })
        .collect();
    let total = all.len();
    let limit = q.limit.clamp(1, 5000);
    let page: Vec<LineView> = all.into_iter().skip(q.offset).take(limit).collect();
    let mut resp = Json(page).into_response();
    let h = resp.headers_mut();
    h.insert("x-total-count", HeaderValue::from(total));
    if q.offset.saturating_add(limit) < total {
        // The next page keeps the filters.
        let mut next = format!("/api/v1/lines?offset={}&limit={limit}", q.offset + limit);
        for (k, v) in [("dn", &q.dn), ("owner", &q.owner), ("device", &q.device)] {
            if let Some(v) = v {
                next.push_str(&format!("&{k}={}", encode(v)));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
            h.insert(header::LINK, v);
        }
    }
    Ok(resp)
}

async fn line(s: &ApiState, dn: &str) -> Result<LineView, Problem> {
    let devices = s.store.devices().await?;
    lines_of(&devices)
        .remove(dn)
        .ok_or_else(|| Problem::not_found(format!("line {dn} is on no device")))
}

#[utoipa::path(get, path = "/api/v1/lines/{dn}", tag = "lines", params(("dn" = String, Path, description = "Directory number")), responses((status = 200, description = "The line and the devices it appears on", body = LineView)))]
async fn get_line(State(s): State<ApiState>, Path(dn): Path<String>) -> Result<Response, Problem> {
    Ok(with_etag(line(&s, &dn).await?))
}

/// Tells a present `null` (clear) from an absent field (nothing to change).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The change to a line.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LinePatch {
    /// The display name on every device carrying the line; `null` or `""` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    display_name: Option<Option<String>>,
}

#[utoipa::path(patch, path = "/api/v1/lines/{dn}", tag = "lines",
    params(("dn" = String, Path, description = "Directory number"), ("If-Match" = Option<String>, Header, description = "ETag from a GET")),
    request_body = LinePatch,
    responses((status = 200, description = "Changed on every device carrying the line; config files follow at once", body = LineView)))]
async fn patch_line(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Path(dn): Path<String>,
    ApiJson(body): ApiJson<LinePatch>,
) -> Result<Response, Problem> {
    let Some(display_name) = body.display_name else {
        return Err(Problem::invalid(
            "display_name",
            "nothing to change; send `display_name` (null clears it)",
        ));
    };
    let display_name = display_name.filter(|d| !d.is_empty());
    if display_name
        .as_ref()
        .is_some_and(|d| d.chars().count() > 128 || d.chars().any(char::is_control))
    {
        return Err(Problem::invalid(
            "display_name",
            "a display name is at most 128 characters, no control characters",
        ));
    }
    let before = line(&s, &dn).await?;
    check_if_match(&headers, &before)?;
    let changed = s
        .store
        .set_line_display_name(&dn, display_name.as_deref(), crate::now())
        .await?;
    let changed: Vec<Change> = changed.into_iter().map(Change::Device).collect();
    s.live.apply_changes(&changed).await?;
    let after = line(&s, &dn).await?;
    audit(
        &s,
        &actor,
        format!("PATCH /api/v1/lines/{dn}"),
        json!(before),
        json!(after),
    )
    .await;
    Ok(with_etag(after))
}
