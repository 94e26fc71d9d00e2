//! Our own parser for a framed SIP request head, and typed access to what the registrar needs.
//!
//! rsip cannot parse what real clients send (compact names, folded lines, extension methods; see
//! anchors §5), so the head is parsed here and rsip is used only to validate URIs.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

/// Why a request cannot be processed; the text is the reason phrase of the `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The bytes are not UTF-8 text.
    #[error("Message Not UTF-8")]
    NotUtf8,
    /// The message is a response, not a request.
    #[error("Not A Request")]
    NotARequest,
    /// The request line is malformed.
    #[error("Bad Request Line")]
    BadRequestLine,
    /// The SIP version is not `SIP/2.0`.
    #[error("Unsupported SIP Version")]
    BadVersion,
    /// A header line has no colon or an invalid name.
    #[error("Bad Header Line")]
    BadHeader,
    /// A mandatory header is absent.
    #[error("Missing {0}")]
    Missing(&'static str),
    /// A header is present more than once where only one is allowed.
    #[error("Duplicate {0}")]
    Duplicate(&'static str),
    /// A header's value is malformed.
    #[error("Bad {0}")]
    Bad(&'static str),
    /// The CSeq method is not the request method.
    #[error("CSeq Method Mismatch")]
    CSeqMethodMismatch,
}

/// Where a string lies in a [`Request`]'s header text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(start: usize, len: usize) -> Span {
        // The head is bounded by the framer's message cap, far below u32::MAX; saturating keeps
        // this total anyway (a span past the end reads as "").
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            start: at(start),
            end: at(start.saturating_add(len)),
        }
    }
}

/// A header's canonical name: a well-known one, or the name as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderName {
    Known(&'static str),
    Other(Span),
}

/// One header field, unfolded, with its canonical (long, conventionally capitalised) name.
/// Comma-separated list headers are split into one `Header` per element. Name and value are
/// spans of the request's one header text (no allocation per header); read them through
/// [`Request::headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    name: HeaderName,
    value: Span,
}

/// A parsed SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method token, case-sensitive (`REGISTER`, extension methods allowed).
    pub method: String,
    /// The Request-URI as sent.
    pub request_uri: String,
    /// Headers in order, as spans of `text`.
    headers: Vec<Header>,
    /// The head's header lines as sent, then any unfolded or rewritten values.
    text: String,
    /// Body bytes (everything after the blank line; the framer bounded it).
    pub body: Vec<u8>,
}

/// `CSeq` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number.
    pub seq: u32,
    /// Method name.
    pub method: String,
}

/// A `From` or `To` header: raw value, URI and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The header value as sent.
    pub raw: String,
    /// The URI inside `<>` (or the addr-spec).
    pub uri: String,
    /// Header parameters, names lowercased, quoted values unquoted.
    pub params: Vec<(String, Option<String>)>,
    /// Header parameters exactly as sent (`name` or `name=value`, quotes kept).
    pub raw_params: Vec<String>,
}

impl NameAddr {
    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        param(&self.params, "tag")
    }
}

/// An address-of-record, the bindings key: `user@host` of the To URI, URI params dropped
/// (RFC 3261 §10.3 step 5), host lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Aor {
    /// User part (the directory number), if any.
    pub user: Option<String>,
    /// Host, lowercased.
    pub host: String,
}

impl fmt::Display for Aor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "{u}@{}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// The Cisco Contact feature parameter naming the registering device.
pub const DEVICE_NAME_PARAM: &str = "+u.sip!devicename.ccm.cisco.com";

/// One `Contact` value.
#[derive(Debug, Clone, PartialEq, Eq)]
// Short-lived, parsed once per REGISTER: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Contact {
    /// `Contact: *` (remove all bindings).
    Wildcard,
    /// A name-addr or addr-spec.
    Address(ContactAddress),
}

/// A `Contact` address with the parameters the registrar uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactAddress {
    /// The header value as sent.
    pub raw: String,
    /// The contact URI as sent (without `<>`).
    pub uri: String,
    /// Canonical form for comparing contacts (RFC 3261 §19.1.4, simplified).
    pub uri_key: String,
    /// All header parameters, names lowercased, quoted values unquoted.
    pub params: Vec<(String, Option<String>)>,
    /// Header parameters exactly as sent (`name` or `name=value`, quotes kept).
    pub raw_params: Vec<String>,
    /// `expires` parameter (saturated to `u32::MAX`).
    pub expires: Option<u32>,
    /// `q` parameter as sent.
    pub q: Option<String>,
    /// `+sip.instance` (RFC 5626), unquoted, e.g. `<urn:uuid:...>`.
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626).
    pub reg_id: Option<u32>,
    /// `+u.sip!devicename.ccm.cisco.com`, the Unified CM device name.
    pub device_name: Option<String>,
}

impl Request {
    /// Parses a framed request (head and body).
    pub fn parse(bytes: &[u8]) -> Result<Request, MessageError> {
        let (line, text, headers, body) = split(bytes)?;
        let (method, request_uri) = request_line(line)?;
        Ok(Request {
            method,
            request_uri,
            headers,
            text,
            body,
        })
    }

    /// Parses as much as possible to answer a malformed request with a `400`: headers are kept
    /// even when the request line is bad. `None` if the message is a response or has no headers.
    pub fn parse_lenient(bytes: &[u8]) -> Option<Request> {
        let (line, text, headers, body) = split(bytes).ok()?;
        if line.starts_with("SIP/") {
            return None;
        }
        let (method, request_uri) = request_line(line).unwrap_or_default();
        Some(Request {
            method,
            request_uri,
            headers,
            text,
            body,
        })
    }

    fn span(&self, s: Span) -> &str {
        self.text
            .get(s.start as usize..s.end as usize)
            .unwrap_or("")
    }

    fn name_of(&self, h: &Header) -> &str {
        match h.name {
            HeaderName::Known(n) => n,
            HeaderName::Other(s) => self.span(s),
        }
    }

