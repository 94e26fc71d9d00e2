//! The REGISTER decision, sans-IO: (request, connection facts, directory view, authenticators,
//! location, config, `now`) → response. No clock, no socket; bindings change only through
//! [`Location::apply`]. The RFC 3261 §10.3 steps are in [`register`], in order.
//!
//! Status codes this module produces:
//! `200` (REGISTER success, OPTIONS), `400` (malformed, with the reason as phrase),
//! `401`/`407` (Bearer challenge, RFC 8898 / Unified CM dialect; Digest challenge on the legacy
//! ports), `403` (authorization failure, "SIP OAuth Registration port Mismatch", "use the SIP
//! OAuth port", all with `Warning: 399`; too many bindings is `403 Too Many Bindings`),
//! `404` (domain not served), `405` (other methods), `416` (non-SIP Request-URI),
//! `420` (unknown `Require`, or `Path` without `Supported: path`), `423` (interval too brief),
//! `439` (first hop lacks outbound support), `500 CSeq Out Of Order`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use sipreg_store::{Device, DirectorySnapshot};

use crate::auth::{
    bearer_token, quoted_param, AuthDialect, BearerValidator, TokenIdentity, UNIFIED_CM_REALM,
};
pub use crate::config::RegistrarConfig;
use crate::digest::{Algorithm, DigestAuth, DigestError, DigestResponse};
use crate::location::{
    ApplyError, Binding, BindingChange, BindingView, FlowId, FlowState, Location, Transport,
};
use crate::message::{uri_has_ob, Aor, Contact, ContactAddress, MessageError, Request};
use crate::response::{response, ResponseBuilder};

/// Methods this registrar accepts (`Allow`).
pub const ALLOW: &str = "REGISTER, OPTIONS";
/// Option tags we support: `Require` may name only these.
pub const SUPPORTED: &[&str] = &["path", "outbound"];
/// `Warning` text of the Unified CM port-mismatch 403 (spec §2.3).
pub const PORT_MISMATCH: &str = "SIP OAuth Registration port Mismatch";
/// `Warning` text when an OAuth device tries a legacy port while cluster OAuth mode is on.
pub const USE_OAUTH_PORT: &str = "use the SIP OAuth port";
/// `Retry-After` of the port-mismatch 403, as Unified CM sends it (spec §2.3).
pub const PORT_MISMATCH_RETRY_AFTER: u32 = 35;

/// Which kind of SIP port a request came in on; it decides how the client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// The SIP OAuth port (TLS): Bearer access tokens.
    SipOAuth,
    /// The legacy ports (UDP/TCP 5060, TLS 5061): Digest.
    Legacy,
}

/// What the transport knows about the connection a request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionFacts {
    /// Peer address.
    pub remote: SocketAddr,
    /// Our address.
    pub local: SocketAddr,
    /// Connection id, stored with bindings (RFC 5626 flow); 0 for UDP.
    pub flow: FlowId,
    /// The transport.
    pub transport: Transport,
    /// The kind of port.
    pub port: PortKind,
}

/// The authenticators `process` may need; which one is used depends on [`PortKind`].
#[derive(Clone, Copy)]
pub struct Authenticators<'a> {
    /// Bearer access-token validation (SIP OAuth port).
    pub bearer: &'a dyn BearerValidator,
    /// Digest nonces and checking (legacy ports).
    pub digest: &'a DigestAuth,
}

impl std::fmt::Debug for Authenticators<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticators").finish_non_exhaustive()
    }
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Serialised response.
    pub bytes: Vec<u8>,
    /// Whether the request changed bindings (a counted registration).
    pub changed: bool,
    /// Why a REGISTER was refused (not set for the challenge that starts authentication).
    pub rejection: Option<Rejection>,
}

/// Which check refused a REGISTER, and for whom; logged once and counted by check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The check that failed, e.g. `token_expired`, `device_not_owned`, `profile_no_oauth`.
    pub check: &'static str,
    /// The user, when the credentials told us.
    pub user: Option<String>,
    /// The device, when known (authorized, or named in the Contact).
    pub device: Option<String>,
}

impl Response {
    /// Marks this response as refusing the REGISTER because `check` failed.
    fn rejected(mut self, check: &'static str) -> Response {
        self.rejection = Some(Rejection {
            check,
            user: None,
            device: None,
        });
        self
    }

    /// Adds who the refused request came from.
    fn of_user(mut self, user: &str) -> Response {
        if let Some(r) = &mut self.rejection {
            r.user = Some(user.to_owned());
        }
        self
    }

    /// Adds the device the refused request was found to come from.
    fn of_device(mut self, device: &str) -> Response {
        if let Some(r) = &mut self.rejection {
            r.device = Some(device.to_owned());
        }
        self
    }
}

fn done(b: ResponseBuilder<'_>) -> Response {
    let status = b.status();
    Response {
        status,
        bytes: b.build(),
        changed: false,
        rejection: None,
    }
}

fn bad_request(req: &Request, e: &MessageError) -> Response {
    done(response(req, 400, &e.to_string()))
}

/// Decides the response to one request; `None` when none is sent (ACK).
pub fn process(
    req: &Request,
    conn: &ConnectionFacts,
    dir: &DirectorySnapshot,
    auth: Authenticators<'_>,
    location: &Location,
    cfg: &RegistrarConfig,
    now: i64,
) -> Option<Response> {
    // RFC 3261 §17.2.3: ACK is never answered.
    if req.method == "ACK" {
        return None;
    }
    // §8.1.1: the headers every response copies must be present and well formed.
    // One pass over the Via values, no list collected.
    let mut vias = 0usize;
    let mut bad_via = false;
    for v in req.all("Via") {
        vias += 1;
        bad_via = bad_via || !crate::message::Via::is_valid(v);
    }
    if vias == 0 {
        return Some(bad_request(req, &MessageError::Missing("Via")));
    }
    if bad_via {
        return Some(bad_request(req, &MessageError::Bad("Via")));
    }
    let checks = [
        req.from_header().err(),
        req.to_header().err(),
        req.call_id().err(),
        req.cseq().err(),
    ];
    if let Some(e) = checks.into_iter().flatten().next() {
        return Some(bad_request(req, &e));
    }
    // §8.2.2.1: an unknown Request-URI scheme gets 416.
    let scheme = req.request_uri_scheme();
    if scheme != "sip" && scheme != "sips" {
        return Some(done(response(req, 416, "Unsupported URI Scheme")));
    }
    if let Err(e) = req.check_request_uri() {
        return Some(bad_request(req, &e));
    }
    // §8.2.1 / §10.3: a registrar accepts only REGISTER (and answers OPTIONS).
    Some(match req.method.as_str() {
        "REGISTER" => {
            let r = register(req, conn, dir, auth, location, cfg, now);
            log_rejection(req, conn, r)
        }
        "OPTIONS" => done(
            response(req, 200, "OK")
                .header("Allow", ALLOW)
                .header("Supported", SUPPORTED.join(", ")),
        ),
        _ => done(response(req, 405, "Method Not Allowed").header("Allow", ALLOW)),
    })
}

/// Registration expiry bounds in force for one request, seconds.
#[derive(Debug, Clone, Copy)]
struct ExpiryBounds {
    default: u32,
    min: u32,
    max: u32,
}

impl ExpiryBounds {
    /// The cluster settings are the source of truth; the config's values only serve a snapshot
    /// without settings (never in a running server, where the store always has the row).
    fn of(dir: &DirectorySnapshot, cfg: &RegistrarConfig) -> ExpiryBounds {
        match &dir.cluster {
            Some(c) => ExpiryBounds {
                default: c.default_expires,
                min: c.min_expires,
                max: c.max_expires,
            },
            None => ExpiryBounds {
                default: cfg.default_expires,
                min: cfg.min_expires,
                max: cfg.max_expires,
            },
        }
    }
}

/// Who step 3/4 found the request to come from.
struct Authorized {
    device: Arc<Device>,
    user: String,
}

/// One log line per refused REGISTER: which check failed, for which device and user, never the
/// credentials. Cold path: the AOR is parsed again only here.
fn log_rejection(req: &Request, conn: &ConnectionFacts, mut r: Response) -> Response {
    if let Some(rej) = &mut r.rejection {
        if rej.device.is_none() {
            rej.device = req.contacts().ok().and_then(|cs| {
                cs.into_iter().find_map(|c| match c {
                    Contact::Address(a) => a.device_name,
                    Contact::Wildcard => None,
                })
            });
        }
        let aor = req.aor().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            check = rej.check,
            device = rej.device.as_deref().unwrap_or("-"),
            user = rej.user.as_deref().unwrap_or("-"),
            aor = %aor,
            peer = %conn.remote,
            port = conn.local.port(),
            status = r.status,
            "REGISTER rejected"
        );
    }
    r
}

