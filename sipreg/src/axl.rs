//! AXL compatibility for edge entries: `POST /axl/` speaks the SOAP 1.1 subset Expressway-C uses
//! to tell Unified CM its certificate's CN/SANs (spec §3), over the same store as
//! `/api/v1/edges`, so both APIs see the same entries and changes apply live.
//!
//! Operations: `addExpresswayCConfiguration`, `getExpresswayCConfiguration`,
//! `listExpresswayCConfiguration`, `updateExpresswayCConfiguration`,
//! `removeExpresswayCConfiguration`, with AXL's field names (`HostNameOrIP`, `description`,
//! `X509SubjectNameorSubjectAlternateName`). Any `http://www.cisco.com/AXL/API/<version>`
//! namespace is accepted and echoed; answers carry `<return>` with the entry's uuid; bad input
//! gets HTTP 500 with a SOAP fault holding `axlError/axlcode/axlmessage`.
//!
//! **Authentication**: HTTP Basic, where the password is an admin API token (the data dir's
//! `admin-token`, or one from `sipreg token create`); the user name is not checked (use e.g.
//! `axl`). Read-only tokens may `get` and `list` only.
//!
//! **Entry uuids** are derived from the host name (SHA-256 of its lower-case form, shaped as a
//! braced upper-case uuid), so they are stable without being stored; renaming an entry with
//! `newHostNameOrIP` gives it a new uuid.
//!
//! **The subject field** holds one or more CN/SAN values separated by commas, semicolons or
//! white space; `CN=` prefixes are stripped and other `attr=value` parts of a subject DN ignored.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;
use sha2::{Digest, Sha256};
use sipreg_store::Edge;
use subtle::ConstantTimeEq;

use crate::api::ApiState;
use crate::api_edges::{find_edge, validate_edge};

/// The namespace answered with when the request's is not an AXL one.
const DEFAULT_NS: &str = "http://www.cisco.com/AXL/API/14.0";
const AXL_NS_PREFIX: &str = "http://www.cisco.com/AXL/API/";
/// Nesting deeper than this is not an AXL request.
const MAX_DEPTH: usize = 16;

/// AXL error codes used here (Unified CM's numbering where one fits).
mod code {
    /// Malformed request or a required field missing.
    pub(super) const INVALID: i32 = 5003;
    /// The item named does not exist.
    pub(super) const NOT_FOUND: i32 = 5007;
    /// Unified CM's "duplicate value in a UNIQUE INDEX column".
    pub(super) const DUPLICATE: i32 = -239;
    /// The caller may not do this.
    pub(super) const FORBIDDEN: i32 = 5001;
    /// Internal error.
    pub(super) const INTERNAL: i32 = 5000;
}

/// The `/axl/` routes (outside the admin-token layer: they have their own Basic auth).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/axl/", post(axl))
        .route("/axl", post(axl))
        .with_state(state)
}

/// A parsed XML element (enough for AXL requests).
#[derive(Debug, Default, Clone)]
struct Element {
    name: String,
    ns: Option<String>,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn child_text(&self, name: &str) -> Option<String> {
        self.child(name).map(|c| c.text.trim().to_owned())
    }
}

/// Parses a document into its root element; namespaces resolved, text unescaped.
fn parse(xml: &str) -> Result<Element, String> {
    let mut reader = NsReader::from_str(xml);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("malformed XML: {e}"))?;
        let ns = match ns {
            ResolveResult::Bound(n) => Some(String::from_utf8_lossy(n.as_ref()).into_owned()),
            _ => None,
        };
        let start = |e: &quick_xml::events::BytesStart<'_>| -> Result<Element, String> {
            let mut el = Element {
                name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                ns: ns.clone(),
                ..Element::default()
            };
            for a in e.attributes() {
                let a = a.map_err(|e| format!("malformed XML attribute: {e}"))?;
                let v = a
                    .unescape_value()
                    .map_err(|e| format!("malformed XML attribute: {e}"))?;
                el.attrs.push((
                    String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
                    v.into_owned(),
                ));
            }
            Ok(el)
        };
        match event {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err("XML nested too deeply".into());
                }
                let el = start(&e)?;
                stack.push(el);
            }
            Event::Empty(e) => {
                let el = start(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                let Some(done) = stack.pop() else {
                    return Err("malformed XML: unbalanced end tag".into());
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let s = t.decode().map_err(|e| format!("bad text: {e}"))?;
                    top.text.push_str(&s);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::GeneralRef(r) => {
                let Some(top) = stack.last_mut() else {
                    continue;
                };
                if let Some(ch) = r
                    .resolve_char_ref()
                    .map_err(|e| format!("bad character reference: {e}"))?
                {
                    top.text.push(ch);
                } else {
                    let name = r.decode().map_err(|e| format!("bad entity: {e}"))?;
                    let v = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| format!("unknown entity &{name};"))?;
                    top.text.push_str(v);
                }
            }
            Event::Eof => return Err("no complete XML document".into()),
            // Declarations, comments, processing instructions, DOCTYPE: nothing to keep.
            _ => {}
        }
    }
}