    /// Every header as (canonical name, value), in order; list headers one per element.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .map(|h| (self.name_of(h), self.span(h.value)))
    }

    /// Every value of header `name` (case-insensitive, long canonical name), in order.
    pub fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |h| self.name_of(h).eq_ignore_ascii_case(name))
            .map(|h| self.span(h.value))
    }

    /// The first value of header `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    fn single(&self, name: &'static str) -> Result<&str, MessageError> {
        let mut it = self.all(name);
        let v = it.next().ok_or(MessageError::Missing(name))?;
        if it.next().is_some() {
            return Err(MessageError::Duplicate(name));
        }
        Ok(v)
    }

    /// `Via` values, top first (copied into responses).
    pub fn via(&self) -> Vec<&str> {
        self.all("Via").collect()
    }

    /// The `Call-ID`.
    pub fn call_id(&self) -> Result<&str, MessageError> {
        let v = self.single("Call-ID")?;
        if v.is_empty() || v.contains(char::is_whitespace) {
            return Err(MessageError::Bad("Call-ID"));
        }
        Ok(v)
    }

    /// The `CSeq`; its method must be the request method.
    pub fn cseq(&self) -> Result<CSeq, MessageError> {
        let v = self.single("CSeq")?;
        let mut parts = v.split_whitespace();
        let (Some(num), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(MessageError::Bad("CSeq"));
        };
        // RFC 3261 §8.1.1.5: less than 2^31.
        let seq: u32 = match num.parse() {
            Ok(n) if n < 1 << 31 && num.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(MessageError::Bad("CSeq")),
        };
        if method != self.method {
            return Err(MessageError::CSeqMethodMismatch);
        }
        Ok(CSeq {
            seq,
            method: method.to_owned(),
        })
    }

    /// The `From` header.
    pub fn from_header(&self) -> Result<NameAddr, MessageError> {
        name_addr(self.single("From")?).ok_or(MessageError::Bad("From"))
    }

    /// The `To` header.
    pub fn to_header(&self) -> Result<NameAddr, MessageError> {
        name_addr(self.single("To")?).ok_or(MessageError::Bad("To"))
    }

    /// The AOR from the `To` URI, validated with rsip; only `sip`/`sips` are accepted.
    pub fn aor(&self) -> Result<Aor, MessageError> {
        let to = self.to_header()?;
        let uri = parse_sip_uri(&to.uri).ok_or(MessageError::Bad("To URI"))?;
        Ok(Aor {
            user: uri.user.map(Cow::into_owned),
            host: uri.host.to_ascii_lowercase(),
        })
    }

    /// The scheme of the Request-URI, lowercased (`sip`, `sips`, `tel`, ...).
    pub fn request_uri_scheme(&self) -> String {
        scheme_of(&self.request_uri)
    }

    /// Validates the Request-URI with rsip (call after checking the scheme is `sip`/`sips`);
    /// headers (`?...`) are not allowed there (RFC 3261 §19.1.5, RFC 4475 §3.1.2.11).
    pub fn check_request_uri(&self) -> Result<(), MessageError> {
        if uri_headers_at(&self.request_uri).is_some() {
            return Err(MessageError::Bad("Request-URI"));
        }
        parse_sip_uri(&self.request_uri)
            .map(|_| ())
            .ok_or(MessageError::Bad("Request-URI"))
    }

    /// All `Contact` values.
    pub fn contacts(&self) -> Result<Vec<Contact>, MessageError> {
        self.all("Contact").map(contact).collect()
    }

    /// The `Expires` header (saturated to `u32::MAX`).
    pub fn expires(&self) -> Result<Option<u32>, MessageError> {
        match self.all("Expires").next() {
            None => Ok(None),
            Some(v) => delta_seconds(v)
                .map(Some)
                .ok_or(MessageError::Bad("Expires")),
        }
    }

    /// `Authorization` values.
    pub fn authorization(&self) -> Vec<&str> {
        self.all("Authorization").collect()
    }

    /// `Proxy-Authorization` values.
    pub fn proxy_authorization(&self) -> Vec<&str> {
        self.all("Proxy-Authorization").collect()
    }

    /// The `User-Agent`.
    pub fn user_agent(&self) -> Option<&str> {
        self.first("User-Agent")
    }

    /// `Require` option tags.
    pub fn require(&self) -> Vec<&str> {
        self.all("Require").filter(|v| !v.is_empty()).collect()
    }

    /// `Supported` option tags.
    pub fn supported(&self) -> Vec<&str> {
        self.all("Supported").filter(|v| !v.is_empty()).collect()
    }

    /// `Path` values in order (RFC 3327).
    pub fn path(&self) -> Vec<&str> {
        self.all("Path").collect()
    }
}

impl Request {
    /// The top `Via`'s parts, if it parses (`SIP/2.0/<transport> host[:port];params`).
    pub fn top_via(&self) -> Option<Via> {
        Via::parse(self.first("Via")?)
    }

    /// RFC 3261 §18.2.1 and RFC 3581 §4: records where the request really came from in the top
    /// `Via` (`received` when the sent-by host differs from the source IP, or when `rport` is
    /// present; an empty `rport` is filled with the source port), so responses copy it.
    pub fn stamp_via(&mut self, remote: SocketAddr) {
        let Some(at) = self
            .headers
            .iter()
            .position(|h| h.name == HeaderName::Known("Via"))
        else {
            return;
        };
        let value = self.span(self.headers[at].value);
        // Read in place: only the rewritten value is allocated.
        let Some(via) = ViaScan::of(value) else {
            return;
        };
        let ip = remote.ip().to_string();
        let raw_params = via
            .params
            .map(|rest| split_outside_quotes(rest, ';'))
            .unwrap_or_default();
        let raw_params = raw_params
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty());
        // Named as `params` names them: the text before any `=`, trimmed, case-insensitive.
        fn name_of(raw: &str) -> &str {
            raw.split('=').next().unwrap_or("").trim()
        }
        let has_rport = raw_params
            .clone()
            .any(|raw| name_of(raw).eq_ignore_ascii_case("rport"));
        let needs_received = has_rport || via.host.trim_matches(['[', ']']) != ip;
        let mut out = String::with_capacity(value.len() + 40);
        out.push_str(via.head.trim_end());
        for raw in raw_params {
            let name = name_of(raw);
            if name.eq_ignore_ascii_case("received") && needs_received {
                continue;
            }
            if name.eq_ignore_ascii_case("rport") {
                out.push_str(";rport=");
                push_u32(&mut out, u32::from(remote.port()));
                continue;
            }
            out.push(';');
            out.push_str(raw);
        }
        if needs_received {
            out.push_str(";received=");
            out.push_str(&ip);
        }
        // The rewritten value goes after the text; the old one stays unreferenced.
        let start = self.text.len();
        self.text.push_str(&out);
        self.headers[at].value = Span::of(start, out.len());
    }
}