/// RFC 3261 §10.3 steps 1-8 for one REGISTER.
fn register(
    req: &Request,
    conn: &ConnectionFacts,
    dir: &DirectorySnapshot,
    auth: Authenticators<'_>,
    location: &Location,
    cfg: &RegistrarConfig,
    now: i64,
) -> Response {
    // §10.3 step 1: we are not a proxy, so a Request-URI domain we do not serve is not found.
    let ruri_host = crate::message::request_uri_host(&req.request_uri).unwrap_or_default();
    if !cfg.serves(&ruri_host) {
        return done(response(req, 404, "Domain Not Served")).rejected("domain_not_served");
    }

    // §10.3 step 2 / §8.2.2.3: unknown option tags in Require → 420 listing them.
    let unsupported: Vec<&str> = req
        .require()
        .into_iter()
        .filter(|t| !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    if !unsupported.is_empty() {
        return done(
            response(req, 420, "Bad Extension").header("Unsupported", unsupported.join(", ")),
        )
        .rejected("unsupported_extension");
    }
    let path: Vec<String> = req.path().into_iter().map(str::to_owned).collect();
    let supports = |tag: &str| req.supported().iter().any(|t| t.eq_ignore_ascii_case(tag));
    // RFC 3327 §5.3: Path from a UA that did not say it supports Path → 420 (recommended).
    if !path.is_empty() && cfg.path_requires_supported && !supports("path") {
        return done(
            response(req, 420, "Bad Extension")
                .header("Warning", warning(cfg, "Path used without Supported: path")),
        )
        .rejected("path_without_supported");
    }

    // §10.3 step 5 (needed by step 4): the AOR is the To URI without parameters.
    let aor = match req.aor() {
        Ok(a) => a,
        Err(e) => return bad_request(req, &e).rejected("malformed"),
    };
    let contacts = match req.contacts() {
        Ok(c) => c,
        Err(e) => return bad_request(req, &e).rejected("malformed"),
    };
    let header_expires = match req.expires() {
        Ok(e) => e,
        Err(e) => return bad_request(req, &e).rejected("malformed"),
    };

    // §10.3 steps 3-4: authenticate (§22) and authorize for this AOR (→ 403).
    let who = match conn.port {
        PortKind::SipOAuth => bearer_step(req, dir, auth.bearer, &aor, &contacts, cfg, now),
        PortKind::Legacy => digest_step(req, dir, auth.digest, &aor, &contacts, cfg, now),
    };
    let who = match who {
        Ok(w) => w,
        Err(r) => return r,
    };
    // Legacy ports: the device's security profile must allow Digest, over this transport.
    if conn.port == PortKind::Legacy {
        if let Some((check, why)) = digest_profile_check(dir, &who.device, conn.transport) {
            return forbidden(req, cfg, "Forbidden", &why)
                .rejected(check)
                .of_user(&who.user)
                .of_device(&who.device.name);
        }
    }
    let refuse = |r: Response, check| {
        let mut r = r.rejected(check).of_user(&who.user);
        if let Some(rej) = &mut r.rejection {
            rej.device = Some(who.device.name.clone());
        }
        r
    };

    // §10.3 step 5: the AOR must be in a domain we serve.
    if !cfg.serves(&aor.host) {
        return refuse(
            done(response(req, 404, "Not Found").header(
                "Warning",
                warning(cfg, &format!("Domain {} is not served here", aor.host)),
            )),
            "domain_not_served",
        );
    }

    // §10.3 step 6: `Contact: *` only alone and with `Expires: 0`.
    let call_id = req.call_id().unwrap_or_default().to_owned();
    let cseq = req.cseq().map(|c| c.seq).unwrap_or_default();
    let addresses: Vec<&ContactAddress> = contacts
        .iter()
        .filter_map(|c| match c {
            Contact::Address(a) => Some(a),
            Contact::Wildcard => None,
        })
        .collect();
    let mut changes = Vec::new();
    let mut granted: Option<u32> = None;
    if contacts.contains(&Contact::Wildcard) {
        if contacts.len() != 1 {
            return refuse(
                done(response(req, 400, "Wildcard Contact Not Alone")),
                "malformed",
            );
        }
        if header_expires != Some(0) {
            return refuse(
                done(response(req, 400, "Wildcard Contact Requires Expires 0")),
                "malformed",
            );
        }
        changes.push(BindingChange::UnbindAll {
            call_id: call_id.clone(),
            cseq,
        });
        granted = Some(0);
    }

    // RFC 5626 §6: outbound applies when we are the first hop, or the first hop put an `ob`
    // Path URI in front; otherwise reg-id is refused (439) or ignored.
    let edge = req.via().len() > 1 || !path.is_empty();
    let outbound_ok = !edge || path.first().is_some_and(|p| uri_has_ob(p));
    let uses_reg_id = addresses
        .iter()
        .any(|c| c.reg_id.is_some() && c.instance.is_some());
    if uses_reg_id && !outbound_ok && supports("outbound") {
        return refuse(
            done(response(req, 439, "First Hop Lacks Outbound Support")),
            "outbound_first_hop",
        );
    }
    let outbound = uses_reg_id && outbound_ok;
    // The cluster's expiry bounds, read once from this request's snapshot (applied live).
    let bounds = ExpiryBounds::of(dir, cfg);
    let requested = |c: &ContactAddress| c.expires.or(header_expires).unwrap_or(bounds.default);
    // RFC 5626 §6: several non-zero contacts where one has reg-id → 400.
    let live = addresses.iter().filter(|c| requested(c) > 0).count();
    if outbound && live > 1 {
        return refuse(
            done(response(req, 400, "Multiple Contacts With reg-id")),
            "malformed",
        );
    }

    // §10.3 step 7: expiry per contact; 423 below the minimum; build the change set.
    let (flow, flow_state) = match conn.transport {
        Transport::Udp => (0, FlowState::Datagram),
        Transport::Tcp | Transport::Tls => (conn.flow, FlowState::Open),
    };
    for c in &addresses {
        let asked = requested(c);
        let reg_id = c.reg_id.filter(|_| c.instance.is_some() && outbound);
        if asked == 0 {
            changes.push(BindingChange::Unbind {
                contact_key: c.uri_key.clone(),
                instance: c.instance.clone(),
                reg_id,
                call_id: call_id.clone(),
                cseq,
            });
            granted.get_or_insert(0);
            continue;
        }
        // §10.3 step 7: 423 only for 0 < asked < 1 hour and below our minimum.
        if asked < bounds.min && asked < 3600 {
            return refuse(
                done(
                    response(req, 423, "Interval Too Brief")
                        .header("Min-Expires", bounds.min.to_string()),
                ),
                "interval_too_brief",
            );
        }
        let grant = asked.min(bounds.max);
        if granted.is_none_or(|g| g == 0) {
            granted = Some(grant);
        }
        changes.push(BindingChange::Bind(Binding {
            contact_uri: c.uri.clone(),
            contact_key: c.uri_key.clone(),
            contact_raw: c.raw.clone(),
            contact_params: c
                .raw_params
                .iter()
                .filter(|p| {
                    let name = p.split('=').next().unwrap_or("").trim();
                    !name.eq_ignore_ascii_case("expires")
                })
                .cloned()
                .collect(),
            expires_at: now + i64::from(grant),
            call_id: call_id.clone(),
            cseq,
            q: c.q.clone(),
            instance: c.instance.clone(),
            reg_id,
            path: path.clone(),
            device: Some(who.device.name.clone()),
            user: who.user.clone(),
            flow,
            flow_state,
            transport: conn.transport,
            source: Some(conn.remote),
            outbound: reg_id.is_some(),
        }));
    }
    // §10.3 step 6: no Contact → a query; nothing changes. Either way the current bindings
    // are read in place for their Contact values, not copied out.
    let aor_key = aor.to_string();
    let mut listed: Vec<String> = Vec::new();
    let list = |b: BindingView<'_>| listed.push(contact_value(&b, now));
    if changes.is_empty() {
        location.visit(&aor_key, now, list);
    } else {
        // §10.3 step 7: all of the request's changes commit together or not at all.
        match location.apply_then(&aor_key, &changes, cfg.max_bindings_per_aor, now, list) {
            Ok(()) => {}
            // §10.3 step 7: "the update MUST be aborted and the request fails"; §12.2.2 uses 500.
            Err(ApplyError::OutOfOrder { .. }) => {
                return refuse(
                    done(response(req, 500, "CSeq Out Of Order")),
                    "cseq_out_of_order",
                )
            }
            Err(ApplyError::TooManyBindings { max }) => {
                return refuse(
                    forbidden(
                        req,
                        cfg,
                        "Too Many Bindings",
                        &format!("AOR {aor_key} may hold at most {max} bindings"),
                    ),
                    "too_many_bindings",
                )
            }
        }
    }

    // §10.3 step 8: 200 listing every current binding with its remaining expiry.
    let mut ok = response(req, 200, "OK");
    for v in listed {
        ok = ok.header("Contact", v);
    }
    if let Some(g) = granted {
        // Jabber reads the granted interval from the Expires header (spec §2.2).
        let mut expires = String::with_capacity(10);
        crate::message::push_u32(&mut expires, g);
        ok = ok.header("Expires", expires);
    }
    ok = ok.header("Date", http_date(now));
    if !path.is_empty() {
        // RFC 3327 §5.3: echo the Path vector.
        ok = ok.header("Path", path.join(", "));
    }
    if outbound && supports("outbound") {
        // RFC 5626 §6: Require: outbound; Flow-Timer only when the client reaches us directly.
        ok = ok.header("Require", "outbound");
        if !edge && cfg.flow_timer > 0 {
            ok = ok.header("Flow-Timer", cfg.flow_timer.to_string());
        }
    }
    let mut r = done(ok);
    r.changed = !changes.is_empty();
    r
}

/// SIP OAuth port, §10.3 steps 3-4: a Bearer token (RFC 8898), cluster OAuth mode, and a device
/// of the token's user that carries the AOR's line and has OAuth in its profile.
fn bearer_step(
    req: &Request,
    dir: &DirectorySnapshot,
    validator: &dyn BearerValidator,
    aor: &Aor,
    contacts: &[Contact],
    cfg: &RegistrarConfig,
    now: i64,
) -> Result<Authorized, Response> {
    let setting = dir.cluster.map(|c| c.challenge_dialect).unwrap_or_default();
    let dialect = AuthDialect::choose(req, setting);
    let token = match bearer_token(req) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(challenge(req, dialect, cfg, None)),
        Err(e) => {
            return Err(done(response(req, 400, &capitalise(&e.to_string())))
                .rejected("malformed_credentials"))
        }
    };
    let identity = match validator.validate(&token, now) {
        Ok(id) => id,
        Err(e) => {
            return Err(challenge(req, dialect, cfg, Some(&e.description))
                .rejected(token_check(&e.description)))
        }
    };
    // Spec §2.3: cluster OAuth mode may have been switched off while this connection was open.
    if !dir.oauth_mode() {
        return Err(port_mismatch(req, cfg)
            .rejected("oauth_mode_off")
            .of_user(&identity.user));
    }
    match authorize(&identity, aor, contacts, dir) {
        Ok(device) => Ok(Authorized {
            device,
            user: identity.user,
        }),
        Err(Denial::PortMismatch(device)) => {
            // Unified CM's documented Warning first (clients match it), then one naming the
            // profile for the operator.
            let why = format!(
                "security profile \"{}\" of device {} has OAuth off",
                device.profile, device.name
            );
            let r = done(
                response(req, 403, "Forbidden")
                    .header("Retry-After", PORT_MISMATCH_RETRY_AFTER.to_string())
                    .header("Warning", warning(cfg, PORT_MISMATCH))
                    .header("Warning", warning(cfg, &why)),
            );
            Err(r
                .rejected("profile_no_oauth")
                .of_user(&identity.user)
                .of_device(&device.name))
        }
        Err(Denial::Forbidden(check, why)) => Err(forbidden(req, cfg, "Forbidden", &why)
            .rejected(check)
            .of_user(&identity.user)),
    }
}

