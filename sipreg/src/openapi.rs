//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers' annotations (utoipa), so it
//! cannot drift from the routes. Served at `/api/v1/openapi.json`.

use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref};
use utoipa::{Modify, OpenApi};

use crate::problem::Problem;

/// The document's fixed parts; paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(title = "sipreg admin API", description = "Users, devices, nodes, OAuth mode and more; every change applies live."),
    components(schemas(Problem)),
    security(("admin_token" = [])),
    modifiers(&Common)
)]
pub struct ApiDoc;

/// Adds the bearer scheme and the problem responses every operation can give.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Adds the RFC 9457 problem responses to every operation that does not document them itself.
pub fn add_problem_responses(doc: &mut utoipa::openapi::OpenApi) {
    let problem = || {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build()
    };
    let cases: [(&str, &str); 9] = [
        ("400", "The request breaks a rule; `field` names it"),
        ("401", "Missing or wrong admin token"),
        ("403", "The token may not do this (read-only)"),
        ("404", "No such resource"),
        (
            "409",
            "Conflicts with existing state (exists already, port taken)",
        ),
        ("412", "`If-Match` no longer matches"),
        ("422", "Refers to something that does not exist"),
        ("500", "Internal error; see the server log"),
        (
            "503",
            "The store (database) did not answer; nothing was changed",
        ),
    ];
    for item in doc.paths.paths.values_mut() {
        for op in [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            // Bodies are read before routing (`https.rs`); an oversize or a slow one is refused
            // there.
            let body_refused: &[(&str, &str)] = if op.request_body.is_some() {
                &[
                    (
                        "408",
                        "The request body was not complete within `http.body_timeout_secs`; the connection is closed",
                    ),
                    ("413", "The request body is over 2 MiB; the connection is closed"),
                ]
            } else {
                &[]
            };
            for &(code, text) in cases.iter().chain(body_refused) {
                op.responses
                    .responses
                    .entry(code.to_string())
                    .or_insert_with(|| {
                        ResponseBuilder::new()
                            .description(text)
                            .content("application/problem+json", problem())
                            .build()
                            .into()
                    });
            }
        }
    }
}