/// A stable AXL-style uuid for an edge host.
pub(crate) fn edge_uuid(host: &str) -> String {
    let h = Sha256::digest(host.to_ascii_lowercase().as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    // Shaped as an RFC 9562 name-based uuid (version 5 bits, variant 10).
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode_upper(b);
    format!(
        "{{{}-{}-{}-{}-{}}}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

fn same_uuid(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_matches(['{', '}']).to_ascii_uppercase();
    norm(a) == norm(b)
}

/// Splits AXL's single subject field into CN/SAN values; see the module docs.
pub(crate) fn split_subject_names(field: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in field.split(|c: char| c == ',' || c == ';' || c.is_whitespace()) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let value = match part.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("CN") => v.trim(),
            Some(_) => continue,
            None => part,
        };
        if !value.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(value)) {
            out.push(value.to_owned());
        }
    }
    out
}

/// A SOAP fault with AXL's error detail.
struct Fault {
    code: i32,
    message: String,
}

impl Fault {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Fault {
            code,
            message: message.into(),
        }
    }
}

fn xml_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

fn envelope(inner: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>"
    )
}

fn fault_response(op: &str, f: &Fault) -> Response {
    let msg = escape(f.message.as_str());
    xml_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        envelope(&format!(
            "<soapenv:Fault><faultcode>soapenv:Client</faultcode><faultstring>{msg}</faultstring>\
<detail><axlError><axlcode>{}</axlcode><axlmessage>{msg}</axlmessage><request>{}</request></axlError></detail></soapenv:Fault>",
            f.code,
            escape(op)
        )),
    )
}

/// Who called: `Some(true)` admin, `Some(false)` read-only, `None` unknown.
async fn authenticate(s: &ApiState, headers: &HeaderMap) -> Result<Option<bool>, Fault> {
    let Some(password) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|up| up.split_once(':').map(|(_, p)| p.to_owned()))
    else {
        return Ok(None);
    };
    let hash = Sha256::digest(password.as_bytes());
    if bool::from(hash.as_slice().ct_eq(&s.admin_token_sha256)) {
        return Ok(Some(true));
    }
    let hex = hex::encode(hash);
    let tokens = s
        .store
        .admin_tokens()
        .await
        .map_err(|e| Fault::new(code::INTERNAL, e.to_string()))?;
    Ok(tokens
        .into_iter()
        .find(|t| bool::from(t.sha256.as_bytes().ct_eq(hex.as_bytes())))
        .map(|t| t.scope != "read"))
}