/// Legacy ports, §10.3 steps 3-4 with §22 / RFC 7616 Digest: the credential's device must carry
/// the AOR's line; an OAuth device is sent to the OAuth port while cluster OAuth mode is on.
fn digest_step(
    req: &Request,
    dir: &DirectorySnapshot,
    digest: &DigestAuth,
    aor: &Aor,
    contacts: &[Contact],
    cfg: &RegistrarConfig,
    now: i64,
) -> Result<Authorized, Response> {
    let challenge = |stale: bool| {
        let mut r = response(req, 401, "Unauthorized");
        for c in digest.challenges(&cfg.digest_realm, now, stale) {
            r = r.header("WWW-Authenticate", c);
        }
        done(r)
    };
    // The credentials for our realm; others (another hop's, Bearer) are not ours to judge.
    let mut creds = None;
    for value in req
        .authorization()
        .into_iter()
        .chain(req.proxy_authorization())
    {
        match DigestResponse::parse(value) {
            Ok(Some(d)) if d.realm == cfg.digest_realm => {
                creds = Some(d);
                break;
            }
            Ok(_) => {}
            Err(DigestError::Unsupported) => return Err(challenge(false)),
            Err(e) => {
                return Err(done(response(req, 400, &capitalise(&e.to_string())))
                    .rejected("malformed_credentials"))
            }
        }
    }
    let Some(creds) = creds else {
        return Err(challenge(false));
    };
    let Some((device, stored)) = dir.digest_credential(&creds.username) else {
        tracing::debug!(username = %creds.username, "digest: unknown user name");
        return Err(challenge(false).rejected("digest_unknown_user"));
    };
    let ha1 = match creds.algorithm {
        Algorithm::Md5 => &stored.ha1_md5,
        Algorithm::Sha256 => &stored.ha1_sha256,
    };
    if ha1.is_empty() || stored.realm != cfg.digest_realm {
        tracing::warn!(username = %creds.username, realm = %stored.realm, "digest credential unusable for realm {}", cfg.digest_realm);
        return Err(challenge(false)
            .rejected("digest_credential_unusable")
            .of_user(&device.owner));
    }
    match digest.verify(
        &creds,
        &req.method,
        &req.request_uri,
        &cfg.digest_realm,
        ha1,
        now,
    ) {
        Ok(()) => {}
        Err(DigestError::Stale) => return Err(challenge(true)),
        // A correct answer to another node's nonce (failover, a restart): the phone retries on
        // ours without a password prompt; not a failed authentication.
        Err(DigestError::OtherNode) => {
            tracing::debug!(username = %creds.username, "digest: nonce of another node, challenged as stale");
            return Err(challenge(true));
        }
        Err(e) => {
            tracing::debug!(username = %creds.username, error = %e, "digest rejected");
            return Err(challenge(false)
                .rejected("digest_failed")
                .of_user(&device.owner));
        }
    }
    // §10.3 step 4.
    let dn = aor.user.as_deref().unwrap_or_default();
    if !device.has_line(dn) {
        let why = format!("Line {dn} is not on device {}", device.name);
        return Err(forbidden(req, cfg, "Forbidden", &why)
            .rejected("line_not_on_device")
            .of_user(&device.owner));
    }
    let named = contacts.iter().find_map(|c| match c {
        Contact::Address(a) => a.device_name.as_deref(),
        Contact::Wildcard => None,
    });
    if let Some(name) = named.filter(|n| !n.eq_ignore_ascii_case(&device.name)) {
        let why = format!(
            "Contact names device {name}, credentials are of {}",
            device.name
        );
        return Err(forbidden(req, cfg, "Forbidden", &why)
            .rejected("device_mismatch")
            .of_user(&device.owner));
    }
    if dir.oauth_mode() && device.oauth {
        return Err(forbidden(req, cfg, "Forbidden", USE_OAUTH_PORT)
            .rejected("use_oauth_port")
            .of_user(&device.owner));
    }
    Ok(Authorized {
        device: device.clone(),
        user: device.owner.clone(),
    })
}

/// Whether the device's security profile refuses Digest (at all, or over `transport`): the check
/// name and the Warning text naming the profile. A device whose profile is not in the snapshot
/// (a store without profiles) is not restricted.
fn digest_profile_check(
    dir: &DirectorySnapshot,
    device: &Device,
    transport: Transport,
) -> Option<(&'static str, String)> {
    let profile = dir.profile(&device.profile)?;
    if !profile.digest {
        return Some((
            "profile_no_digest",
            format!(
                "security profile \"{}\" of device {} does not allow Digest",
                profile.name, device.name
            ),
        ));
    }
    let t = match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    };
    if !profile.transport.allows(t) {
        return Some((
            "profile_transport",
            format!(
                "security profile \"{}\" of device {} allows Digest over {} only, not {}",
                profile.name,
                device.name,
                profile.transport.as_str(),
                t
            ),
        ));
    }
    None
}