/// The checks of [`Via::parse`] with the parts borrowed from the value: the request path
/// validates every Via and rewrites the top one, and needs none of them as owned strings.
struct ViaScan<'a> {
    /// `SIP/2.0/<transport> sent-by`, trimmed.
    head: &'a str,
    /// Transport token, as sent.
    transport: &'a str,
    /// sent-by host without whitespace (IPv6 with brackets).
    host: Cow<'a, str>,
    port: Option<u16>,
    /// Everything after the first `;` outside quotes (the parameters), if any.
    params: Option<&'a str>,
}

impl<'a> ViaScan<'a> {
    fn of(value: &'a str) -> Option<ViaScan<'a>> {
        let (head, params) = match first_outside_quotes(value, ';') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        };
        let head = head.trim();
        // RFC 3261 §25.1: LWS may surround the SLASHes and the COLON (RFC 4475 §3.1.1.1).
        let mut proto = head.splitn(3, '/');
        let (Some(name), Some(version), Some(rest)) = (proto.next(), proto.next(), proto.next())
        else {
            return None;
        };
        let rest = rest.trim_start();
        let split_at = rest.find(char::is_whitespace)?;
        let (transport, sent_by) = rest.split_at(split_at);
        if !name.trim().eq_ignore_ascii_case("SIP")
            || version.trim() != "2.0"
            || transport.is_empty()
            || !transport.bytes().all(is_token_char)
        {
            return None;
        }
        let sent_by: Cow<'a, str> = if sent_by.trim().contains(char::is_whitespace) {
            Cow::Owned(sent_by.chars().filter(|c| !c.is_whitespace()).collect())
        } else {
            Cow::Borrowed(sent_by.trim())
        };
        let (host, port) = if let Some(rest) = sent_by.strip_prefix('[') {
            let (h, after) = rest.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().ok()?),
                None if after.is_empty() => None,
                None => return None,
            };
            (Cow::Owned(format!("[{h}]")), port)
        } else {
            match sent_by.rsplit_once(':') {
                Some((h, p)) => {
                    let port = Some(p.parse().ok()?);
                    let host = match &sent_by {
                        Cow::Borrowed(b) => Cow::Borrowed(&b[..h.len()]),
                        Cow::Owned(_) => Cow::Owned(h.to_owned()),
                    };
                    (host, port)
                }
                None => (sent_by, None),
            }
        };
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        {
            return None;
        }
        if host.is_empty() || host.contains(char::is_whitespace) {
            return None;
        }
        Some(ViaScan {
            head,
            transport,
            host,
            port,
            params,
        })
    }
}

/// The parts of one `Via` value the transport layer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `SIP/2.0/UDP host:port`, as sent.
    pub head: String,
    /// Transport token, uppercased.
    pub transport: String,
    /// sent-by host (IPv6 with brackets).
    pub host: String,
    /// sent-by port.
    pub port: Option<u16>,
    /// Parameters, names lowercased.
    pub params: Vec<(String, Option<String>)>,
    /// Parameters as sent.
    pub raw_params: Vec<String>,
}

impl Via {
    /// Parses one Via value; `None` if malformed.
    pub fn parse(value: &str) -> Option<Via> {
        let scan = ViaScan::of(value)?;
        let raw_params: Vec<String> = scan
            .params
            .map(|rest| split_outside_quotes(rest, ';'))
            .unwrap_or_default()
            .into_iter()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let rest = raw_params.join(";");
        Some(Via {
            head: scan.head.to_owned(),
            transport: scan.transport.to_ascii_uppercase(),
            host: scan.host.into_owned(),
            port: scan.port,
            params: params(&rest),
            raw_params,
        })
    }

    /// Whether [`parse`](Self::parse) accepts `value`, without building the parts.
    pub fn is_valid(value: &str) -> bool {
        ViaScan::of(value).is_some()
    }

    /// A parameter's value (`Some(None)` when present without a value).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }

    /// RFC 3261 §18.2.2 / RFC 3581 §4: where a response to a UDP request goes. `received` (or
    /// the source IP) with the `rport` port when the client asked for it, else the sent-by port
    /// (default 5060).
    pub fn response_addr(&self, remote: SocketAddr) -> SocketAddr {
        let ip = self
            .param("received")
            .flatten()
            .and_then(|r| r.trim_matches(['[', ']']).parse().ok())
            .unwrap_or(remote.ip());
        let port = match self.param("rport") {
            Some(Some(p)) => p.parse().unwrap_or(remote.port()),
            Some(None) => remote.port(),
            None => self.port.unwrap_or(5060),
        };
        SocketAddr::new(ip, port)
    }
}

/// Whether the URI of a `Path`/`Route` value carries the `ob` parameter (RFC 5626 §5.1).
pub fn uri_has_ob(value: &str) -> bool {
    let Some(na) = name_addr(value) else {
        return false;
    };
    na.uri.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("ob")
    })
}

/// The parts of a `sip:`/`sips:` URI the registrar uses (user, host, port, parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SipUri<'a> {
    /// User part as parsed (case kept).
    pub user: Option<Cow<'a, str>>,
    /// Host as parsed (case kept; IPv6 as rsip prints it).
    pub host: Cow<'a, str>,
    /// Port.
    pub port: Option<u16>,
    /// URI parameters.
    params: UriParams<'a>,
}

/// A URI's parameters: the raw `;...` text (fast path), or rsip's rendering of each, without
/// the leading `;` and lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UriParams<'a> {
    Raw(&'a str),
    Parsed(Vec<String>),
}

impl SipUri<'_> {
    /// The parameters RFC 3261 §19.1.4 makes significant for comparison, lowercased.
    fn significant_params(&self) -> Vec<Cow<'_, str>> {
        let significant = |p: &str| {
            let name = p.split('=').next().unwrap_or("");
            ["transport", "user", "ttl", "method", "maddr"]
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s))
        };
        fn lower(p: &str) -> Cow<'_, str> {
            if p.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(p.to_ascii_lowercase())
            } else {
                Cow::Borrowed(p)
            }
        }
        match &self.params {
            UriParams::Raw(raw) => raw
                .split(';')
                .skip(1)
                .filter(|p| significant(p))
                .map(lower)
                .collect(),
            UriParams::Parsed(ps) => ps
                .iter()
                .filter(|p| significant(p))
                .map(|p| Cow::Borrowed(p.as_str()))
                .collect(),
        }
    }
}

/// Parses a `sip:`/`sips:` URI; `None` for other schemes or malformed URIs.
///
/// The common shape (`sip:user@host:port;params` with plain token characters, see
/// [`scan_simple_sip_uri`]) is scanned here without allocating; anything else goes to rsip,
/// which decides what is valid. Both give the same parts (a test checks them against each
/// other).
pub(crate) fn parse_sip_uri(uri: &str) -> Option<SipUri<'_>> {
    if let Some(simple) = scan_simple_sip_uri(uri) {
        return Some(simple);
    }
    parse_sip_uri_rsip(uri)
}

