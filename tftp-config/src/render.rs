//! Rendering of one device's `cnf.xml`, following the element order of Unified CM's SIP device
//! configuration (spec §1.3), reduced to what a SIP OAuth client needs.

use std::io;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;
use sha2::{Digest, Sha256};
use sipreg_store::{Device, DirectorySnapshot, Line, Node};

/// The SIP port a line advertises when the cluster has no nodes yet.
const DEFAULT_SIP_PORT: u16 = 5060;

/// Why a configuration file could not be rendered (only an internal writer failure).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The XML writer failed.
    #[error("xml writer: {0}")]
    Write(#[from] io::Error),
}

/// Renders `<name>.cnf.xml` for `device` with quick-xml (all text and attributes escaped).
///
/// `sipOAuthMode` is 1 only when the cluster is in OAuth mode AND the device's security profile
/// enables OAuth. With OAuth the file advertises `transportLayerProtocol` 3 (TLS) and
/// `deviceSecurityMode` 3 (encrypted), as FCG's OAuth profile is "Encrypted" over "TLS"; otherwise
/// 4 (TCP+UDP) and 1 (non-secure), the values of Unified CM's non-secure sample. These numeric
/// codes follow Unified CM's enumerations as far as known (spec §1.3 marks them unconfirmed).
/// `versionStamp` is a hash of the rest of the file, so it changes exactly when the content does.
pub fn render_device_config(device: &Device, snap: &DirectorySnapshot) -> String {
    match try_render(device, snap) {
        Ok(xml) => xml,
        Err(e) => {
            // Writing into a Vec cannot fail in practice; the HTTP service uses `try_render`.
            tracing::error!(device = %device.name, error = %e, "cannot render device config");
            String::new()
        }
    }
}

/// Like [`render_device_config`], reporting writer failures.
pub(crate) fn try_render(device: &Device, snap: &DirectorySnapshot) -> Result<String, RenderError> {
    stamped(Some(device), snap)
}

/// Renders `XMLDefault.cnf.xml`, the file a phone without a device of its own falls back to.
///
/// It carries the cluster's nodes, ports and OAuth mode but no lines and no user, so it says
/// nothing about anyone.
pub fn render_default_config(snap: &DirectorySnapshot) -> Result<String, RenderError> {
    stamped(None, snap)
}