/// Why step 4 refused.
enum Denial {
    /// The device's security profile has OAuth off: Unified CM's port-mismatch 403.
    PortMismatch(Arc<Device>),
    /// Not allowed: the check that failed, and the text for the Warning.
    Forbidden(&'static str, String),
}

/// The token's user must own the device named in the Contact (else any of their devices
/// carrying the AOR's line), the AOR's user part must be a line of it, and its security profile
/// must enable OAuth.
fn authorize(
    id: &TokenIdentity,
    aor: &Aor,
    contacts: &[Contact],
    dir: &DirectorySnapshot,
) -> Result<std::sync::Arc<Device>, Denial> {
    let dn = aor.user.as_deref().ok_or_else(|| {
        Denial::Forbidden("no_line_number", format!("AOR {aor} has no line number"))
    })?;
    let mut named: Vec<&str> = contacts
        .iter()
        .filter_map(|c| match c {
            Contact::Address(a) => a.device_name.as_deref(),
            Contact::Wildcard => None,
        })
        .collect();
    named.sort_unstable_by_key(|n| n.to_ascii_lowercase());
    named.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    match named.as_slice() {
        [] => {
            let mut candidates = dir
                .devices_of(&id.user)
                .iter()
                .filter(|d| d.has_line(dn))
                .peekable();
            if candidates.peek().is_none() {
                return Err(Denial::Forbidden(
                    "line_not_on_device",
                    format!("User {} has no device with line {dn}", id.user),
                ));
            }
            let first = candidates.peek().map(|d| Arc::clone(d));
            match (candidates.find(|d| d.oauth), first) {
                (Some(d), _) => Ok(d.clone()),
                (None, Some(first)) => Err(Denial::PortMismatch(first)),
                (None, None) => Err(Denial::Forbidden(
                    "line_not_on_device",
                    format!("User {} has no device with line {dn}", id.user),
                )),
            }
        }
        [name] => {
            let device = dir.device(name).ok_or_else(|| {
                Denial::Forbidden("unknown_device", format!("Unknown device {name}"))
            })?;
            if device.owner != id.user {
                return Err(Denial::Forbidden(
                    "device_not_owned",
                    format!("Device {} is not owned by {}", device.name, id.user),
                ));
            }
            if !device.has_line(dn) {
                return Err(Denial::Forbidden(
                    "line_not_on_device",
                    format!("Line {dn} is not on device {}", device.name),
                ));
            }
            if !device.oauth {
                return Err(Denial::PortMismatch(device.clone()));
            }
            Ok(device.clone())
        }
        _ => Err(Denial::Forbidden(
            "several_devices",
            "Contacts name more than one device".into(),
        )),
    }
}

/// The check name of a refused token, from the validator's description.
fn token_check(description: &str) -> &'static str {
    let d = description.to_ascii_lowercase();
    if d.contains("expired") {
        "token_expired"
    } else if d.contains("revoked") {
        "token_revoked"
    } else {
        "token_invalid"
    }
}

/// 401/407 challenge; with `error` set, the token was rejected (RFC 6750 §3.1, RFC 8898 §2.2).
fn challenge(
    req: &Request,
    dialect: AuthDialect,
    cfg: &RegistrarConfig,
    error: Option<&str>,
) -> Response {
    let error = error
        .map(|d| {
            format!(
                ", error=\"invalid_token\", error_description=\"{}\"",
                quoted_param(d)
            )
        })
        .unwrap_or_default();
    match dialect {
        AuthDialect::Rfc8898 => done(response(req, 401, "Unauthorized").header(
            "WWW-Authenticate",
            format!(
                "Bearer realm=\"{}\", scope=\"{}\", authz_server=\"{}\"{error}",
                quoted_param(&cfg.realm),
                quoted_param(&cfg.scope),
                quoted_param(&cfg.authz_server)
            ),
        )),
        AuthDialect::UnifiedCm => done(response(req, 407, "Proxy Authentication Required").header(
            "Proxy-Authenticate",
            format!("Bearer realm=\"{UNIFIED_CM_REALM}\"{error}"),
        )),
    }
}

fn port_mismatch(req: &Request, cfg: &RegistrarConfig) -> Response {
    done(
        response(req, 403, "Forbidden")
            .header("Retry-After", PORT_MISMATCH_RETRY_AFTER.to_string())
            .header("Warning", warning(cfg, PORT_MISMATCH)),
    )
}

fn forbidden(req: &Request, cfg: &RegistrarConfig, reason: &str, why: &str) -> Response {
    done(response(req, 403, reason).header("Warning", warning(cfg, why)))
}

/// `Warning: 399 <host> "<text>"` (RFC 3261 §20.43; 399 = miscellaneous).
fn warning(cfg: &RegistrarConfig, text: &str) -> String {
    format!("399 {} \"{}\"", cfg.host, quoted_param(text))
}

/// A binding as a 200 OK Contact: URI, our `expires`, then the parameters the client sent
/// (q-value, instance, reg-id, Cisco feature tags), so it recognises its own binding.
fn contact_value(b: &BindingView<'_>, now: i64) -> String {
    let uri = b.contact_uri();
    let params: usize = b.contact_params().map(|p| p.len() + 1).sum();
    let mut v = String::with_capacity(uri.len() + params + 24);
    v.push('<');
    v.push_str(uri);
    v.push_str(">;expires=");
    // Remaining seconds: clamped to 0..=u32::MAX (expiries are u32 seconds from a grant).
    let left = u32::try_from((b.expires_at() - now).max(0)).unwrap_or(u32::MAX);
    crate::message::push_u32(&mut v, left);
    if !b.has_contact_params() {
        // Restored from an older format: rebuild what matters.
        if let Some(q) = b.q() {
            v.push_str(";q=");
            v.push_str(q);
        }
        if let Some(i) = b.instance() {
            v.push_str(";+sip.instance=\"");
            v.push_str(&quoted_param(i));
            v.push('"');
        }
        if let Some(r) = b.reg_id() {
            v.push_str(";reg-id=");
            crate::message::push_u32(&mut v, r);
        }
    }
    for p in b.contact_params() {
        v.push(';');
        v.push_str(p);
    }
    v
}