/// rsip's reading of a `sip:`/`sips:` URI, as [`SipUri`].
fn parse_sip_uri_rsip(uri: &str) -> Option<SipUri<'static>> {
    let scheme = scheme_of(uri);
    if scheme != "sip" && scheme != "sips" {
        return None;
    }
    // rsip does not parse URI headers (`?Route=...`); they do not affect the binding key.
    let without_headers = uri_headers_at(uri).map_or(uri, |i| &uri[..i]);
    let parsed = rsip::Uri::try_from(without_headers).ok()?;
    let host = parsed.host().to_string();
    // rsip accepts a URI with an empty host; a registrar cannot use one.
    if host.is_empty() {
        return None;
    }
    Some(SipUri {
        user: parsed.user().map(|u| Cow::Owned(u.to_owned())),
        host: Cow::Owned(host),
        port: parsed.port().map(|p| *p.value()),
        params: UriParams::Parsed(
            parsed
                .params
                .iter()
                .map(|p| p.to_string().trim_start_matches(';').to_ascii_lowercase())
                .collect(),
        ),
    })
}

/// The hot path's URI scanner: accepts only `sip:`/`sips:` (lowercase) URIs made of a user of
/// unreserved characters without `.` (rsip reads a dotted user differently), a host of
/// letters, digits, `.` and `-`, a port of 1-5 digits that fits u16, and `;name[=value]`
/// parameters of token characters, where a `transport` value is one rsip knows and `method` is
/// absent. Everything else returns `None` and is left to rsip.
fn scan_simple_sip_uri(uri: &str) -> Option<SipUri<'_>> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, rest) = match rest.find('@') {
        Some(at) => {
            let user = &rest[..at];
            let ok = |b: u8| b.is_ascii_alphanumeric() || b"-_!~*+".contains(&b);
            if user.is_empty() || !user.bytes().all(ok) {
                return None;
            }
            (Some(Cow::Borrowed(user)), &rest[at + 1..])
        }
        None => (None, rest),
    };
    let (host_port, params) = match rest.find(';') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match host_port.split_once(':') {
        Some((h, p)) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (h, Some(p.parse::<u16>().ok()?))
        }
        None => (host_port, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return None;
    }
    for p in params.split(';').skip(1) {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        };
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._!~*+".contains(&b))
        };
        if !token(name) || value.is_some_and(|v| !token(v)) || name.eq_ignore_ascii_case("method") {
            return None;
        }
        if name.eq_ignore_ascii_case("transport") {
            let known = ["udp", "tcp", "tls", "sctp", "tls-sctp", "ws", "wss"];
            if value.is_some_and(|v| !known.iter().any(|k| v.eq_ignore_ascii_case(k))) {
                return None;
            }
        }
    }
    Some(SipUri {
        user,
        host: Cow::Borrowed(host),
        port,
        params: UriParams::Raw(params),
    })
}

/// Where a SIP URI's `?headers` start: the first `?` after the userinfo (a `?` may appear
/// unescaped in the user part, RFC 4475 §3.1.1.2).
fn uri_headers_at(uri: &str) -> Option<usize> {
    let host_from = uri.rfind('@').unwrap_or(0);
    uri[host_from..].find('?').map(|i| host_from + i)
}

/// The host of a `sip:`/`sips:` Request-URI, lowercased.
pub(crate) fn request_uri_host(uri: &str) -> Option<String> {
    parse_sip_uri(uri).map(|u| u.host.to_ascii_lowercase())
}

fn scheme_of(uri: &str) -> String {
    uri.split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Canonical comparison key of a SIP URI: scheme, user (case-sensitive), host (lowercased),
/// port and the URI parameters RFC 3261 §19.1.4 makes significant.
pub(crate) fn uri_key(uri: &SipUri<'_>, raw: &str) -> String {
    let scheme = raw.split_once(':').map_or("", |(s, _)| s);
    let user = uri.user.as_deref().unwrap_or("");
    let mut significant = uri.significant_params();
    significant.sort();
    let params_len: usize = significant.iter().map(|p| p.len() + 1).sum();
    let mut key =
        String::with_capacity(scheme.len() + user.len() + uri.host.len() + params_len + 10);
    for b in scheme.bytes() {
        key.push(char::from(b.to_ascii_lowercase()));
    }
    key.push(':');
    key.push_str(user);
    key.push('@');
    for c in uri.host.chars() {
        key.push(c.to_ascii_lowercase());
    }
    key.push(':');
    if let Some(p) = uri.port {
        push_u32(&mut key, u32::from(p));
    }
    key.push(';');
    for (i, p) in significant.iter().enumerate() {
        if i > 0 {
            key.push(';');
        }
        key.push_str(p);
    }
    key
}

/// Appends `n` in decimal without going through `core::fmt`.
pub(crate) fn push_u32(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// What [`split`] cuts a message into: start line, header text, headers, body.
type Split<'a> = (&'a str, String, Vec<Header>, Vec<u8>);

/// Splits a framed message into its start line, its header text and headers (spans of that
/// text) and its body. The header text is the head as sent (one copy, no allocation per
/// header); a folded header's unfolded value is appended after it.
fn split(bytes: &[u8]) -> Result<Split<'_>, MessageError> {
    let (head, body) = match head_end(bytes) {
        Some(i) => (&bytes[..i], bytes[i + 4..].to_vec()),
        None => (bytes.strip_suffix(b"\r\n").unwrap_or(bytes), Vec::new()),
    };
    let head = std::str::from_utf8(head).map_err(|_| MessageError::NotUtf8)?;
    let (line, rest) = match head.split_once("\r\n") {
        Some((line, rest)) => (line, Some(rest)),
        None => (head, None),
    };
    // Exact size: it grows only when a folded line is joined.
    let mut text = String::with_capacity(rest.map_or(0, str::len));
    text.push_str(rest.unwrap_or(""));
    // Unfold (RFC 3261 §7.3.1): a line starting with SP/HT continues the previous one. Each
    // logical line is a span of `text`; only a folded one is copied, joined, to the end.
    let mut lines: Vec<Span> = Vec::with_capacity(16);
    let mut offset = 0;
    for l in rest.into_iter().flat_map(crlf_lines) {
        let at = offset;
        offset += l.len() + 2;
        if l.starts_with([' ', '\t']) {
            let prev = lines.last_mut().ok_or(MessageError::BadHeader)?;
            let start = text.len();
            let joined_prev = text
                .get(prev.start as usize..prev.end as usize)
                .unwrap_or("")
                .to_owned();
            text.push_str(&joined_prev);
            text.push(' ');
            text.push_str(l.trim_start());
            *prev = Span::of(start, text.len() - start);
        } else {
            lines.push(Span::of(at, l.len()));
        }
    }
    let mut headers = Vec::with_capacity(lines.len() + 4);
    for l in lines {
        let start = l.start as usize;
        let line = text.get(start..l.end as usize).unwrap_or("");
        let (name, value) = line.split_once(':').ok_or(MessageError::BadHeader)?;
        let name_len = name.trim_end_matches([' ', '\t']).len();
        let name = &name[..name_len];
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(MessageError::BadHeader);
        }
        let name = match canonical_name(name) {
            Some(known) => HeaderName::Known(known),
            None => HeaderName::Other(Span::of(start, name_len)),
        };
        let value_at = |v: &str| Span::of(v.as_ptr() as usize - text.as_ptr() as usize, v.len());
        let value = value.trim();
        if let HeaderName::Known(n) = name {
            if is_list_header(n) {
                for part in split_list(value) {
                    headers.push(Header {
                        name,
                        value: value_at(part),
                    });
                }
                continue;
            }
        }
        headers.push(Header {
            name,
            value: value_at(value),
        });
    }
    Ok((line, text, headers, body))
}