async fn axl(State(s): State<ApiState>, headers: HeaderMap, body: String) -> Response {
    let admin = match authenticate(&s, &headers).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"AXL\"")],
                "AXL needs HTTP Basic auth with an admin API token as the password\n",
            )
                .into_response()
        }
        Err(f) => return fault_response("", &f),
    };
    let doc = match parse(&body) {
        Ok(d) => d,
        Err(m) => return fault_response("", &Fault::new(code::INVALID, m)),
    };
    let Some(op) = doc
        .child("Body")
        .filter(|_| doc.name == "Envelope")
        .and_then(|b| b.children.first())
    else {
        return fault_response(
            "",
            &Fault::new(
                code::INVALID,
                "expected a SOAP 1.1 Envelope with one operation in its Body",
            ),
        );
    };
    let ns = op
        .ns
        .as_deref()
        .filter(|n| n.starts_with(AXL_NS_PREFIX))
        .unwrap_or(DEFAULT_NS)
        .to_owned();
    let reading = matches!(
        op.name.as_str(),
        "getExpresswayCConfiguration" | "listExpresswayCConfiguration"
    );
    if !admin && !reading {
        return fault_response(
            &op.name,
            &Fault::new(
                code::FORBIDDEN,
                "this token is read-only; use an admin-scoped token",
            ),
        );
    }
    let result = match op.name.as_str() {
        "addExpresswayCConfiguration" => add(&s, op).await,
        "getExpresswayCConfiguration" => get(&s, op).await,
        "listExpresswayCConfiguration" => list(&s, op).await,
        "updateExpresswayCConfiguration" => update(&s, op).await,
        "removeExpresswayCConfiguration" => remove(&s, op).await,
        other => Err(Fault::new(
            code::INVALID,
            format!("operation {other} is not supported here; only the ExpresswayCConfiguration operations are"),
        )),
    };
    match result {
        Ok(ret) => xml_response(
            StatusCode::OK,
            envelope(&format!(
                "<ns:{op}Response xmlns:ns=\"{ns}\"><return>{ret}</return></ns:{op}Response>",
                op = op.name,
                ns = escape(ns.as_str())
            )),
        ),
        Err(f) => fault_response(&op.name, &f),
    }
}

fn invalid(field: &str, message: String) -> Fault {
    Fault::new(code::INVALID, format!("{field}: {message}"))
}

fn check(edge: &Edge) -> Result<(), Fault> {
    validate_edge(edge).map_err(|(field, m)| {
        let field = match field {
            "host" => "HostNameOrIP",
            "subject_names" => "X509SubjectNameorSubjectAlternateName",
            other => other,
        };
        invalid(field, m)
    })
}

async fn apply(s: &ApiState) -> Result<(), Fault> {
    s.live
        .apply()
        .await
        .map_err(|p| Fault::new(code::INTERNAL, p.detail))
}

fn store_fault(e: sipreg_store::StoreError) -> Fault {
    Fault::new(code::INTERNAL, e.to_string())
}

async fn audit(s: &ApiState, action: String, before: serde_json::Value, after: serde_json::Value) {
    let actor = crate::admin_auth::Actor {
        name: "axl".into(),
        scope: crate::admin_auth::Scope::Admin,
    };
    crate::admin_auth::audit(s, &actor, action, before, after).await;
}

async fn add(s: &ApiState, op: &Element) -> Result<String, Fault> {
    let Some(item) = op.child("expresswayCConfiguration") else {
        return Err(invalid("expresswayCConfiguration", "is required".into()));
    };
    let host = item.child_text("HostNameOrIP").unwrap_or_default();
    if host.is_empty() {
        return Err(invalid(
            "HostNameOrIP",
            "is required and may not be empty".into(),
        ));
    }
    let edge = Edge {
        host,
        description: item.child_text("description").unwrap_or_default(),
        subject_names: split_subject_names(
            &item
                .child_text("X509SubjectNameorSubjectAlternateName")
                .unwrap_or_default(),
        ),
        updated_at: crate::now(),
    };
    check(&edge)?;
    if find_edge(s.store.as_ref(), &edge.host)
        .await
        .map_err(|p| Fault::new(code::INTERNAL, p.detail))?
        .is_some()
    {
        return Err(Fault::new(
            code::DUPLICATE,
            format!(
                "an Expressway-C configuration for {} exists already",
                edge.host
            ),
        ));
    }
    s.store.upsert_edge(&edge).await.map_err(store_fault)?;
    apply(s).await?;
    audit(
        s,
        format!("AXL addExpresswayCConfiguration {}", edge.host),
        serde_json::Value::Null,
        serde_json::json!(edge),
    )
    .await;
    Ok(edge_uuid(&edge.host))
}

