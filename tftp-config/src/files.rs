//! The set of files the config service hands out, rendered once per directory change.
//!
//! [`ConfigFiles`] keeps one immutable [`FileSet`] per directory snapshot `generation`. The first
//! request after a change renders every file again (one request does the work, the others wait
//! for it) and swaps the new set in; every other request is a map lookup. HTTP, HTTPS and TFTP all
//! serve from the same set, so the three transports hand out the same bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use sha2::{Digest, Sha256};
use sipreg_store::{Directory, DirectorySnapshot};

use crate::fetches::{FetchResult, FetchStats, FetchTransport};
use crate::names::{self, BadName, CACHE_LIST, XML_DEFAULT};
use crate::render::{render_default_config, try_render, RenderError};

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// The file name as listed (device names keep the case the admin gave them).
    pub name: String,
    /// The bytes served on every transport.
    pub body: Arc<[u8]>,
    /// Strong HTTP entity tag (quoted), a hash of `body`.
    pub etag: String,
    /// When this content was first served, whole seconds (HTTP dates have no finer resolution).
    pub last_modified: SystemTime,
    /// The user who owns the device; `None` for files about no one (XMLDefault, the list).
    pub owner: Option<String>,
    /// The `Content-Type` to send over HTTP.
    pub content_type: &'static str,
}

/// Every file served for one directory generation, keyed by lowercase file name.
#[derive(Debug, Default)]
pub struct FileSet {
    /// The directory snapshot generation these files were rendered from.
    pub generation: u64,
    files: HashMap<String, Arc<ConfigFile>>,
}

impl FileSet {
    /// The file with this (already lowercased) key.
    pub fn get(&self, key: &str) -> Option<&Arc<ConfigFile>> {
        self.files.get(key)
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the set is empty (it never is once built: XMLDefault is always there).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Why a requested file is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name is not a plain file name (traversal, separators, odd characters).
    #[error("bad file name")]
    BadName,
    /// No such file.
    #[error("file not found")]
    NotFound,
    /// Rendering failed; logged where it happened.
    #[error("config files cannot be rendered")]
    Render,
}

impl From<BadName> for LookupError {
    fn from(_: BadName) -> Self {
        LookupError::BadName
    }
}

/// The live file set over a [`Directory`]; cheap to share behind an `Arc`.
pub struct ConfigFiles {
    directory: Directory,
    current: ArcSwapOption<FileSet>,
    // One rebuild at a time; the others wait and then find the new set.
    rebuild: Mutex<()>,
    /// Fetches by transport and result, counted by [`ConfigFiles::fetch`].
    fetches: Arc<FetchStats>,
}

impl std::fmt::Debug for ConfigFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFiles")
            .field(
                "generation",
                &self.current.load().as_ref().map(|s| s.generation),
            )
            .finish()
    }
}

impl ConfigFiles {
    /// A file set following `directory`; nothing is rendered until the first request.
    pub fn new(directory: Directory) -> Self {
        ConfigFiles {
            directory,
            current: ArcSwapOption::empty(),
            rebuild: Mutex::new(()),
            fetches: Arc::default(),
        }
    }

    /// Counts fetches into `fetches` (shared with whoever renders the metrics).
    pub fn with_fetch_stats(mut self, fetches: Arc<FetchStats>) -> Self {
        self.fetches = fetches;
        self
    }

    /// The fetch counters.
    pub fn fetch_stats(&self) -> &Arc<FetchStats> {
        &self.fetches
    }

    /// [`lookup`](Self::lookup) for a client fetching over `transport`, counted; a fetch refused
    /// later (HTTPS, not the owner) is counted by the caller with [`FetchStats::count`].
    pub fn fetch(
        &self,
        transport: FetchTransport,
        requested: &str,
    ) -> Result<Arc<ConfigFile>, LookupError> {
        let r = self.lookup(requested);
        match &r {
            // HTTPS counts its success after the ownership check.
            Ok(_) if transport == FetchTransport::Https => {}
            Ok(_) => self.fetches.count(transport, FetchResult::Ok),
            Err(e) => self.fetches.count(transport, FetchResult::of(e)),
        }
        r
    }