/// Where the head ends (the first CRLFCRLF). Scans for LF with the library's memchr, then looks
/// back, instead of comparing a 4-byte window at every position.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut from = 3;
    while from < bytes.len() {
        let lf = from + bytes[from..].iter().position(|&b| b == b'\n')?;
        if lf >= 3 && &bytes[lf - 3..lf] == b"\r\n\r" {
            return Some(lf - 3);
        }
        from = lf + 1;
    }
    None
}

/// The lines of `s` split on CRLF (a bare LF stays inside its line), like `s.split("\r\n")`.
fn crlf_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        let mut from = 0;
        loop {
            match r[from..].find('\n') {
                Some(i) if from + i > 0 && r.as_bytes()[from + i - 1] == b'\r' => {
                    let lf = from + i;
                    rest = Some(&r[lf + 1..]);
                    return Some(&r[..lf - 1]);
                }
                Some(i) => from += i + 1,
                None => {
                    rest = None;
                    return Some(r);
                }
            }
        }
    })
}

fn request_line(line: &str) -> Result<(String, String), MessageError> {
    if line.starts_with("SIP/") {
        return Err(MessageError::NotARequest);
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MessageError::BadRequestLine);
    };
    // `<>` around the Request-URI is invalid (RFC 4475 §3.1.2.12, ltgtruri).
    if method.is_empty()
        || !method.bytes().all(is_token_char)
        || !uri.contains(':')
        || uri.contains(['<', '>'])
    {
        return Err(MessageError::BadRequestLine);
    }
    if version != "SIP/2.0" {
        return Err(MessageError::BadVersion);
    }
    Ok((method.to_owned(), uri.to_owned()))
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Long canonical names for compact forms (RFC 3261 §7.3.3 and later RFCs) and well-known
/// headers; `None` for any other name (kept as sent).
fn canonical_name(name: &str) -> Option<&'static str> {
    const COMPACT: &[(&str, &str)] = &[
        ("i", "Call-ID"),
        ("f", "From"),
        ("t", "To"),
        ("m", "Contact"),
        ("v", "Via"),
        ("l", "Content-Length"),
        ("k", "Supported"),
        ("c", "Content-Type"),
        ("e", "Content-Encoding"),
        ("s", "Subject"),
        ("o", "Event"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("u", "Allow-Events"),
        ("x", "Session-Expires"),
        ("a", "Accept-Contact"),
        ("j", "Reject-Contact"),
        ("d", "Request-Disposition"),
        ("y", "Identity"),
        ("n", "Identity-Info"),
    ];
    const KNOWN: &[&str] = &[
        "Call-ID",
        "From",
        "To",
        "Contact",
        "Via",
        "Content-Length",
        "Supported",
        "Content-Type",
        "CSeq",
        "Expires",
        "Authorization",
        "Proxy-Authorization",
        "User-Agent",
        "Require",
        "Proxy-Require",
        "Path",
        "Max-Forwards",
        "Route",
        "Record-Route",
        "Allow",
        "Unsupported",
        "Date",
    ];
    if name.len() == 1 {
        if let Some((_, long)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
            return Some(long);
        }
    }
    KNOWN.iter().find(|k| k.eq_ignore_ascii_case(name)).copied()
}

fn is_list_header(name: &str) -> bool {
    matches!(
        name,
        "Via"
            | "Contact"
            | "Path"
            | "Supported"
            | "Require"
            | "Proxy-Require"
            | "Route"
            | "Record-Route"
            | "Allow"
            | "Unsupported"
    )
}

/// Splits a comma list, ignoring commas inside quotes and `<>`.
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped, mut start) = (false, false, false, 0);
    // Bytes, not chars: every delimiter is ASCII, and UTF-8 continuation bytes never match one.
    for (i, &c) in value.as_bytes().iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    // An empty header (`Supported:`) stays one empty value; empty list elements are dropped.
    if out.len() > 1 {
        out.retain(|s| !s.is_empty());
    }
    out
}

/// Where `sep` first occurs in `s` outside quoted strings (as [`split_outside_quotes`] splits).
fn first_outside_quotes(s: &str, sep: char) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits `s` on `sep` outside quoted strings.
pub(crate) fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The comma-separated parameters of an authorization header (`Bearer`, `Digest`), trimmed,
/// empty ones dropped; commas inside quoted strings do not separate.
pub(crate) fn split_auth_params(s: &str) -> Vec<&str> {
    let mut out = split_outside_quotes(s, ',');
    for p in &mut out {
        *p = p.trim();
    }
    out.retain(|p| !p.is_empty());
    out
}

/// Removes surrounding quotes and backslash escapes from a quoted-string.
pub(crate) fn unquote(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => v.to_owned(),
    }
}

fn params(s: &str) -> Vec<(String, Option<String>)> {
    split_outside_quotes(s, ';')
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(unquote(v))),
            None => (p.to_ascii_lowercase(), None),
        })
        .collect()
}

fn param<'a>(params: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