/// The entry a get/update/remove names by `HostNameOrIP` or `uuid`.
async fn target(s: &ApiState, op: &Element) -> Result<Edge, Fault> {
    let edges = s.store.edges().await.map_err(store_fault)?;
    if let Some(host) = op.child_text("HostNameOrIP").filter(|h| !h.is_empty()) {
        return edges
            .into_iter()
            .find(|e| e.host.eq_ignore_ascii_case(&host))
            .ok_or_else(|| {
                Fault::new(
                    code::NOT_FOUND,
                    format!("Item not valid: no Expressway-C configuration for {host}"),
                )
            });
    }
    if let Some(uuid) = op
        .child_text("uuid")
        .or_else(|| {
            op.attrs
                .iter()
                .find(|(k, _)| k == "uuid")
                .map(|(_, v)| v.clone())
        })
        .filter(|u| !u.is_empty())
    {
        return edges
            .into_iter()
            .find(|e| same_uuid(&edge_uuid(&e.host), &uuid))
            .ok_or_else(|| {
                Fault::new(
                    code::NOT_FOUND,
                    format!("Item not valid: no Expressway-C configuration with uuid {uuid}"),
                )
            });
    }
    Err(invalid(
        "HostNameOrIP",
        "HostNameOrIP or uuid is required".into(),
    ))
}

/// One entry as AXL returns it; `tags` limits the fields (all when empty).
fn render(edge: &Edge, tags: &[String]) -> String {
    let want = |t: &str| tags.is_empty() || tags.iter().any(|x| x == t);
    let mut x = format!(
        "<expresswayCConfiguration uuid=\"{}\">",
        edge_uuid(&edge.host)
    );
    if want("HostNameOrIP") {
        x.push_str(&format!(
            "<HostNameOrIP>{}</HostNameOrIP>",
            escape(edge.host.as_str())
        ));
    }
    if want("description") {
        x.push_str(&format!(
            "<description>{}</description>",
            escape(edge.description.as_str())
        ));
    }
    if want("X509SubjectNameorSubjectAlternateName") {
        x.push_str(&format!(
            "<X509SubjectNameorSubjectAlternateName>{}</X509SubjectNameorSubjectAlternateName>",
            escape(edge.subject_names.join(",").as_str())
        ));
    }
    x.push_str("</expresswayCConfiguration>");
    x
}

