//! RFC 9457 problem details: the one place where errors become HTTP responses.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sipreg_store::StoreError;

/// An RFC 9457 problem response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Short summary of the problem type.
    pub title: &'static str,
    /// HTTP status.
    pub status: u16,
    /// What went wrong with this request, and how to fix it.
    pub detail: String,
    /// The offending field, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl Problem {
    /// 400 for a field that breaks a rule.
    pub fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            kind: "urn:sipreg:problem:invalid-field",
            title: "Invalid field",
            status: 400,
            detail: detail.into(),
            field: Some(field),
        }
    }

    /// 400 for a body that is not the JSON expected.
    pub fn bad_body(detail: impl Into<String>) -> Self {
        Problem {
            kind: "urn:sipreg:problem:bad-body",
            title: "Malformed request body",
            status: 400,
            detail: detail.into(),
            field: None,
        }
    }

    /// 400 for a query string that does not parse.
    pub fn bad_query(detail: impl Into<String>) -> Self {
        Problem {
            kind: "urn:sipreg:problem:bad-query",
            title: "Malformed query string",
            status: 400,
            detail: detail.into(),
            field: None,
        }
    }

    /// 401 for a missing or wrong admin token.
    pub fn unauthorized() -> Self {
        Problem {
            kind: "urn:sipreg:problem:unauthorized",
            title: "Admin token required",
            status: 401,
            detail: "send `Authorization: Bearer <admin token>`; the token is in the data dir's `admin-token` file"
                .into(),
            field: None,
        }
    }

    /// 404 for an unknown path or entity.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem {
            kind: "urn:sipreg:problem:not-found",
            title: "Not found",
            status: 404,
            detail: detail.into(),
            field: None,
        }
    }

    /// 403 for a token that may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem {
            kind: "urn:sipreg:problem:forbidden",
            title: "Forbidden",
            status: 403,
            detail: detail.into(),
            field: None,
        }
    }

    /// 412 for an `If-Match` that no longer matches.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Problem {
            kind: "urn:sipreg:problem:precondition-failed",
            title: "Precondition failed",
            status: 412,
            detail: detail.into(),
            field: Some("If-Match"),
        }
    }

    /// 409 for a port that is taken or clashes with another listener.
    pub fn port_unavailable(field: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            kind: "urn:sipreg:problem:port-unavailable",
            title: "Port unavailable",
            status: 409,
            detail: detail.into(),
            field: Some(field),
        }
    }

    /// 500 that tells the operator to read the log.
    pub fn internal(detail: impl Into<String>) -> Self {
        Problem {
            kind: "urn:sipreg:problem:internal",
            title: "Internal error",
            status: 500,
            detail: detail.into(),
            field: None,
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Problem {
                kind: "urn:sipreg:problem:conflict",
                title: "Already exists",
                status: 409,
                detail: format!("{what} already exists"),
                field: None,
            },
            StoreError::NotFound(what) => Problem::not_found(format!("{what} not found")),
            StoreError::Invalid(why) => Problem {
                kind: "urn:sipreg:problem:invalid-reference",
                title: "Invalid reference",
                status: 422,
                detail: why,
                field: None,
            },
            StoreError::Backend(why) => {
                tracing::error!(error = %why, "store failure");
                Problem {
                    kind: "urn:sipreg:problem:store-unavailable",
                    title: "Store unavailable",
                    status: 503,
                    detail: "the database did not answer; the change was not made — retry shortly (registrations keep working from cached data)".into(),
                    field: None,
                }
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}