/// Parses `["display"] <uri>;params` or `uri;params` (where the params belong to the header).
fn name_addr(value: &str) -> Option<NameAddr> {
    let value = value.trim();
    // Find '<' outside a quoted display name.
    let mut quoted = false;
    let mut escaped = false;
    let mut lt = None;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => {
                lt = Some(i);
                break;
            }
            _ => {}
        }
    }
    if quoted {
        // An unterminated quoted display name (RFC 4475 §3.1.2.6).
        return None;
    }
    let (uri, rest) = match lt {
        Some(i) => {
            // RFC 3261 §25.1: the display name is tokens or a quoted string (RFC 4475
            // §3.1.2.15: an unquoted comma is invalid); no LWS inside `<>` (§3.1.2.14).
            let display = value[..i].trim();
            if !display.starts_with('"')
                && !display
                    .bytes()
                    .all(|b| is_token_char(b) || b == b' ' || b == b'\t')
            {
                return None;
            }
            let after = &value[i + 1..];
            let gt = after.find('>')?;
            let uri = &after[..gt];
            if uri != uri.trim() {
                return None;
            }
            (uri, &after[gt + 1..])
        }
        None => {
            let (uri, rest) = match value.find(';') {
                Some(i) => (&value[..i], &value[i..]),
                None => (value, ""),
            };
            // RFC 3261 §20.10: a URI with `?`, `,` or `;` must be inside `<>` (§3.1.2.13).
            if uri.contains(['?', ',']) {
                return None;
            }
            (uri, rest)
        }
    };
    let uri = uri.trim();
    if uri.is_empty()
        || !uri.contains(':')
        || uri.contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
    {
        return None;
    }
    let rest = rest.trim();
    if !rest.is_empty() && !rest.starts_with(';') {
        return None;
    }
    Some(NameAddr {
        raw: value.to_owned(),
        uri: uri.to_owned(),
        params: params(rest),
        raw_params: split_outside_quotes(rest, ';')
            .into_iter()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn contact(value: &str) -> Result<Contact, MessageError> {
    if value.trim() == "*" {
        return Ok(Contact::Wildcard);
    }
    let na = name_addr(value).ok_or(MessageError::Bad("Contact"))?;
    let parsed = parse_sip_uri(&na.uri).ok_or(MessageError::Bad("Contact URI"))?;
    let expires = match param(&na.params, "expires") {
        Some(v) => Some(delta_seconds(v).ok_or(MessageError::Bad("Contact expires"))?),
        None => None,
    };
    let reg_id = match param(&na.params, "reg-id") {
        // RFC 5626 §10: 1 .. 2^31-1.
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..1 << 31).contains(&n) => Some(n),
            _ => return Err(MessageError::Bad("Contact reg-id")),
        },
        None => None,
    };
    let q = param(&na.params, "q").map(str::to_owned);
    // RFC 3261 §20.10: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ).
    if q.as_deref().is_some_and(|q| !is_qvalue(q)) {
        return Err(MessageError::Bad("Contact q"));
    }
    Ok(Contact::Address(ContactAddress {
        uri_key: uri_key(&parsed, &na.uri),
        raw_params: na.raw_params.clone(),
        raw: na.raw.clone(),
        expires,
        q,
        instance: param(&na.params, "+sip.instance").map(str::to_owned),
        reg_id,
        device_name: param(&na.params, DEVICE_NAME_PARAM).map(str::to_owned),
        uri: na.uri,
        params: na.params,
    }))
}

fn is_qvalue(q: &str) -> bool {
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    let digits = frac.len() <= 3 && frac.bytes().all(|b| b.is_ascii_digit());
    match int {
        "0" => digits,
        "1" => digits && frac.bytes().all(|b| b == b'0'),
        _ => false,
    }
}