fn http_date(now: i64) -> String {
    let secs = u64::try_from(now).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn capitalise(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        })
        .collect::<Vec<String>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::BearerError;
    use crate::digest::ha1;
    use sipreg_store::{
        ChallengeDialect, ClusterSettings, Device, DigestCredential, Directory, Line, SqliteStore,
        Store, User,
    };
    use std::sync::Arc;

    const NOW: i64 = 1_700_000_000;

    struct FakeValidator;
    impl BearerValidator for FakeValidator {
        fn validate(&self, token: &str, now: i64) -> Result<TokenIdentity, BearerError> {
            assert!(now >= NOW, "the registrar passes its clock through");
            match token.strip_prefix("good-") {
                Some(user) => Ok(TokenIdentity {
                    user: user.into(),
                    scope: "UnifiedCommunications:readwrite".into(),
                }),
                None => Err(BearerError {
                    description: "token expired".into(),
                }),
            }
        }
    }

    fn snapshot(oauth_mode: bool) -> Arc<DirectorySnapshot> {
        snapshot_with(ClusterSettings {
            oauth_mode,
            ..ClusterSettings::default()
        })
    }

    fn snapshot_with(settings: ClusterSettings) -> Arc<DirectorySnapshot> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
            store.set_cluster_settings(&settings).await.unwrap();
            for id in ["alice", "bob"] {
                store
                    .create_user(&User {
                        id: id.into(),
                        password_hash: String::new(),
                        created_at: 0,
                    })
                    .await
                    .unwrap();
            }
            let dev = |name: &str, owner: &str, dns: &[&str], oauth: bool| Device {
                name: name.into(),
                owner: owner.into(),
                lines: dns
                    .iter()
                    .map(|d| Line {
                        dn: (*d).into(),
                        display_name: None,
                    })
                    .collect(),
                oauth,
                updated_at: 0,
                model: String::new(),
                profile: String::new(),
            };
            store
                .create_device(&dev("CSFalice", "alice", &["1010"], true))
                .await
                .unwrap();
            store
                .create_device(&dev("CSFalice2", "alice", &["1011"], false))
                .await
                .unwrap();
            store
                .create_device(&dev("CSFbob", "bob", &["2020"], true))
                .await
                .unwrap();
            store
                .create_device(&dev("SEPlegacy", "bob", &["3030"], false))
                .await
                .unwrap();
            // Profiles restricting Digest: not at all, and TLS only.
            for (name, digest) in [("No Digest", false), ("TLS Digest", true)] {
                store
                    .create_profile(&sipreg_store::SecurityProfile {
                        name: name.into(),
                        description: String::new(),
                        oauth: false,
                        digest,
                        transport: sipreg_store::ProfileTransport::Tls,
                    })
                    .await
                    .unwrap();
            }
            for (name, dn, profile) in [
                ("SEPnodigest", "3031", "No Digest"),
                ("SEPtls", "3032", "TLS Digest"),
            ] {
                let mut d = dev(name, "bob", &[dn], false);
                d.profile = profile.into();
                store.create_device(&d).await.unwrap();
            }
            for (device, user) in [
                ("SEPlegacy", "3030"),
                ("CSFalice", "alice-csf"),
                ("SEPnodigest", "3031"),
                ("SEPtls", "3032"),
            ] {
                let cred = DigestCredential {
                    username: user.into(),
                    realm: "ccmsipline".into(),
                    ha1_md5: ha1(Algorithm::Md5, user, "ccmsipline", "pw"),
                    ha1_sha256: ha1(Algorithm::Sha256, user, "ccmsipline", "pw"),
                };
                store
                    .set_digest_credential(device, Some(&cred))
                    .await
                    .unwrap();
            }
            Directory::load(&store).await.unwrap().snapshot()
        })
    }

    struct Harness {
        dir: Arc<DirectorySnapshot>,
        loc: Location,
        cfg: RegistrarConfig,
        conn: ConnectionFacts,
        digest: DigestAuth,
        now: i64,
    }

    struct Resp {
        status: u16,
        reason: String,
        text: String,
        /// The failed check, when the answer refuses the REGISTER (counted and logged).
        rejected: Option<&'static str>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers(name).into_iter().next()
        }
        fn headers(&self, name: &str) -> Vec<&str> {
            let prefix = format!("{name}: ");
            self.text
                .split("\r\n")
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .collect()
        }
    }

    impl Harness {
        fn new() -> Self {
            Harness {
                dir: snapshot(true),
                loc: Location::new(),
                cfg: RegistrarConfig::default(),
                conn: ConnectionFacts {
                    remote: "10.0.0.1:5000".parse().unwrap(),
                    local: "10.0.0.2:5090".parse().unwrap(),
                    flow: 7,
                    transport: Transport::Tls,
                    port: PortKind::SipOAuth,
                },
                digest: DigestAuth::new([9; 32], 300),
                now: NOW,
            }
        }
        fn send_raw(&self, msg: &str) -> Option<Resp> {
            let req = Request::parse(msg.as_bytes()).unwrap();
            let r = process(
                &req,
                &self.conn,
                &self.dir,
                Authenticators {
                    bearer: &FakeValidator,
                    digest: &self.digest,
                },
                &self.loc,
                &self.cfg,
                self.now,
            )?;
            let text = String::from_utf8(r.bytes).unwrap();
            let first = text.split("\r\n").next().unwrap().to_owned();
            let mut parts = first.splitn(3, ' ');
            parts.next();
            let status: u16 = parts.next().unwrap().parse().unwrap();
            assert_eq!(status, r.status);
            Some(Resp {
                status,
                reason: parts.next().unwrap().to_owned(),
                text,
                rejected: r.rejection.map(|rej| rej.check),
            })
        }
        /// A REGISTER for 1010@example.com with `extra` headers.
        fn register(&self, cseq: u32, extra: &str) -> Resp {
            self.send_raw(&format!(
                "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:5000;branch=z9hG4bK{cseq}\r\n\
From: <sip:1010@example.com>;tag=f\r\nTo: <sip:1010@example.com>\r\nCall-ID: call-1\r\n\
CSeq: {cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
            ))
            .unwrap()
        }
    }

    const AUTH: &str = "Authorization: Bearer good-alice\r\n";
    const CONTACT: &str = "Contact: <sip:alice@10.0.0.1:5000;transport=tls>\r\n";

    #[test]
    fn no_credentials_rfc8898_challenge() {
        let h = Harness::new();
        let r = h.register(1, CONTACT);
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some("Bearer realm=\"sipreg\", scope=\"UnifiedCommunications:readwrite\", authz_server=\"https://localhost:8443/oauth\"")
        );
        assert!(
            !r.text.contains("error="),
            "no error code without credentials (RFC 6750 §3)"
        );
        assert!(r.header("To").unwrap().contains(";tag="));
        assert!(h.loc.is_empty());
    }

    #[test]
    fn the_cluster_dialect_setting_forces_one_challenge() {
        let mut h = Harness::new();
        for (setting, ua, status) in [
            (ChallengeDialect::Rfc8898, "User-Agent: Cisco-CSF\r\n", 401),
            (ChallengeDialect::Cucm, "User-Agent: Linphone\r\n", 407),
            (ChallengeDialect::Auto, "User-Agent: Linphone\r\n", 401),
        ] {
            h.dir = snapshot_with(ClusterSettings {
                oauth_mode: true,
                challenge_dialect: setting,
                ..ClusterSettings::default()
            });
            let r = h.register(1, &format!("{ua}{CONTACT}"));
            assert_eq!(r.status, status, "{setting:?}");
        }
    }

    #[test]
    fn no_credentials_unified_cm_challenge() {
        let h = Harness::new();
        let r = h.register(1, &format!("User-Agent: Cisco-CSF\r\n{CONTACT}"));
        assert_eq!(
            (r.status, r.reason.as_str()),
            (407, "Proxy Authentication Required")
        );
        assert_eq!(
            r.header("Proxy-Authenticate"),
            Some("Bearer realm=\"ccmsipline\"")
        );
        assert_eq!(r.header("WWW-Authenticate"), None);
        let r = h.register(
            1,
            "Contact: <sip:a@h>;+u.sip!devicename.ccm.cisco.com=\"CSFalice\"\r\n",
        );
        assert_eq!(
            r.status, 407,
            "a Cisco device contact also selects the Unified CM dialect"
        );
    }

    #[test]
    fn invalid_token_in_both_dialects() {
        let h = Harness::new();
        let r = h.register(1, &format!("Authorization: Bearer expired\r\n{CONTACT}"));
        assert_eq!(r.status, 401);
        let www = r.header("WWW-Authenticate").unwrap();
        assert!(www.starts_with("Bearer realm=\"sipreg\""), "{www}");
        assert!(
            www.ends_with(", error=\"invalid_token\", error_description=\"token expired\""),
            "{www}"
        );
        let r = h.register(1, &format!("User-Agent: Cisco-CSF\r\nProxy-Authorization: Bearer token=\"expired\"\r\n{CONTACT}"));
        assert_eq!(r.status, 407);
        assert_eq!(
            r.header("Proxy-Authenticate"),
            Some("Bearer realm=\"ccmsipline\", error=\"invalid_token\", error_description=\"token expired\"")
        );
        assert!(h.loc.is_empty());
    }

    #[test]
    fn malformed_bearer_is_400() {
        let h = Harness::new();
        let r = h.register(1, &format!("Authorization: Bearer a b\r\n{CONTACT}"));
        assert_eq!(
            (r.status, r.reason.as_str()),
            (400, "Malformed Bearer Credentials")
        );
    }

    #[test]
    fn both_credential_forms_register() {
        let h = Harness::new();
        let r = h.register(1, &format!("{AUTH}{CONTACT}"));
        assert_eq!(r.status, 200, "{}", r.text);
        let r = h.register(
            2,
            "User-Agent: Cisco-CSF\r\nProxy-Authorization: Bearer token=\"good-alice\"\r\n\
Contact: <sip:alice@10.0.0.1:5000;transport=tls>;+u.sip!devicename.ccm.cisco.com=\"CSFalice\"\r\n",
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            h.loc.bindings("1010@example.com", NOW).len(),
            1,
            "same contact refreshed"
        );
        assert_eq!(
            h.loc.bindings("1010@example.com", NOW)[0].device.as_deref(),
            Some("CSFalice")
        );
    }

    #[test]
    fn unknown_require_is_420_but_path_is_fine() {
        let h = Harness::new();
        let r = h.register(1, &format!("Require: path, foo,bar\r\n{AUTH}{CONTACT}"));
        assert_eq!((r.status, r.reason.as_str()), (420, "Bad Extension"));
        assert_eq!(r.header("Unsupported"), Some("foo, bar"));
        let r = h.register(2, &format!("Require: path\r\n{AUTH}{CONTACT}"));
        assert_eq!(r.status, 200);
    }

    #[test]
    fn cluster_oauth_off_is_port_mismatch() {
        let mut h = Harness::new();
        h.dir = snapshot(false);
        let r = h.register(1, &format!("{AUTH}{CONTACT}"));
        assert_eq!((r.status, r.reason.as_str()), (403, "Forbidden"));
        assert_eq!(r.header("Retry-After"), Some("35"));
        assert_eq!(
            r.header("Warning"),
            Some("399 sipreg \"SIP OAuth Registration port Mismatch\"")
        );
        assert!(h.loc.is_empty());
    }

    #[test]
    fn device_profile_without_oauth_is_port_mismatch() {
        let h = Harness::new();
        let r = h.send_raw(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nFrom: <sip:1011@example.com>;tag=f\r\n\
To: <sip:1011@example.com>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nAuthorization: Bearer good-alice\r\n\
Contact: <sip:a@h>;+u.sip!devicename.ccm.cisco.com=\"CSFalice2\"\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("Warning"),
            Some("399 sipreg \"SIP OAuth Registration port Mismatch\"")
        );
        // Same without the device parameter: the only device with that line has OAuth off.
        let r = h.send_raw(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nFrom: <sip:1011@example.com>;tag=f\r\n\
To: <sip:1011@example.com>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nAuthorization: Bearer good-alice\r\n\
Contact: <sip:a@h>\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.header("Retry-After"), Some("35"));
    }

    #[test]
    fn authorization_failures_say_why() {
        let h = Harness::new();
        let cases = [
            ("Authorization: Bearer good-bob\r\nContact: <sip:a@h>;+u.sip!devicename.ccm.cisco.com=\"CSFalice\"\r\n", "Device CSFalice is not owned by bob"),
            ("Authorization: Bearer good-alice\r\nContact: <sip:a@h>;+u.sip!devicename.ccm.cisco.com=\"CSFbob\"\r\n", "Device CSFbob is not owned by alice"),
            ("Authorization: Bearer good-alice\r\nContact: <sip:a@h>;+u.sip!devicename.ccm.cisco.com=\"CSFnone\"\r\n", "Unknown device CSFnone"),
            ("Authorization: Bearer good-bob\r\nContact: <sip:a@h>\r\n", "User bob has no device with line 1010"),
            ("Authorization: Bearer good-carol\r\nContact: <sip:a@h>\r\n", "User carol has no device with line 1010"),
            (
                "Authorization: Bearer good-alice\r\nContact: <sip:a@h>;+u.sip!devicename.ccm.cisco.com=\"CSFalice\", <sip:b@h>;+u.sip!devicename.ccm.cisco.com=\"CSFalice2\"\r\n",
                "Contacts name more than one device",
            ),
        ];
        for (extra, why) in cases {
            let r = h.register(1, extra);
            assert_eq!((r.status, r.reason.as_str()), (403, "Forbidden"), "{extra}");
            assert_eq!(
                r.header("Warning"),
                Some(format!("399 sipreg \"{why}\"").as_str())
            );
            assert_eq!(r.header("Retry-After"), None);
        }
        // Line not on the named device.
        let r = h.send_raw(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nFrom: <sip:1011@example.com>;tag=f\r\n\
To: <sip:1011@example.com>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nAuthorization: Bearer good-alice\r\n\
Contact: <sip:a@h>;+u.sip!devicename.ccm.cisco.com=\"csfALICE\"\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            r.header("Warning"),
            Some("399 sipreg \"Line 1011 is not on device CSFalice\"")
        );
        assert!(h.loc.is_empty());
    }

    #[test]
    fn bad_to_uri_is_400() {
        let h = Harness::new();
        let r = h.send_raw(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nFrom: <sip:1010@example.com>;tag=f\r\n\
To: <tel:+1010>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nAuthorization: Bearer good-alice\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.reason.as_str()), (400, "Bad To URI"));
    }

    #[test]
    fn wildcard_rules() {
        let h = Harness::new();
        assert_eq!(
            h.register(
                1,
                &format!("{AUTH}{CONTACT}Contact: <sip:other@10.0.0.1>\r\n")
            )
            .status,
            200
        );
        assert_eq!(h.loc.len(), 2);
        let r = h.register(2, &format!("{AUTH}Contact: *\r\n"));
        assert_eq!(
            (r.status, r.reason.as_str()),
            (400, "Wildcard Contact Requires Expires 0")
        );
        let r = h.register(2, &format!("{AUTH}Contact: *, <sip:x@h>\r\nExpires: 0\r\n"));
        assert_eq!(
            (r.status, r.reason.as_str()),
            (400, "Wildcard Contact Not Alone")
        );
        // Same Call-ID, CSeq not higher: fails, nothing removed.
        let r = h.register(1, &format!("{AUTH}Contact: *\r\nExpires: 0\r\n"));
        assert_eq!((r.status, r.reason.as_str()), (500, "CSeq Out Of Order"));
        assert_eq!(h.loc.len(), 2);
        let r = h.register(3, &format!("{AUTH}Contact: *\r\nExpires: 0\r\n"));
        assert_eq!(r.status, 200);
        assert!(r.headers("Contact").is_empty());
        assert_eq!(r.header("Expires"), Some("0"));
        assert!(h.loc.is_empty());
    }

    #[test]
    fn expiry_sources_cap_and_minimum() {
        let mut h = Harness::new();
        // The cluster settings decide, not the node's config.
        h.cfg.max_expires = 60;
        h.dir = snapshot_with(ClusterSettings {
            oauth_mode: true,
            default_expires: 1800,
            max_expires: 1800,
            ..ClusterSettings::default()
        });
        // Contact param beats header.
        let r = h.register(
            1,
            &format!("{AUTH}Contact: <sip:a@h>;expires=120\r\nExpires: 600\r\n"),
        );
        assert_eq!(r.header("Expires"), Some("120"));
        assert_eq!(r.header("Contact"), Some("<sip:a@h>;expires=120"));
        // Header beats default.
        let r = h.register(2, &format!("{AUTH}Contact: <sip:a@h>\r\nExpires: 600\r\n"));
        assert_eq!(r.header("Contact"), Some("<sip:a@h>;expires=600"));
        // No expiry asked: the cluster's default.
        let r = h.register(3, &format!("{AUTH}Contact: <sip:a@h>\r\n"));
        assert_eq!(r.header("Expires"), Some("1800"));
        assert_eq!(
            h.loc.bindings("1010@example.com", NOW)[0].expires_at,
            NOW + 1800
        );
        // Below the minimum: 423 + Min-Expires, nothing changes (all-or-nothing across contacts).
        let r = h.register(
            4,
            &format!("{AUTH}Contact: <sip:b@h>;expires=300, <sip:c@h>;expires=30\r\n"),
        );
        assert_eq!((r.status, r.reason.as_str()), (423, "Interval Too Brief"));
        assert_eq!(r.header("Min-Expires"), Some("60"));
        assert_eq!(h.loc.len(), 1);
        // A new minimum applies to the next request.
        h.dir = snapshot_with(ClusterSettings {
            oauth_mode: true,
            min_expires: 400,
            ..ClusterSettings::default()
        });
        let r = h.register(6, &format!("{AUTH}Contact: <sip:b@h>;expires=300\r\n"));
        assert_eq!(r.header("Min-Expires"), Some("400"));
        h.dir = snapshot_with(ClusterSettings {
            oauth_mode: true,
            default_expires: 1800,
            max_expires: 1800,
            ..ClusterSettings::default()
        });
        // Expires 0 removes.
        let r = h.register(5, &format!("{AUTH}Contact: <sip:a@h>;expires=0\r\n"));
        assert_eq!(r.status, 200);
        assert!(r.headers("Contact").is_empty());
        assert!(h.loc.is_empty());
    }

    #[test]
    fn refresh_and_cseq_ordering() {
        let h = Harness::new();
        assert_eq!(
            h.register(10, &format!("{AUTH}Contact: <sip:a@h>;expires=100\r\n"))
                .status,
            200
        );
        let r = h.register(11, &format!("{AUTH}Contact: <sip:a@h>;expires=200\r\n"));
        assert_eq!(r.header("Contact"), Some("<sip:a@h>;expires=200"));
        for stale in [11, 5] {
            let r = h.register(stale, &format!("{AUTH}Contact: <sip:a@h>;expires=300\r\n"));
            assert_eq!((r.status, r.reason.as_str()), (500, "CSeq Out Of Order"));
        }
        let b = h.loc.bindings("1010@example.com", NOW);
        assert_eq!((b[0].cseq, b[0].expires_at), (11, NOW + 200));
        // Another Call-ID (a new client instance) may refresh with any CSeq.
        let r = h.send_raw(&format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nFrom: <sip:1010@example.com>;tag=f\r\n\
To: <sip:1010@example.com>\r\nCall-ID: call-2\r\nCSeq: 1 REGISTER\r\n{AUTH}Contact: <SIP:a@H>;expires=400\r\nContent-Length: 0\r\n\r\n"
        ))
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(h.loc.len(), 1, "<SIP:a@H> is the same contact as <sip:a@h>");
    }

    #[test]
    fn query_and_ok_contents() {
        let h = Harness::new();
        let r = h.register(
            1,
            &format!(
                "{AUTH}Supported: path\r\nPath: <sip:edge1;lr>, <sip:edge2;lr>\r\n\
Contact: \"A\" <sip:a@h;transport=tls>;q=0.7;+sip.instance=\"<urn:uuid:1>\";reg-id=1;expires=300\r\n"
            ),
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("Contact"),
            Some(
                "<sip:a@h;transport=tls>;expires=300;q=0.7;+sip.instance=\"<urn:uuid:1>\";reg-id=1"
            )
        );
        assert_eq!(r.header("Path"), Some("<sip:edge1;lr>, <sip:edge2;lr>"));
        assert_eq!(r.header("Date"), Some("Tue, 14 Nov 2023 22:13:20 GMT"));
        assert_eq!(
            h.loc.bindings("1010@example.com", NOW)[0].path,
            vec!["<sip:edge1;lr>", "<sip:edge2;lr>"]
        );
        assert_eq!(h.loc.bindings("1010@example.com", NOW)[0].flow, 7);
        // Query: no Contact → current bindings, nothing changes.
        let r = h.register(2, AUTH);
        assert_eq!(r.status, 200);
        assert_eq!(r.headers("Contact").len(), 1);
        assert_eq!(r.header("Expires"), None);
        assert_eq!(r.header("Path"), None);
    }

    #[test]
    fn too_many_bindings_is_403() {
        let mut h = Harness::new();
        h.cfg.max_bindings_per_aor = 2;
        assert_eq!(
            h.register(1, &format!("{AUTH}Contact: <sip:a@h>, <sip:b@h>\r\n"))
                .status,
            200
        );
        let r = h.register(2, &format!("{AUTH}Contact: <sip:c@h>\r\n"));
        assert_eq!((r.status, r.reason.as_str()), (403, "Too Many Bindings"));
        assert_eq!(
            r.header("Warning"),
            Some("399 sipreg \"AOR 1010@example.com may hold at most 2 bindings\"")
        );
        assert_eq!(h.loc.len(), 2);
    }

    #[test]
    fn reg_id_with_several_contacts_is_400() {
        let h = Harness::new();
        let r = h.register(
            1,
            &format!(
                "{AUTH}Contact: <sip:a@h>;+sip.instance=\"<urn:uuid:1>\";reg-id=1, <sip:b@h>\r\n"
            ),
        );
        assert_eq!(
            (r.status, r.reason.as_str()),
            (400, "Multiple Contacts With reg-id")
        );
    }

    #[test]
    fn other_methods_and_malformed_requests() {
        let h = Harness::new();
        let msg = |method: &str, uri: &str, extra: &str| {
            format!(
                "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nFrom: <sip:1@h>;tag=f\r\nTo: <sip:1@h>\r\n\
Call-ID: c\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
            )
        };
        let r = h.send_raw(&msg("OPTIONS", "sip:h", "")).unwrap();
        assert_eq!(
            (r.status, r.header("Allow")),
            (200, Some("REGISTER, OPTIONS"))
        );
        let r = h.send_raw(&msg("INVITE", "sip:1@h", "")).unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.header("Allow")),
            (405, "Method Not Allowed", Some("REGISTER, OPTIONS"))
        );
        let r = h.send_raw(&msg("FOOBAR", "sip:1@h", "")).unwrap();
        assert_eq!(r.status, 405);
        assert!(
            h.send_raw(&msg("ACK", "sip:1@h", "")).is_none(),
            "ACK is never answered"
        );
        let r = h.send_raw(&msg("REGISTER", "tel:+123", "")).unwrap();
        assert_eq!(
            (r.status, r.reason.as_str()),
            (416, "Unsupported URI Scheme")
        );
        let r = h.send_raw("REGISTER sip:h SIP/2.0\r\nVia: SIP/2.0/TLS x\r\nFrom: <sip:1@h>;tag=f\r\nTo: <sip:1@h>\r\nCSeq: 1 REGISTER\r\n\r\n").unwrap();
        assert_eq!((r.status, r.reason.as_str()), (400, "Missing Call-ID"));
        let r = h.send_raw("REGISTER sip:h SIP/2.0\r\nVia: SIP/2.0/TLS x\r\nFrom: <sip:1@h>;tag=f\r\nTo: <sip:1@h>\r\ni: c\r\nCSeq: one REGISTER\r\n\r\n").unwrap();
        assert_eq!((r.status, r.reason.as_str()), (400, "Bad CSeq"));
        let r = h
            .send_raw("REGISTER sip:h SIP/2.0\r\nFrom: <sip:1@h>;tag=f\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, r.reason.as_str()), (400, "Missing Via"));
        let r = h
            .send_raw(&msg(
                "REGISTER",
                "sip:h",
                "Expires: soon\r\nAuthorization: Bearer good-alice\r\n",
            ))
            .unwrap();
        assert_eq!((r.status, r.reason.as_str()), (400, "Bad Expires"));
    }

    /// A REGISTER for `aor_user@example.com` with `extra` headers and Call-ID `call-1`.
    fn reg(h: &Harness, aor_user: &str, cseq: u32, extra: &str) -> Resp {
        h.send_raw(&format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5000;branch=z9hG4bK{cseq}\r\n\
From: <sip:{aor_user}@example.com>;tag=f\r\nTo: <sip:{aor_user}@example.com>\r\nCall-ID: call-1\r\n\
CSeq: {cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        ))
        .unwrap()
    }

    fn legacy() -> Harness {
        let mut h = Harness::new();
        h.conn.port = PortKind::Legacy;
        h.conn.transport = Transport::Udp;
        h.conn.flow = 0;
        h
    }

    /// Answers a Digest challenge like a phone: (username, password, algorithm, nc).
    fn digest_answer(challenge: &Resp, user: &str, pw: &str, alg: Algorithm, nc: u32) -> String {
        let www = challenge
            .headers("WWW-Authenticate")
            .into_iter()
            .find(|c| c.contains(&format!("algorithm={},", alg.as_str())))
            .unwrap()
            .to_owned();
        let nonce = www
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let ha1 = ha1(alg, user, "ccmsipline", pw);
        let h = |s: &str| match alg {
            Algorithm::Md5 => {
                use md5::Digest;
                hex::encode(md5::Md5::digest(s.as_bytes()))
            }
            Algorithm::Sha256 => {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(s.as_bytes()))
            }
        };
        let ha2 = h("REGISTER:sip:example.com");
        let resp = h(&format!("{ha1}:{nonce}:{nc:08x}:abc:auth:{ha2}"));
        format!(
            "Authorization: Digest username=\"{user}\", realm=\"ccmsipline\", nonce=\"{nonce}\", \
uri=\"sip:example.com\", response=\"{resp}\", algorithm={}, qop=auth, nc={nc:08x}, cnonce=\"abc\"\r\n",
            alg.as_str()
        )
    }

    #[test]
    fn legacy_digest_is_refused_when_the_profile_disallows_it_or_the_transport() {
        let h = legacy();
        for (dn, text) in [
            ("3031", "does not allow Digest"),
            ("3032", "allows Digest over tls only, not udp"),
        ] {
            let c = reg(&h, dn, 1, "Contact: <sip:x@10.0.0.1:5000>\r\n");
            assert_eq!(c.status, 401);
            let auth = digest_answer(&c, dn, "pw", Algorithm::Sha256, 2);
            let r = reg(
                &h,
                dn,
                2,
                &format!("{auth}Contact: <sip:x@10.0.0.1:5000>\r\n"),
            );
            assert_eq!(r.status, 403, "{}", r.text);
            let w = r.header("Warning").unwrap_or_default();
            assert!(w.contains(text) && w.contains("security profile"), "{w}");
            assert!(h.loc.bindings(&format!("{dn}@example.com"), NOW).is_empty());
        }
    }

    #[test]
    fn legacy_digest_challenge_then_both_algorithms_register() {
        let h = legacy();
        let c = reg(&h, "3030", 1, "Contact: <sip:3030@10.0.0.1:5000>\r\n");
        assert_eq!((c.status, c.reason.as_str()), (401, "Unauthorized"));
        let www = c.headers("WWW-Authenticate");
        assert_eq!(www.len(), 2, "one challenge per algorithm");
        assert!(www[0].contains("algorithm=SHA-256") && www[1].contains("algorithm=MD5"));
        assert!(www
            .iter()
            .all(|w| w.contains("qop=\"auth\"") && !w.contains("stale")));
        for (cseq, alg) in (2..).zip([Algorithm::Sha256, Algorithm::Md5]) {
            let auth = digest_answer(&c, "3030", "pw", alg, cseq);
            let r = reg(
                &h,
                "3030",
                cseq,
                &format!("{auth}Contact: <sip:3030@10.0.0.1:5000>\r\n"),
            );
            assert_eq!(r.status, 200, "{}", r.text);
            let b = &h.loc.bindings("3030@example.com", NOW)[0];
            assert_eq!(
                (b.user.as_str(), b.device.as_deref()),
                ("bob", Some("SEPlegacy"))
            );
            assert_eq!(
                (b.flow, b.flow_state, b.transport),
                (0, FlowState::Datagram, Transport::Udp)
            );
        }
        // Wrong password and a replayed nc are challenged again; nothing changes.
        let bad = digest_answer(&c, "3030", "nope", Algorithm::Md5, 9);
        assert_eq!(
            reg(&h, "3030", 9, &format!("{bad}Contact: <sip:x@h>\r\n")).status,
            401
        );
        let replay = digest_answer(&c, "3030", "pw", Algorithm::Md5, 3);
        assert_eq!(
            reg(&h, "3030", 10, &format!("{replay}Contact: <sip:x@h>\r\n")).status,
            401
        );
        assert_eq!(h.loc.len(), 1);
    }

    #[test]
    fn legacy_nonce_of_another_node_is_challenged_as_stale_then_ours_registers() {
        let mut h = legacy();
        let c = reg(&h, "3030", 1, "");
        // The phone's answer reaches another node with the same secret (or this one restarted).
        h.digest = DigestAuth::new([9; 32], 300);
        let contact = "Contact: <sip:3030@10.0.0.1:5000>\r\n";
        let auth = digest_answer(&c, "3030", "pw", Algorithm::Sha256, 1);
        let stale = reg(&h, "3030", 2, &format!("{auth}{contact}"));
        assert_eq!(stale.status, 401, "{}", stale.text);
        assert_eq!(stale.rejected, None, "a correct password is no failure");
        let www = stale.headers("WWW-Authenticate");
        assert!(www.len() == 2 && www.iter().all(|w| w.ends_with(", stale=true")));
        assert!(h.loc.is_empty());
        // The same captured request again: still not accepted.
        assert_eq!(reg(&h, "3030", 2, &format!("{auth}{contact}")).status, 401);
        // A wrong password on that nonce is the ordinary failure.
        let bad = digest_answer(&c, "3030", "nope", Algorithm::Sha256, 2);
        let r = reg(&h, "3030", 3, &format!("{bad}{contact}"));
        assert_eq!((r.status, r.rejected), (401, Some("digest_failed")));
        assert!(r
            .headers("WWW-Authenticate")
            .iter()
            .all(|w| !w.contains("stale")));
        // The retry on this node's nonce registers.
        let auth = digest_answer(&stale, "3030", "pw", Algorithm::Sha256, 1);
        let r = reg(&h, "3030", 4, &format!("{auth}{contact}"));
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(h.loc.len(), 1);
    }

    #[test]
    fn legacy_stale_nonce_and_authorization_rules() {
        let mut h = legacy();
        let c = reg(&h, "3030", 1, "");
        let auth = digest_answer(&c, "3030", "pw", Algorithm::Md5, 1);
        h.now = NOW + 301;
        let r = reg(&h, "3030", 2, &format!("{auth}Contact: <sip:a@h>\r\n"));
        assert_eq!(r.status, 401);
        assert!(r
            .headers("WWW-Authenticate")
            .iter()
            .all(|w| w.ends_with(", stale=true")));
        h.now = NOW;
        // The credential's device must carry the AOR's line.
        let c = reg(&h, "2020", 1, "");
        let auth = digest_answer(&c, "3030", "pw", Algorithm::Md5, 1);
        let r = reg(&h, "2020", 2, &format!("{auth}Contact: <sip:a@h>\r\n"));
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("Warning"),
            Some("399 sipreg \"Line 2020 is not on device SEPlegacy\"")
        );
        // An OAuth device, cluster OAuth mode on: sent to the OAuth port.
        let c = reg(&h, "1010", 1, "");
        let auth = digest_answer(&c, "alice-csf", "pw", Algorithm::Sha256, 1);
        let r = reg(&h, "1010", 2, &format!("{auth}Contact: <sip:a@h>\r\n"));
        assert_eq!(r.status, 403);
        assert_eq!(
            r.header("Warning"),
            Some("399 sipreg \"use the SIP OAuth port\"")
        );
        // Cluster OAuth mode off: the same device registers on the legacy port.
        h.dir = snapshot(false);
        let auth = digest_answer(&c, "alice-csf", "pw", Algorithm::Sha256, 2);
        let r = reg(&h, "1010", 3, &format!("{auth}Contact: <sip:a@h>\r\n"));
        assert_eq!(r.status, 200, "{}", r.text);
        // Bearer credentials mean nothing on a legacy port.
        let r = reg(&h, "1010", 4, &format!("{AUTH}Contact: <sip:a@h>\r\n"));
        assert_eq!(r.status, 401);
        assert!(h.loc.bindings("3030@example.com", NOW).is_empty());
    }

    #[test]
    fn domains_are_checked_in_step_1_and_5() {
        let mut h = Harness::new();
        h.cfg.domains = vec!["Example.com".into()];
        let r = h.register(1, &format!("{AUTH}{CONTACT}"));
        assert_eq!(r.status, 200, "{}", r.text);
        let r = h
            .send_raw(&format!(
                "REGISTER sip:other.org SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nFrom: <sip:1010@example.com>;tag=f\r\n\
To: <sip:1010@example.com>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n{AUTH}{CONTACT}Content-Length: 0\r\n\r\n"
            ))
            .unwrap();
        assert_eq!((r.status, r.reason.as_str()), (404, "Domain Not Served"));
        let r = h
            .send_raw(&format!(
                "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nFrom: <sip:1010@other.org>;tag=f\r\n\
To: <sip:1010@other.org>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n{AUTH}{CONTACT}Content-Length: 0\r\n\r\n"
            ))
            .unwrap();
        assert_eq!((r.status, r.reason.as_str()), (404, "Not Found"));
        assert_eq!(
            r.header("Warning"),
            Some("399 sipreg \"Domain other.org is not served here\"")
        );
        // Authentication comes first (step 3 before step 5).
        let r = h
            .send_raw(&format!(
                "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nFrom: <sip:1010@other.org>;tag=f\r\n\
To: <sip:1010@other.org>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n{CONTACT}Content-Length: 0\r\n\r\n"
            ))
            .unwrap();
        assert_eq!(r.status, 401);
    }

    #[test]
    fn path_needs_supported_path_unless_configured() {
        let mut h = Harness::new();
        let r = h.register(1, &format!("{AUTH}Path: <sip:edge;lr>\r\n{CONTACT}"));
        assert_eq!((r.status, r.reason.as_str()), (420, "Bad Extension"));
        assert!(h.loc.is_empty());
        h.cfg.path_requires_supported = false;
        let r = h.register(2, &format!("{AUTH}Path: <sip:edge;lr>\r\n{CONTACT}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Path"), Some("<sip:edge;lr>"));
    }

    #[test]
    fn outbound_direct_flow_gets_require_and_flow_timer() {
        let h = Harness::new();
        let contact = "Contact: <sip:a@10.0.0.1:5000;transport=tls>;+sip.instance=\"<urn:uuid:1>\";reg-id=1\r\n";
        let r = h.register(1, &format!("{AUTH}Supported: outbound, path\r\n{contact}"));
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("Require"), Some("outbound"));
        assert_eq!(r.header("Flow-Timer"), Some("120"));
        let b = &h.loc.bindings("1010@example.com", NOW)[0];
        assert!(b.outbound);
        assert_eq!(
            (b.reg_id, b.flow, b.flow_state),
            (Some(1), 7, FlowState::Open)
        );
        // Without Supported: outbound, no Require (RFC 5626 §6), binding still keyed by reg-id.
        let r = h.register(2, &format!("{AUTH}{contact}"));
        assert_eq!((r.status, r.header("Require")), (200, None));
        assert_eq!(h.loc.len(), 1);
    }

    #[test]
    fn outbound_through_a_first_hop_without_ob_is_439() {
        let h = Harness::new();
        let contact = "Contact: <sip:a@h>;+sip.instance=\"<urn:uuid:1>\";reg-id=1\r\n";
        let r = h.register(
            1,
            &format!(
                "{AUTH}Supported: outbound, path\r\nPath: <sip:edge.example.com;lr>\r\n{contact}"
            ),
        );
        assert_eq!(
            (r.status, r.reason.as_str()),
            (439, "First Hop Lacks Outbound Support")
        );
        assert!(h.loc.is_empty());
        // With `ob` on the top Path URI: outbound applies; Flow-Timer is the edge's business.
        let r = h.register(
            2,
            &format!("{AUTH}Supported: outbound, path\r\nPath: <sip:edge.example.com;lr;ob>\r\n{contact}"),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            (r.header("Require"), r.header("Flow-Timer")),
            (Some("outbound"), None)
        );
        assert_eq!(r.header("Path"), Some("<sip:edge.example.com;lr;ob>"));
        // Without Supported: outbound the reg-id is ignored instead (no 439).
        let r = h.register(
            3,
            &format!("{AUTH}Supported: path\r\nPath: <sip:edge.example.com;lr>\r\nContact: <sip:b@h>;+sip.instance=\"<urn:uuid:2>\";reg-id=1\r\n"),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        let b = h.loc.bindings("1010@example.com", NOW);
        assert_eq!(
            b.iter()
                .find(|b| b.contact_uri == "sip:b@h")
                .unwrap()
                .reg_id,
            None
        );
    }

    #[test]
    fn q_values_are_kept_and_bad_ones_refused() {
        let h = Harness::new();
        let r = h.register(
            1,
            &format!("{AUTH}Contact: <sip:a@h>;q=0.25, <sip:b@h>;q=1.0\r\n"),
        );
        assert_eq!(
            r.headers("Contact"),
            vec![
                "<sip:a@h>;expires=3600;q=0.25",
                "<sip:b@h>;expires=3600;q=1.0"
            ]
        );
        let r = h.register(2, &format!("{AUTH}Contact: <sip:c@h>;q=1.5\r\n"));
        assert_eq!((r.status, r.reason.as_str()), (400, "Bad Contact q"));
        assert_eq!(h.loc.len(), 2);
    }
}