fn stamped(device: Option<&Device>, snap: &DirectorySnapshot) -> Result<String, RenderError> {
    // Two passes: the stamp is a hash of the file rendered with an empty stamp.
    let unstamped = write_document(device, snap, "")?;
    let stamp = uuid_like(&Sha256::digest(&unstamped));
    let stamped = write_document(device, snap, &stamp)?;
    String::from_utf8(stamped)
        .map_err(|e| RenderError::Write(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// The stable, UUID-shaped Contact user part for a device's line (Unified CM's `line/contact`).
///
/// Derived from the device name (case-insensitively) and the DN, so it survives restarts and
/// re-renders, and differs between lines and devices.
pub fn line_contact(device_name: &str, dn: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"sipreg line contact\0");
    h.update(device_name.to_ascii_lowercase().as_bytes());
    h.update(b"\0");
    h.update(dn.as_bytes());
    uuid_like(&h.finalize())
}

/// Formats the first 16 bytes of a digest as 8-4-4-4-12 lowercase hex.
fn uuid_like(digest: &[u8]) -> String {
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

type W = Writer<Vec<u8>>;

fn write_document(
    device: Option<&Device>,
    snap: &DirectorySnapshot,
    stamp: &str,
) -> io::Result<Vec<u8>> {
    // Without a device (XMLDefault) the cluster setting is all there is to advertise.
    let oauth = snap.oauth_mode() && device.is_none_or(|d| d.oauth);
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("device")
        .with_attribute(("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"))
        .with_attribute(("xsi:type", "axl:XIPPhone"))
        .write_inner_content(|w| {
            text(w, "fullConfig", "true")?;
            text(w, "deviceProtocol", "SIP")?;
            device_pool(w, &snap.nodes)?;
            text(w, "sipOAuthMode", if oauth { "1" } else { "0" })?;
            sip_profile(w, device, &snap.nodes)?;
            text(w, "versionStamp", stamp)?;
            text(w, "deviceSecurityMode", if oauth { "3" } else { "1" })?;
            text(w, "transportLayerProtocol", if oauth { "3" } else { "4" })?;
            if let Some(device) = device {
                text(w, "userId", &device.owner)?;
                text(w, "ownerId", &device.owner)?;
            }
            Ok(())
        })?;
    Ok(w.into_inner())
}

fn device_pool(w: &mut W, nodes: &[Node]) -> io::Result<()> {
    w.create_element("devicePool").write_inner_content(|w| {
        w.create_element("callManagerGroup")
            .write_inner_content(|w| {
                w.create_element("members").write_inner_content(|w| {
                    for (priority, node) in nodes.iter().enumerate() {
                        w.create_element("member")
                            .with_attribute(("priority", priority.to_string().as_str()))
                            .write_inner_content(|w| call_manager(w, node))?;
                    }
                    Ok(())
                })?;
                Ok(())
            })?;
        Ok(())
    })?;
    Ok(())
}

fn call_manager(w: &mut W, node: &Node) -> io::Result<()> {
    w.create_element("callManager").write_inner_content(|w| {
        text(w, "name", &node.host)?;
        text(w, "description", &node.name)?;
        w.create_element("ports").write_inner_content(|w| {
            text(w, "sipPort", &node.sip_port.to_string())?;
            text(w, "securedSipPort", &node.secured_sip_port.to_string())?;
            text(w, "sipOAuthPort", &node.sip_oauth_port.to_string())?;
            text(w, "sipMRAOAuthPort", &node.sip_mra_oauth_port.to_string())?;
            Ok(())
        })?;
        text(w, "processNodeName", &node.name)?;
        Ok(())
    })?;
    Ok(())
}

fn sip_profile(w: &mut W, device: Option<&Device>, nodes: &[Node]) -> io::Result<()> {
    // Lines point at "the call manager"; its legacy SIP port is the primary node's.
    let port = nodes
        .first()
        .map_or(DEFAULT_SIP_PORT, |n| n.sip_port)
        .to_string();
    w.create_element("sipProfile").write_inner_content(|w| {
        // Unified CM's defaults (spec §1.3); the registrar grants what it grants regardless.
        w.create_element("sipStack").write_inner_content(|w| {
            text(w, "sipInviteRetx", "6")?;
            text(w, "sipRetx", "10")?;
            text(w, "timerInviteExpires", "180")?;
            text(w, "timerRegisterExpires", "3600")?;
            text(w, "timerRegisterDelta", "5")?;
            text(w, "timerKeepAliveExpires", "120")?;
            text(w, "timerT1", "500")?;
            text(w, "timerT2", "4000")?;
            Ok(())
        })?;
        w.create_element("sipLines").write_inner_content(|w| {
            if let Some(device) = device {
                for (i, line) in device.lines.iter().enumerate() {
                    sip_line(w, device, line, i + 1, &port)?;
                }
            }
            Ok(())
        })?;
        Ok(())
    })?;
    Ok(())
}

fn sip_line(w: &mut W, device: &Device, line: &Line, button: usize, port: &str) -> io::Result<()> {
    let display = line.display_name.as_deref().unwrap_or(&device.owner);
    let button = button.to_string();
    w.create_element("line")
        .with_attribute(("button", button.as_str()))
        .with_attribute(("lineIndex", button.as_str()))
        .write_inner_content(|w| {
            text(w, "featureID", "9")?; // 9 = line appearance
            text(w, "featureLabel", display)?;
            text(w, "proxy", "USECALLMANAGER")?;
            text(w, "port", port)?;
            text(w, "name", &line.dn)?;
            text(w, "displayName", display)?;
            text(w, "contact", &line_contact(&device.name, &line.dn))?;
            Ok(())
        })?;
    Ok(())
}

/// Writes `<name>value</name>`, escaping the value and dropping characters XML 1.0 cannot carry.
fn text(w: &mut W, name: &str, value: &str) -> io::Result<()> {
    let clean = xml_chars(value);
    w.create_element(name)
        .write_text_content(BytesText::new(&clean))?;
    Ok(())
}

/// Replaces characters that are not allowed in XML 1.0 (control characters, U+FFFE/U+FFFF) even
/// when escaped, so an odd display name cannot make the whole file unparseable.
fn xml_chars(s: &str) -> std::borrow::Cow<'_, str> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    };
    if s.chars().all(allowed) {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(
            s.chars()
                .map(|c| if allowed(c) { c } else { '\u{FFFD}' })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{fixture, node, parse};
    use sipreg_store::Store;

    #[tokio::test]
    async fn nesting_and_values_follow_the_cucm_layout() {
        let f = fixture(true).await;
        let snap = f.directory.snapshot();
        let xml = render_device_config(snap.device("csfjdoe").unwrap(), &snap);
        assert!(
            xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
            "{xml}"
        );
        let dev = parse(&xml);
        assert_eq!(dev.name, "device");
        assert_eq!(dev.attr("xsi:type"), Some("axl:XIPPhone"));
        assert_eq!(
            dev.attr("xmlns:xsi"),
            Some("http://www.w3.org/2001/XMLSchema-instance")
        );
        assert_eq!(
            dev.child_names(),
            [
                "fullConfig",
                "deviceProtocol",
                "devicePool",
                "sipOAuthMode",
                "sipProfile",
                "versionStamp",
                "deviceSecurityMode",
                "transportLayerProtocol",
                "userId",
                "ownerId"
            ]
        );
        assert_eq!(dev.at(&["fullConfig"]), "true");
        assert_eq!(dev.at(&["deviceProtocol"]), "SIP");
        assert_eq!(dev.at(&["sipOAuthMode"]), "1");
        assert_eq!(dev.at(&["transportLayerProtocol"]), "3");
        assert_eq!(dev.at(&["deviceSecurityMode"]), "3");
        assert_eq!(dev.at(&["userId"]), "jdoe");
        assert_eq!(dev.at(&["ownerId"]), "jdoe");

        // One member per node, priority 0.., each with the node's own ports.
        let members: Vec<_> = dev
            .one("devicePool")
            .one("callManagerGroup")
            .one("members")
            .all("member")
            .collect();
        assert_eq!(members.len(), 2);
        for (i, (m, n)) in members.iter().zip(&snap.nodes).enumerate() {
            assert_eq!(m.attr("priority"), Some(i.to_string().as_str()));
            let cm = m.one("callManager");
            assert_eq!(
                cm.child_names(),
                ["name", "description", "ports", "processNodeName"]
            );
            assert_eq!(cm.at(&["name"]), n.host);
            assert_eq!(cm.at(&["description"]), n.name);
            assert_eq!(cm.at(&["processNodeName"]), n.name);
            let ports = cm.one("ports");
            assert_eq!(
                ports.child_names(),
                [
                    "sipPort",
                    "securedSipPort",
                    "sipOAuthPort",
                    "sipMRAOAuthPort"
                ]
            );
            assert_eq!(ports.at(&["sipPort"]), n.sip_port.to_string());
            assert_eq!(
                ports.at(&["securedSipPort"]),
                n.secured_sip_port.to_string()
            );
            assert_eq!(ports.at(&["sipOAuthPort"]), n.sip_oauth_port.to_string());
            assert_eq!(
                ports.at(&["sipMRAOAuthPort"]),
                n.sip_mra_oauth_port.to_string()
            );
        }
        assert_eq!(members[0].at(&["callManager", "name"]), "10.0.0.1");
        assert_eq!(
            members[1].at(&["callManager", "ports", "sipOAuthPort"]),
            "6090"
        );

        let profile = dev.one("sipProfile");
        assert_eq!(profile.at(&["sipStack", "timerRegisterExpires"]), "3600");
        let lines: Vec<_> = profile.one("sipLines").all("line").collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].attr("button"), Some("1"));
        assert_eq!(lines[1].attr("button"), Some("2"));
        assert_eq!(lines[0].at(&["featureID"]), "9");
        assert_eq!(lines[0].at(&["proxy"]), "USECALLMANAGER");
        assert_eq!(lines[0].at(&["port"]), "5060");
        assert_eq!(lines[0].at(&["name"]), "1010");
        assert_eq!(lines[1].at(&["name"]), "1011");
        // Odd characters survive the round trip; a control character cannot enter XML 1.0.
        assert_eq!(
            lines[0].at(&["displayName"]),
            "J. <Doe> & \"Co\" 'x'\u{FFFD}"
        );
        assert_eq!(
            lines[0].at(&["featureLabel"]),
            "J. <Doe> & \"Co\" 'x'\u{FFFD}"
        );
        assert!(xml.contains("&lt;Doe&gt; &amp;"), "{xml}");
        // Without a display name the owner is shown.
        assert_eq!(lines[1].at(&["displayName"]), "jdoe");
        assert_eq!(lines[0].at(&["contact"]), line_contact("CSFjdoe", "1010"));
        assert_ne!(lines[0].at(&["contact"]), lines[1].at(&["contact"]));
    }

    #[tokio::test]
    async fn oauth_mode_needs_cluster_and_device_profile() {
        let on = fixture(true).await;
        let off = fixture(false).await;
        let mode = |f: &crate::test_support::Fixture, dev: &str| {
            let snap = f.directory.snapshot();
            let d = parse(&render_device_config(snap.device(dev).unwrap(), &snap));
            (
                d.at(&["sipOAuthMode"]).to_string(),
                d.at(&["transportLayerProtocol"]).to_string(),
            )
        };
        assert_eq!(mode(&on, "CSFjdoe"), ("1".into(), "3".into()));
        assert_eq!(mode(&on, "SEP001122334455"), ("0".into(), "4".into())); // device opts out
        assert_eq!(mode(&off, "CSFjdoe"), ("0".into(), "4".into())); // cluster off
        assert_eq!(mode(&off, "SEP001122334455"), ("0".into(), "4".into()));
    }

    #[tokio::test]
    async fn version_stamp_changes_exactly_when_content_does() {
        let f = fixture(true).await;
        let snap = f.directory.snapshot();
        let dev = snap.device("CSFjdoe").unwrap();
        let a = render_device_config(dev, &snap);
        let stamp = |xml: &str| parse(xml).at(&["versionStamp"]).to_string();
        assert_eq!(stamp(&a).len(), 36);
        // Same inputs: byte-identical output, same stamp.
        assert_eq!(render_device_config(dev, &snap), a);

        // A port change on one node changes the file and the stamp.
        f.store
            .upsert_node(&node("b-sub", "10.0.0.2", 7060))
            .await
            .unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let snap2 = f.directory.snapshot();
        let b = render_device_config(snap2.device("CSFjdoe").unwrap(), &snap2);
        assert_ne!(stamp(&a), stamp(&b));

        // Switching cluster OAuth mode off changes it again.
        f.store.set_oauth_mode(false).await.unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let snap3 = f.directory.snapshot();
        let c = render_device_config(snap3.device("CSFjdoe").unwrap(), &snap3);
        assert_ne!(stamp(&b), stamp(&c));
    }

    #[tokio::test]
    async fn no_nodes_still_renders_a_valid_file() {
        let f = fixture(false).await;
        let mut snap = sipreg_store::DirectorySnapshot::default();
        snap.nodes.clear();
        let dev = f.directory.snapshot().device("CSFjdoe").unwrap().clone();
        let d = parse(&render_device_config(&dev, &snap));
        assert_eq!(
            d.one("devicePool")
                .one("callManagerGroup")
                .one("members")
                .all("member")
                .count(),
            0
        );
        let line = d
            .one("sipProfile")
            .one("sipLines")
            .all("line")
            .next()
            .unwrap();
        assert_eq!(line.at(&["port"]), "5060");
    }

    #[test]
    fn contact_is_stable_and_case_insensitive_in_the_device_name() {
        let c = line_contact("CSFjdoe", "1010");
        assert_eq!(c, line_contact("csfJDOE", "1010"));
        assert_ne!(c, line_contact("CSFjdoe", "1011"));
        assert_ne!(c, line_contact("CSFother", "1010"));
        let parts: Vec<_> = c.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert!(c.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
    }
}
