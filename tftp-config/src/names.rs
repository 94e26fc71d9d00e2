//! Config file names: which device names get a file, and which requested names are acceptable.
//!
//! Unified CM names soft-client devices `CSF…`, `BOT…`, `TCT…`, `TAB…` and desk phones
//! `SEP<MAC>` (12 hex digits); each fetches `<device>.cnf.xml`. Unknown phones fall back to
//! `XMLDefault.cnf.xml`, and `ConfigFileCacheList.txt` lists what is served (spec §6.1).

/// The fallback file for phones without a device of their own.
pub const XML_DEFAULT: &str = "XMLDefault.cnf.xml";
/// The list of served file names, one per line.
pub const CACHE_LIST: &str = "ConfigFileCacheList.txt";
/// Suffix of every device config file.
pub(crate) const DEVICE_SUFFIX: &str = ".cnf.xml";

/// Longest device name we serve a file for (the admin API allows 64 characters).
const MAX_DEVICE_NAME: usize = 64;
/// Longest requested file name we look at.
const MAX_FILE_NAME: usize = MAX_DEVICE_NAME + DEVICE_SUFFIX.len();
/// Soft-client device-type prefixes (Jabber for desktop, Android, iPhone, tablet).
const SOFT_CLIENT_PREFIXES: [&str; 4] = ["CSF", "BOT", "TCT", "TAB"];

/// A requested name that is not a plain file name (separators, traversal, odd characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a config file name")]
pub(crate) struct BadName;

/// The kind of device a name denotes, if it is one we serve a config file for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `CSF`/`BOT`/`TCT`/`TAB` followed by at least one character.
    SoftClient,
    /// `SEP` followed by exactly 12 hex digits (the MAC address).
    DeskPhone,
}

/// Classifies a device name, case-insensitively; `None` for names that get no config file.
pub fn device_kind(name: &str) -> Option<DeviceKind> {
    if name.len() > MAX_DEVICE_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    let (prefix, rest) = name.split_at_checked(3)?;
    if prefix.eq_ignore_ascii_case("SEP") {
        return (rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(DeviceKind::DeskPhone);
    }
    (SOFT_CLIENT_PREFIXES
        .iter()
        .any(|p| p.eq_ignore_ascii_case(prefix))
        && !rest.is_empty())
    .then_some(DeviceKind::SoftClient)
}

/// The file name served for a device.
pub(crate) fn device_file_name(device: &str) -> String {
    format!("{device}{DEVICE_SUFFIX}")
}

/// A requested file name in lowercase, held inline: looking a file up allocates nothing.
#[derive(Clone, Copy)]
pub(crate) struct LookupKey {
    buf: [u8; MAX_FILE_NAME],
    len: usize,
}

impl LookupKey {
    /// The key as a string.
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII bytes are ever copied in (`lookup_key` checks them), so this never fails.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Debug for LookupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl PartialEq for LookupKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for LookupKey {}

impl PartialEq<&str> for LookupKey {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The lookup key for a requested file name (lowercase), or [`BadName`] when the name is not a
/// plain file name. A single leading `/` is accepted, as TFTP clients often send one.
pub(crate) fn lookup_key(requested: &str) -> Result<LookupKey, BadName> {
    let name = requested.strip_prefix('/').unwrap_or(requested);
    let plain = !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain {
        return Err(BadName);
    }
    let mut key = LookupKey {
        buf: [0; MAX_FILE_NAME],
        len: name.len(),
    };
    key.buf[..name.len()].copy_from_slice(name.as_bytes());
    key.buf[..name.len()].make_ascii_lowercase();
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_kinds_follow_unified_cm_naming() {
        for n in ["CSFjdoe", "csfJDOE", "BOTjdoe", "TCTx", "tab_1-a"] {
            assert_eq!(device_kind(n), Some(DeviceKind::SoftClient), "{n}");
        }
        for n in ["SEP001122334455", "sepAABBCCDDEEFF", "SEPaabbccddeeff"] {
            assert_eq!(device_kind(n), Some(DeviceKind::DeskPhone), "{n}");
        }
        for n in [
            "",
            "CSF",
            "SEP",
            "SEP00112233445",   // 11 digits
            "SEP0011223344556", // 13 digits
            "SEP00112233445G",  // not hex
            "phone1",
            "CS",
            "CSF.jdoe",
            "CSF/jdoe",
            "CSFjdö",
        ] {
            assert_eq!(device_kind(n), None, "{n}");
        }
        assert_eq!(
            device_kind(&format!("CSF{}", "a".repeat(61))),
            Some(DeviceKind::SoftClient)
        );
        assert_eq!(device_kind(&format!("CSF{}", "a".repeat(62))), None);
    }

    #[test]
    fn lookup_keys_are_lowercase_plain_names() {
        assert_eq!(
            lookup_key("SEP001122334455.cnf.xml").unwrap(),
            "sep001122334455.cnf.xml"
        );
        assert_eq!(
            lookup_key("/XMLDefault.CNF.XML").unwrap(),
            "xmldefault.cnf.xml"
        );
        assert_eq!(
            lookup_key("ConfigFileCacheList.txt").unwrap(),
            "configfilecachelist.txt"
        );
        for bad in [
            "",
            "/",
            "//etc/passwd",
            "../etc/passwd",
            "a/b.cnf.xml",
            "a\\b.cnf.xml",
            "..cnf.xml",
            ".hidden",
            "CSF\0x.cnf.xml",
            "CSF x.cnf.xml",
            "CSFä.cnf.xml",
        ] {
            assert_eq!(lookup_key(bad), Err(BadName), "{bad:?}");
        }
        assert!(lookup_key(&"a".repeat(MAX_FILE_NAME)).is_ok());
        assert_eq!(lookup_key(&"a".repeat(MAX_FILE_NAME + 1)), Err(BadName));
    }
}