/// delta-seconds; values beyond 2^32-1 saturate (RFC 3261 §20.19 treats them as 2^32-1).
fn delta_seconds(v: &str) -> Option<u32> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u32>().unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JABBER: &str = "REGISTER sip:10.10.10.1 SIP/2.0\r\n\
Via: SIP/2.0/TLS 10.10.10.10:62162;branch=z9hG4bK00001188\r\n\
From: <sip:1010@10.10.10.1>;tag=882323451234089000003bdd-00005eff\r\n\
To: <sip:1010@10.10.10.1>\r\n\
Call-ID: 88232345-12340017-00001c0b-00000cfa@10.10.10.10\r\n\
Max-Forwards: 70\r\n\
CSeq: 2270 REGISTER\r\n\
User-Agent: Cisco-CSF\r\n\
Contact: <sip:a8ae9f92-4b07-a0d7-d701-29320aed1e2e@10.10.10.10:62162;transport=tls>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-882323451234>\";+u.sip!devicename.ccm.cisco.com=\"CSFrado\";+u.sip!model.ccm.cisco.com=\"503\";video\r\n\
Supported: replaces,join,sdp-anat,norefersub,X-cisco-graceful-reg\r\n\
Content-Length: 0\r\n\r\n";

    /// The Via parser before it borrowed its parts: `Via::parse` must agree with it.
    fn via_parse_reference(value: &str) -> Option<Via> {
        let parts = split_outside_quotes(value, ';');
        let head = parts.first()?.trim();
        let mut proto = head.splitn(3, '/');
        let (Some(name), Some(version), Some(rest)) = (proto.next(), proto.next(), proto.next())
        else {
            return None;
        };
        let rest = rest.trim_start();
        let split_at = rest.find(char::is_whitespace)?;
        let (transport, sent_by) = rest.split_at(split_at);
        if !name.trim().eq_ignore_ascii_case("SIP")
            || version.trim() != "2.0"
            || transport.is_empty()
            || !transport.bytes().all(is_token_char)
        {
            return None;
        }
        let sent_by: String = sent_by.chars().filter(|c| !c.is_whitespace()).collect();
        let (host, port) = if let Some(rest) = sent_by.strip_prefix('[') {
            let (h, after) = rest.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().ok()?),
                None if after.is_empty() => None,
                None => return None,
            };
            (format!("[{h}]"), port)
        } else {
            match sent_by.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p.parse().ok()?)),
                None => (sent_by.clone(), None),
            }
        };
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
            || host.is_empty()
        {
            return None;
        }
        let raw_params: Vec<String> = parts[1..]
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        let rest = raw_params.join(";");
        Some(Via {
            head: head.to_owned(),
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params: params(&rest),
            raw_params,
        })
    }

    #[test]
    fn the_borrowing_via_scan_agrees_with_the_owned_parse() {
        let values = [
            "SIP/2.0/TLS 10.10.10.10:62162;branch=z9hG4bK00001188",
            "SIP/2.0/TCP host.example.com;branch=z9hG4bK1;rport",
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK2;received=1.2.3.4",
            "SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK2",
            " SIP / 2.0 / UDP  host : 5060 ;branch=z9hG4bK3 ; rport = 7 ",
            "sip/2.0/tls a.b;x=\"q;uoted\";branch=z9",
            "SIP/2.0/TLS h:5061;;branch=z;",
            "SIP/2.0/TLS h:5061;p=\"unterminated;y",
            "SIP/2.0/TLS \"h\":5061",
            "SIP/2.0/TLS h:99999",
            "SIP/2.0/TLS h:",
            "SIP/2.0/TLS [::1]x",
            "SIP/2.0/TLS [::1",
            "SIP/2.0/TLS",
            "SIP/2.0/T@S h",
            "SIP/3.0/TLS h",
            "SIP/2.0 h",
            "SIP/2.0/TLS h_bad",
            "SIP/2.0/TLS ;branch=1",
            "",
        ];
        for v in values {
            assert_eq!(Via::parse(v), via_parse_reference(v), "{v:?}");
            assert_eq!(Via::is_valid(v), via_parse_reference(v).is_some(), "{v:?}");
        }
    }

    #[test]
    fn parses_the_jabber_register() {
        let r = Request::parse(JABBER.as_bytes()).unwrap();
        assert_eq!(r.method, "REGISTER");
        assert_eq!(r.request_uri, "sip:10.10.10.1");
        assert_eq!(
            r.via(),
            vec!["SIP/2.0/TLS 10.10.10.10:62162;branch=z9hG4bK00001188"]
        );
        assert_eq!(
            r.call_id().unwrap(),
            "88232345-12340017-00001c0b-00000cfa@10.10.10.10"
        );
        assert_eq!(
            r.cseq().unwrap(),
            CSeq {
                seq: 2270,
                method: "REGISTER".into()
            }
        );
        assert_eq!(
            r.from_header().unwrap().tag(),
            Some("882323451234089000003bdd-00005eff")
        );
        assert_eq!(r.to_header().unwrap().tag(), None);
        assert_eq!(r.aor().unwrap().to_string(), "1010@10.10.10.1");
        assert_eq!(r.user_agent(), Some("Cisco-CSF"));
        assert_eq!(r.supported().len(), 5);
        let contacts = r.contacts().unwrap();
        let [Contact::Address(c)] = contacts.as_slice() else {
            panic!("{contacts:?}")
        };
        assert_eq!(
            c.uri,
            "sip:a8ae9f92-4b07-a0d7-d701-29320aed1e2e@10.10.10.10:62162;transport=tls"
        );
        assert_eq!(c.device_name.as_deref(), Some("CSFrado"));
        assert_eq!(
            c.instance.as_deref(),
            Some("<urn:uuid:00000000-0000-0000-0000-882323451234>")
        );
        assert!(c.params.iter().any(|(n, v)| n == "video" && v.is_none()));
    }

    #[test]
    fn compact_names_folding_and_lists() {
        let msg = "REGISTER sip:example.com SIP/2.0\r\n\
v: SIP/2.0/TLS a;branch=z9hG4bK1, SIP/2.0/TLS b;branch=z9hG4bK2\r\n\
f: <sip:1@example.com>;tag=1\r\n\
t: \"Doe, John\" <sip:1@Example.COM;user=phone>\r\n\
i: abc\r\n\
cseq  : 1 REGISTER\r\n\
m: <sip:x@h;a=\"1,2\">;expires=60;q=0.5, \"x,y\" <sip:y@h>\r\n\
k: path,\r\n outbound\r\n\
EXPIRES: 99999999999\r\n\
l: 0\r\n\r\n";
        let r = Request::parse(msg.as_bytes()).unwrap();
        assert_eq!(r.via().len(), 2);
        assert_eq!(r.call_id().unwrap(), "abc");
        assert_eq!(r.cseq().unwrap().seq, 1);
        assert_eq!(
            r.aor().unwrap(),
            Aor {
                user: Some("1".into()),
                host: "example.com".into()
            }
        );
        assert_eq!(r.supported(), vec!["path", "outbound"]);
        assert_eq!(r.expires().unwrap(), Some(u32::MAX));
        let c = r.contacts().unwrap();
        assert_eq!(c.len(), 2);
        let Contact::Address(first) = &c[0] else {
            panic!()
        };
        assert_eq!(first.expires, Some(60));
        assert_eq!(first.q.as_deref(), Some("0.5"));
        let Contact::Address(second) = &c[1] else {
            panic!()
        };
        assert_eq!(second.uri, "sip:y@h");
    }

    #[test]
    fn header_spans_cover_unknown_folded_and_restamped_values() {
        let mut r = Request::parse(
            b"REGISTER sip:a SIP/2.0\r\nv: SIP/2.0/TLS h:5061;rport\r\nX-Thing: one,\r\n two\r\n\
k: path, outbound\r\ni: c\r\n\r\n",
        )
        .unwrap();
        let all: Vec<(&str, &str)> = r.headers().collect();
        assert_eq!(
            all,
            vec![
                ("Via", "SIP/2.0/TLS h:5061;rport"),
                ("X-Thing", "one, two"),
                ("Supported", "path"),
                ("Supported", "outbound"),
                ("Call-ID", "c"),
            ]
        );
        assert_eq!(r.first("x-thing"), Some("one, two"));
        r.stamp_via("10.0.0.1:4000".parse().unwrap());
        assert_eq!(
            r.via(),
            vec!["SIP/2.0/TLS h:5061;rport=4000;received=10.0.0.1"]
        );
        assert_eq!(r.call_id().unwrap(), "c", "other spans untouched");
        assert!(Request::parse(b"R sip:a SIP/2.0\r\n two\r\n\r\n").is_err());
        let bare = Request::parse(b"OPTIONS sip:a SIP/2.0\r\n\r\n").unwrap();
        assert_eq!(bare.headers().count(), 0);
    }

    #[test]
    fn line_and_head_scanners_match_the_plain_splits() {
        for s in [
            "",
            "a",
            "a\r\nb",
            "a\nb\r\n",
            "\r\n",
            "a\r\n\r\nb",
            "x\r\r\ny",
        ] {
            assert_eq!(
                crlf_lines(s).collect::<Vec<_>>(),
                s.split("\r\n").collect::<Vec<_>>(),
                "{s:?}"
            );
            let b = s.as_bytes();
            assert_eq!(
                head_end(b),
                b.windows(4).position(|w| w == b"\r\n\r\n"),
                "{s:?}"
            );
        }
    }

    #[test]
    fn extension_method_and_wildcard() {
        let r = Request::parse(b"HELLO sip:a@b SIP/2.0\r\nm: *\r\nCSeq: 1 HELLO\r\n\r\n").unwrap();
        assert_eq!(r.method, "HELLO");
        assert_eq!(r.contacts().unwrap(), vec![Contact::Wildcard]);
        assert_eq!(r.cseq().unwrap().method, "HELLO");
    }

    #[test]
    fn errors_carry_reason_phrases() {
        let base = |extra: &str| format!("REGISTER sip:a SIP/2.0\r\nVia: x\r\n{extra}\r\n\r\n");
        let r = Request::parse(base("CSeq: 1 INVITE").as_bytes()).unwrap();
        assert_eq!(r.cseq().unwrap_err().to_string(), "CSeq Method Mismatch");
        let r = Request::parse(base("CSeq: x REGISTER").as_bytes()).unwrap();
        assert_eq!(r.cseq().unwrap_err().to_string(), "Bad CSeq");
        let r = Request::parse(base("CSeq: 4294967295 REGISTER").as_bytes()).unwrap();
        assert_eq!(r.cseq().unwrap_err().to_string(), "Bad CSeq");
        assert_eq!(r.call_id().unwrap_err().to_string(), "Missing Call-ID");
        let r = Request::parse(base("i: a\r\nCall-ID: b").as_bytes()).unwrap();
        assert_eq!(r.call_id().unwrap_err().to_string(), "Duplicate Call-ID");
        let r = Request::parse(base("To: <tel:+1234>").as_bytes()).unwrap();
        assert_eq!(r.aor().unwrap_err().to_string(), "Bad To URI");
        let r = Request::parse(base("m: <http://x>").as_bytes()).unwrap();
        assert_eq!(r.contacts().unwrap_err().to_string(), "Bad Contact URI");
        let r = Request::parse(base("m: <sip:a@b>;expires=-1").as_bytes()).unwrap();
        assert_eq!(r.contacts().unwrap_err().to_string(), "Bad Contact expires");
        assert_eq!(
            Request::parse(b"REGISTER sip:a SIP/3.0\r\n\r\n"),
            Err(MessageError::BadVersion)
        );
        assert_eq!(
            Request::parse(b"REGISTER  sip:a SIP/2.0\r\n\r\n"),
            Err(MessageError::BadRequestLine)
        );
        assert_eq!(
            Request::parse(b"INVITE <sip:a@b> SIP/2.0\r\n\r\n"),
            Err(MessageError::BadRequestLine)
        );
        assert_eq!(
            Request::parse(b"REGISTER sip:a SIP/2.0\r\nNoColon\r\n\r\n"),
            Err(MessageError::BadHeader)
        );
        assert_eq!(
            Request::parse(b"SIP/2.0 200 OK\r\n\r\n"),
            Err(MessageError::NotARequest)
        );
        assert_eq!(
            Request::parse(b"REGISTER sip:a SIP/2.0\r\nX: \xff\r\n\r\n"),
            Err(MessageError::NotUtf8)
        );
    }

    #[test]
    fn lenient_parse_keeps_headers_of_a_bad_request_line() {
        let r = Request::parse_lenient(b"REGISTER sip:a SIP/9.9\r\nVia: x\r\n\r\n").unwrap();
        assert_eq!(r.via(), vec!["x"]);
        assert!(Request::parse_lenient(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n").is_none());
    }

    #[test]
    fn the_uri_fast_path_reads_uris_as_rsip_does() {
        let uris = [
            "sip:1010@10.10.10.1",
            "sip:10.10.10.1",
            "sips:alice@example.com:5061;transport=tls",
            "sip:a8ae9f92-4b07-a0d7-d701-29320aed1e2e@10.10.10.10:62162;transport=tls",
            "sip:alice@Example.COM:05060;Transport=TCP;lr;ob;user=phone;ttl=5;maddr=1.2.3.4",
            "sip:u@h;transport=udp;x-y=z;expires=60;q=0.5;rinstance=abc",
            "sip:u@h;transport=sctp;user",
            "sip:u_x!~*+-@h-1.example",
            "sip:010.0.0.1",
            "sip:h:0",
            "sip:host",
            "sip:u@1.2.3",
            "sip:u@h;a;b=c;d",
        ];
        for u in uris {
            let fast = scan_simple_sip_uri(u).unwrap_or_else(|| panic!("not simple: {u}"));
            let slow = parse_sip_uri_rsip(u).unwrap_or_else(|| panic!("rsip refuses {u}"));
            assert_eq!(fast.user, slow.user, "{u}");
            assert_eq!(fast.host, slow.host, "{u}");
            assert_eq!(fast.port, slow.port, "{u}");
            assert_eq!(uri_key(&fast, u), uri_key(&slow, u), "{u}");
        }
        // Shapes the scanner leaves to rsip (which decides whether they are valid).
        for u in [
            "sip:first.last@h",
            "sip:u:pw@h",
            "sip:u%41@h",
            "sip:[::1]:5060",
            "sip:u@h:99999",
            "sip:u@h:",
            "sip:u@h;transport=foo",
            "sip:u@h;method=REGISTER",
            "sip:u@h;;x",
            "sip:u@h;x=\"q\"",
            "SIP:u@h",
            "sip:@h",
            "sip:",
            "tel:+1234",
            "sip:u@h?Route=x",
        ] {
            assert!(scan_simple_sip_uri(u).is_none(), "{u}");
        }
    }

    #[test]
    fn contact_uri_keys_compare_per_rfc() {
        let key = |u: &str| {
            let r =
                Request::parse(format!("R sip:a SIP/2.0\r\nm: <{u}>\r\n\r\n").as_bytes()).unwrap();
            match &r.contacts().unwrap()[0] {
                Contact::Address(c) => c.uri_key.clone(),
                Contact::Wildcard => unreachable!(),
            }
        };
        assert_eq!(
            key("sip:alice@EXAMPLE.com:5061;transport=TLS"),
            key("SIP:alice@example.com:5061;transport=tls")
        );
        assert_eq!(
            key("sip:alice@example.com;lr"),
            key("sip:alice@example.com")
        );
        assert_ne!(key("sip:Alice@example.com"), key("sip:alice@example.com"));
        assert_ne!(
            key("sip:alice@example.com:5060"),
            key("sip:alice@example.com")
        );
        assert_ne!(key("sips:alice@example.com"), key("sip:alice@example.com"));
    }
}