    /// The file set for the directory's current generation, rendering it if the directory moved on.
    pub fn files(&self) -> Result<Arc<FileSet>, LookupError> {
        let snap = self.directory.snapshot();
        if let Some(set) = self.current.load_full() {
            if set.generation == snap.generation {
                return Ok(set);
            }
        }
        // A poisoned lock only means another rebuild panicked; the data it guards is `()`.
        let _one = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.current.load_full();
        let snap = self.directory.snapshot();
        if let Some(set) = &previous {
            if set.generation == snap.generation {
                return Ok(set.clone());
            }
        }
        let set = build(&snap, previous.as_deref(), SystemTime::now()).map_err(|e| {
            tracing::error!(error = %e, "cannot render device config files");
            LookupError::Render
        })?;
        let set = Arc::new(set);
        self.current.store(Some(set.clone()));
        Ok(set)
    }

    /// The file a client asked for by name (case-insensitive).
    pub fn lookup(&self, requested: &str) -> Result<Arc<ConfigFile>, LookupError> {
        let key = names::lookup_key(requested)?;
        self.files()?
            .get(&key)
            .cloned()
            .ok_or(LookupError::NotFound)
    }
}

/// Renders every file of `snap`. A file whose bytes did not change keeps its `last_modified`
/// from `previous`; a changed one gets a time strictly after its previous one, so a client that
/// only sends `If-Modified-Since` still sees two changes within one second.
fn build(
    snap: &DirectorySnapshot,
    previous: Option<&FileSet>,
    now: SystemTime,
) -> Result<FileSet, RenderError> {
    let now = whole_seconds(now);
    let mut files = HashMap::new();
    let mut add = |name: String, body: Vec<u8>, owner: Option<String>, content_type| {
        let key = name.to_ascii_lowercase();
        let etag = etag(&body);
        let before = previous.and_then(|p| p.get(&key));
        let last_modified = match before {
            Some(b) if b.etag == etag => b.last_modified,
            Some(b) => now.max(b.last_modified + Duration::from_secs(1)),
            None => now,
        };
        files.insert(
            key,
            Arc::new(ConfigFile {
                name,
                body: body.into(),
                etag,
                last_modified,
                owner,
                content_type,
            }),
        );
    };
    let mut listed = vec![XML_DEFAULT.to_string()];
    for device in snap.all_devices() {
        if names::device_kind(&device.name).is_none() {
            continue;
        }
        let name = names::device_file_name(&device.name);
        add(
            name.clone(),
            try_render(device, snap)?.into_bytes(),
            Some(device.owner.clone()),
            crate::CONTENT_TYPE,
        );
        listed.push(name);
    }
    add(
        XML_DEFAULT.to_string(),
        render_default_config(snap)?.into_bytes(),
        None,
        crate::CONTENT_TYPE,
    );
    listed.sort_by_key(|n| n.to_ascii_lowercase());
    let list: String = listed.iter().map(|n| format!("{n}\n")).collect();
    add(
        CACHE_LIST.to_string(),
        list.into_bytes(),
        None,
        "text/plain",
    );
    Ok(FileSet {
        generation: snap.generation,
        files,
    })
}

fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{fixture, node, parse};
    use sipreg_store::{Device, Line, Store};

    #[tokio::test]
    async fn files_are_rendered_once_per_generation_and_looked_up_case_insensitively() {
        let f = fixture(true).await;
        let files = ConfigFiles::new(f.directory.clone());
        let a = files.files().unwrap();
        let b = files.files().unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "same generation: same set, no re-render"
        );
        assert_eq!(a.generation, f.directory.snapshot().generation);
        // Two devices, XMLDefault, the list.
        assert_eq!(a.len(), 4);

        let csf = files.lookup("csfJDOE.CNF.xml").unwrap();
        assert_eq!(csf.name, "CSFjdoe.cnf.xml");
        assert_eq!(csf.owner.as_deref(), Some("jdoe"));
        let snap = f.directory.snapshot();
        assert_eq!(
            &*csf.body,
            crate::render_device_config(snap.device("CSFjdoe").unwrap(), &snap).as_bytes()
        );
        assert!(Arc::ptr_eq(
            &csf,
            &files.lookup("/CSFjdoe.cnf.xml").unwrap()
        ));

        assert_eq!(
            files.lookup("CSFnobody.cnf.xml"),
            Err(LookupError::NotFound)
        );
        assert_eq!(
            files.lookup("../CSFjdoe.cnf.xml"),
            Err(LookupError::BadName)
        );
        assert_eq!(
            files.lookup("CSFjdoe.cnf.xml.sgn"),
            Err(LookupError::NotFound)
        );
    }

    #[tokio::test]
    async fn the_cache_list_names_every_served_file_and_odd_device_names_get_none() {
        let f = fixture(false).await;
        f.store
            .create_device(&Device {
                name: "deskphone7".into(),
                owner: "jdoe".into(),
                lines: vec![Line {
                    dn: "1099".into(),
                    display_name: None,
                }],
                oauth: false,
                updated_at: 2,
                model: String::new(),
                profile: String::new(),
            })
            .await
            .unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let files = ConfigFiles::new(f.directory.clone());
        let list = files.lookup("configfilecachelist.txt").unwrap();
        assert_eq!(list.content_type, "text/plain");
        assert_eq!(
            std::str::from_utf8(&list.body).unwrap(),
            "CSFjdoe.cnf.xml\nSEP001122334455.cnf.xml\nXMLDefault.cnf.xml\n"
        );
        for line in std::str::from_utf8(&list.body).unwrap().lines() {
            assert!(
                files.lookup(line).is_ok(),
                "{line} is listed but not served"
            );
        }
        assert_eq!(
            files.lookup("deskphone7.cnf.xml"),
            Err(LookupError::NotFound)
        );
    }

    #[tokio::test]
    async fn xml_default_has_the_cluster_but_no_user_or_lines() {
        let f = fixture(true).await;
        let files = ConfigFiles::new(f.directory.clone());
        let d = files.lookup("XMLDefault.cnf.xml").unwrap();
        assert_eq!(d.owner, None);
        let xml = std::str::from_utf8(&d.body).unwrap();
        let dev = parse(xml);
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
                "transportLayerProtocol"
            ]
        );
        assert_eq!(dev.at(&["sipOAuthMode"]), "1");
        assert_eq!(dev.one("sipProfile").one("sipLines").children.len(), 0);
        assert_eq!(
            dev.one("devicePool")
                .one("callManagerGroup")
                .one("members")
                .all("member")
                .count(),
            2
        );
        assert!(!xml.contains("jdoe"), "{xml}");
    }

    #[tokio::test]
    async fn a_change_renders_again_and_only_changed_files_get_new_tags() {
        let f = fixture(true).await;
        let files = ConfigFiles::new(f.directory.clone());
        let before = files.files().unwrap();
        let csf = before.get("csfjdoe.cnf.xml").unwrap().clone();
        let sep = before.get("sep001122334455.cnf.xml").unwrap().clone();

        // The SEP device opts out of OAuth, so turning the cluster off changes only the CSF file.
        f.store.set_oauth_mode(false).await.unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let after = files.files().unwrap();
        assert_eq!(after.generation, before.generation + 1);
        let csf2 = after.get("csfjdoe.cnf.xml").unwrap();
        let sep2 = after.get("sep001122334455.cnf.xml").unwrap();
        assert_ne!(csf2.etag, csf.etag);
        assert!(
            csf2.last_modified > csf.last_modified,
            "strictly later, even within a second"
        );
        assert_eq!(sep2.etag, sep.etag);
        assert_eq!(sep2.last_modified, sep.last_modified);

        // A node's ports change every file that lists the node.
        f.store
            .upsert_node(&node("b-sub", "10.0.0.2", 7060))
            .await
            .unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let third = files.files().unwrap();
        assert_ne!(third.get("sep001122334455.cnf.xml").unwrap().etag, sep.etag);
        assert_ne!(
            third.get("xmldefault.cnf.xml").unwrap().etag,
            before.get("xmldefault.cnf.xml").unwrap().etag
        );
    }

    #[test]
    fn etags_are_quoted_content_hashes() {
        let a = etag(b"x");
        assert_eq!(a.len(), 34);
        assert!(a.starts_with('"') && a.ends_with('"'));
        assert_eq!(a, etag(b"x"));
        assert_ne!(a, etag(b"y"));
    }
}