fn returned_tags(op: &Element) -> Vec<String> {
    op.child("returnedTags")
        .map(|r| r.children.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

async fn get(s: &ApiState, op: &Element) -> Result<String, Fault> {
    let edge = target(s, op).await?;
    Ok(render(&edge, &returned_tags(op)))
}

/// AXL's search pattern: `%` matches any run of characters; case-insensitive.
fn like(pattern: &str, value: &str) -> bool {
    fn go(p: &[u8], v: &[u8]) -> bool {
        match p.split_first() {
            None => v.is_empty(),
            Some((b'%', rest)) => (0..=v.len()).any(|i| go(rest, &v[i..])),
            Some((c, rest)) => v
                .split_first()
                .is_some_and(|(d, vr)| c.eq_ignore_ascii_case(d) && go(rest, vr)),
        }
    }
    go(pattern.as_bytes(), value.as_bytes())
}

async fn list(s: &ApiState, op: &Element) -> Result<String, Fault> {
    let Some(criteria) = op.child("searchCriteria") else {
        return Err(invalid("searchCriteria", "is required".into()));
    };
    let host = criteria.child_text("HostNameOrIP");
    let description = criteria.child_text("description");
    if host.is_none() && description.is_none() {
        return Err(invalid(
            "searchCriteria",
            "at least one element under searchCriteria has to be mentioned".into(),
        ));
    }
    let number = |name: &str| -> Result<usize, Fault> {
        match op.child_text(name) {
            None => Ok(0),
            Some(t) => t
                .parse()
                .map_err(|_| invalid(name, format!("{t:?} is not a number"))),
        }
    };
    let skip = number("skip")?;
    let first = number("first")?;
    let tags = returned_tags(op);
    let edges = s.store.edges().await.map_err(store_fault)?;
    let out: String = edges
        .iter()
        .filter(|e| host.as_deref().is_none_or(|p| like(p, &e.host)))
        .filter(|e| {
            description
                .as_deref()
                .is_none_or(|p| like(p, &e.description))
        })
        .skip(skip)
        .take(if first == 0 { usize::MAX } else { first })
        .map(|e| render(e, &tags))
        .collect();
    Ok(out)
}

async fn update(s: &ApiState, op: &Element) -> Result<String, Fault> {
    let before = target(s, op).await?;
    let mut edge = before.clone();
    if let Some(d) = op.child_text("description") {
        edge.description = d;
    }
    if let Some(n) = op.child_text("X509SubjectNameorSubjectAlternateName") {
        edge.subject_names = split_subject_names(&n);
    }
    let renamed = op
        .child_text("newHostNameOrIP")
        .filter(|n| !n.is_empty() && *n != before.host);
    if let Some(n) = &renamed {
        if !n.eq_ignore_ascii_case(&before.host)
            && find_edge(s.store.as_ref(), n)
                .await
                .map_err(|p| Fault::new(code::INTERNAL, p.detail))?
                .is_some()
        {
            return Err(Fault::new(
                code::DUPLICATE,
                format!("an Expressway-C configuration for {n} exists already"),
            ));
        }
        edge.host = n.clone();
    }
    edge.updated_at = crate::now();
    check(&edge)?;
    s.store.upsert_edge(&edge).await.map_err(store_fault)?;
    if renamed.is_some() {
        s.store
            .delete_edge(&before.host)
            .await
            .map_err(store_fault)?;
    }
    apply(s).await?;
    audit(
        s,
        format!("AXL updateExpresswayCConfiguration {}", before.host),
        serde_json::json!(before),
        serde_json::json!(edge),
    )
    .await;
    Ok(edge_uuid(&edge.host))
}

async fn remove(s: &ApiState, op: &Element) -> Result<String, Fault> {
    let edge = target(s, op).await?;
    s.store.delete_edge(&edge.host).await.map_err(store_fault)?;
    apply(s).await?;
    audit(
        s,
        format!("AXL removeExpresswayCConfiguration {}", edge.host),
        serde_json::json!(edge),
        serde_json::Value::Null,
    )
    .await;
    Ok(edge_uuid(&edge.host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soap_requests_parse_with_namespaces_and_entities() {
        let doc = parse(
            r#"<?xml version="1.0"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:ns="http://www.cisco.com/AXL/API/12.5">
 <soapenv:Header/>
 <soapenv:Body>
  <ns:addExpresswayCConfiguration sequence="1">
   <expresswayCConfiguration>
    <HostNameOrIP>expc.example.com</HostNameOrIP>
    <description>A &amp; B &#65;</description>
    <X509SubjectNameorSubjectAlternateName><![CDATA[expc.example.com]]></X509SubjectNameorSubjectAlternateName>
   </expresswayCConfiguration>
  </ns:addExpresswayCConfiguration>
 </soapenv:Body>
</soapenv:Envelope>"#,
        )
        .unwrap();
        assert_eq!(doc.name, "Envelope");
        let body = doc.child("Body").unwrap();
        let op = body.children.first().unwrap();
        assert_eq!(op.name, "addExpresswayCConfiguration");
        assert_eq!(op.ns.as_deref(), Some("http://www.cisco.com/AXL/API/12.5"));
        let item = op.child("expresswayCConfiguration").unwrap();
        assert_eq!(item.child_text("description").unwrap(), "A & B A");
        assert_eq!(
            item.child_text("X509SubjectNameorSubjectAlternateName")
                .unwrap(),
            "expc.example.com"
        );
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").is_err());
        assert!(parse("<a>&bogus;</a>").is_err());
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn subject_fields_split_into_names() {
        assert_eq!(
            split_subject_names("expc1.example.com, expc2.example.com;EXPC1.example.com  10.0.0.1"),
            ["expc1.example.com", "expc2.example.com", "10.0.0.1"]
        );
        assert_eq!(
            split_subject_names("CN=expc.example.com, O=Example, C=US"),
            ["expc.example.com"]
        );
        assert!(split_subject_names("  ").is_empty());
    }

    #[test]
    fn uuids_are_stable_braced_and_case_blind() {
        let u = edge_uuid("Expc.Example.com");
        assert_eq!(u, edge_uuid("expc.example.com"));
        assert_ne!(u, edge_uuid("other"));
        assert_eq!(u.len(), 38);
        assert!(u.starts_with('{') && u.ends_with('}'));
        assert_eq!(&u[15..16], "5");
        assert!(same_uuid(
            &u,
            &u.trim_matches(['{', '}']).to_ascii_lowercase()
        ));
    }

    #[test]
    fn search_patterns_use_percent() {
        assert!(like("%", "anything"));
        assert!(like("expc%", "EXPC1.example.com"));
        assert!(like("%.example.com", "a.example.com"));
        assert!(!like("expc", "expc1"));
        assert!(like("", ""));
    }
}
