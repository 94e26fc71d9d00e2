//! The files the config service hands out, each rendered when first asked for and cached.
//!
//! A device's `<name>.cnf.xml` is a function of the device and of what every file shows of the
//! cluster: the OAuth mode and the nodes with their ports ([`render`](crate::render) reads nothing
//! else; a security profile reaches a file only through the device's `oauth` flag, which the
//! store rewrites, as a new device, when the profile changes). So [`ConfigFiles`] renders a file on
//! its first request and serves it again while
//! - the snapshot still holds the same `Arc<Device>` (the directory keeps an untouched device's
//!   `Arc` across snapshots, so one device change leaves every other device's entry valid), and
//! - the settings epoch is the same (it moves only when the OAuth mode or the nodes change).
//!
//! `XMLDefault.cnf.xml` depends on the settings only; `ConfigFileCacheList.txt` on the device names
//! only, and is built from them without rendering any file. A change of one device therefore costs
//! one render, on that device's next fetch, instead of a render of every device.
//!
//! Rendered device files live in a cache bounded by bytes ([`DEFAULT_CACHE_BYTES`]), in shards that
//! each evict by CLOCK (second chance, close to least recently used). An evicted file keeps its
//! ETag and `Last-Modified` (a small record per device), so a file rendered again with the same bytes
//! keeps its date and one with new bytes gets a strictly later one. HTTP, HTTPS and TFTP all serve
//! the same cached `ConfigFile`, so the three transports hand out the same bytes.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::http::HeaderValue;
use sha2::{Digest, Sha256};
use sipreg_store::{Device, Directory, DirectorySnapshot, Node};

use crate::fetches::{FetchResult, FetchStats, FetchTransport};
use crate::names::{self, BadName, CACHE_LIST, DEVICE_SUFFIX, XML_DEFAULT};
use crate::render::{render_default_config, try_render, RenderError};

/// Bytes of rendered device files a [`ConfigFiles`] keeps by default: about 20,000 files of
/// 8 lines, the working set of a large cluster's boot storm, in a fixed amount of memory.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// Cache shards: requests for different devices rarely meet on one lock, and a full shard
/// evicts only its own entries.
const SHARDS: usize = 16;
/// What a cached file costs besides its strings: the `ConfigFile`, its `Arc`s, the map entry,
/// the HTTP header values and the owner of the shared HTTP body.
const FILE_OVERHEAD: usize = 384;
/// A full shard evicts down to this share of its budget (percent), so that it does not run the
/// CLOCK hand again on every insert.
const EVICT_TO_PERCENT: usize = 75;
/// Records a shard keeps before it drops those of deleted devices (plus twice its share).
const PRUNE_SLACK: usize = 64;

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
    /// `body` for HTTP: the same bytes (no copy), cloned per response for the cost of a count.
    pub(crate) http_body: Bytes,
    /// The `ETag` and `Last-Modified` header values, built once per file rather than per
    /// response (`None` only if a value were not a valid header, which hex and HTTP dates are).
    pub(crate) etag_header: Option<HeaderValue>,
    pub(crate) last_modified_header: Option<HeaderValue>,
}

impl ConfigFile {
    /// A file with its HTTP header values derived from `etag` and `last_modified`.
    pub(crate) fn new(
        name: String,
        body: Arc<[u8]>,
        etag: String,
        last_modified: SystemTime,
        owner: Option<String>,
        content_type: &'static str,
    ) -> Self {
        ConfigFile {
            http_body: Bytes::from_owner(body.clone()),
            etag_header: HeaderValue::from_str(&etag).ok(),
            last_modified_header: HeaderValue::from_str(&httpdate::fmt_http_date(last_modified))
                .ok(),
            name,
            body,
            etag,
            last_modified,
            owner,
            content_type,
        }
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

/// What every file shows of the cluster: the inputs of a render besides the device.
#[derive(Debug, Default, PartialEq)]
struct Settings {
    oauth_mode: bool,
    nodes: Vec<Node>,
}

impl Settings {
    fn of(snap: &DirectorySnapshot) -> Self {
        Settings {
            oauth_mode: snap.oauth_mode(),
            nodes: snap.nodes.clone(),
        }
    }
}

/// The settings epoch of one directory generation.
#[derive(Debug, Default)]
struct View {
    generation: u64,
    /// Moves (never back) whenever `settings` differ from the previous view's, so every view with
    /// the same epoch has the same settings.
    epoch: u64,
    settings: Settings,
}

/// The last rendered version of one device's file.
#[derive(Debug)]
struct Entry {
    /// The device the file was rendered from. A `Weak` keeps the allocation, so no other device
    /// can take its address while entries compare against it. Empty once evicted.
    device: Weak<Device>,
    /// The settings epoch it was rendered with.
    epoch: u64,
    /// The directory generation it was rendered from: an older snapshot's render never replaces it.
    generation: u64,
    /// The validators of the last rendered bytes, kept after eviction so a render of the same
    /// bytes keeps its date and one of new bytes gets a later one.
    digest: [u8; 16],
    last_modified: SystemTime,
    /// The file while it is cached.
    file: Option<Arc<ConfigFile>>,
    /// Set by every hit; the CLOCK hand clears it and evicts a file it finds without it.
    used: AtomicBool,
    /// A directory generation whose snapshot is known to hold `device` under this name: a
    /// request with that snapshot is served without looking the device up (which lowercases the
    /// name again and hashes it into the directory map). Set by a render and by each hit that
    /// compared the device; a newer snapshot goes through the comparison once.
    checked: AtomicU64,
}

impl Entry {
    /// The file, if it was rendered for this snapshot's device (see `checked`) and `epoch`.
    fn serves_generation(&self, generation: u64, epoch: u64) -> Option<&Arc<ConfigFile>> {
        let file = self.file.as_ref()?;
        (self.epoch == epoch && self.checked.load(Ordering::Relaxed) == generation).then_some(file)
    }

    fn serves(&self, device: &Arc<Device>, epoch: u64) -> Option<&Arc<ConfigFile>> {
        let file = self.file.as_ref()?;
        (self.epoch == epoch && std::ptr::eq(self.device.as_ptr(), Arc::as_ptr(device)))
            .then_some(file)
    }
}

/// One shard of the device file cache.
#[derive(Debug, Default)]
struct Shard {
    /// By lowercase file name.
    entries: HashMap<Arc<str>, Entry>,
    /// Keys of the entries holding a file, in CLOCK order.
    ring: Vec<Arc<str>>,
    hand: usize,
    /// What the cached files cost ([`weight_of`]).
    bytes: usize,
    /// Entry count at which records of deleted devices are dropped.
    prune_at: usize,
}

/// A rendered file before it gets its validators.
struct Rendered {
    name: String,
    body: Vec<u8>,
    owner: Option<String>,
    content_type: &'static str,
}

impl Rendered {
    /// The file, dated from `previous` (digest and date of the last version served under its name).
    fn into_file(
        self,
        previous: Option<([u8; 16], SystemTime)>,
        now: SystemTime,
    ) -> ([u8; 16], Arc<ConfigFile>) {
        let digest = digest(&self.body);
        let last_modified = match previous {
            Some((d, at)) if d == digest => at,
            // Strictly later, even within a second: a client that only sends `If-Modified-Since`
            // still sees two changes in a row.
            Some((_, at)) => now.max(at + Duration::from_secs(1)),
            None => now,
        };
        let file = ConfigFile::new(
            self.name,
            self.body.into(),
            etag_of(&digest),
            last_modified,
            self.owner,
            self.content_type,
        );
        (digest, Arc::new(file))
    }
}

impl Shard {
    /// The cached file of a device already compared in snapshot `generation`, if any.
    fn hit_checked(&self, key: &str, generation: u64, epoch: u64) -> Option<Arc<ConfigFile>> {
        let entry = self.entries.get(key)?;
        let file = entry.serves_generation(generation, epoch)?;
        mark_used(entry);
        Some(file.clone())
    }

    fn hit(
        &self,
        key: &str,
        device: &Arc<Device>,
        epoch: u64,
        generation: u64,
    ) -> Option<Arc<ConfigFile>> {
        let entry = self.entries.get(key)?;
        let file = entry.serves(device, epoch)?;
        mark_used(entry);
        // Under the read lock: `put`, the only writer of `device`, cannot run meanwhile, so the
        // entry's device is the one just compared with this snapshot's.
        if entry.checked.load(Ordering::Relaxed) != generation {
            entry.checked.store(generation, Ordering::Relaxed);
        }
        Some(file.clone())
    }

    /// Caches `rendered` (from `device`, `view`, `generation`) unless a request that rendered the
    /// same inputs or a newer snapshot came first, and returns the file to serve.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        key: &str,
        device: &Arc<Device>,
        view: &View,
        generation: u64,
        rendered: Rendered,
        now: SystemTime,
        budget: usize,
        snap: &DirectorySnapshot,
    ) -> Arc<ConfigFile> {
        let previous = match self.entries.get(key) {
            Some(e) => {
                if let Some(file) = e.serves(device, view.epoch) {
                    return file.clone();
                }
                // A request that saw a newer snapshot already cached its file: serve the newer.
                if let (Some(file), true) = (&e.file, e.generation > generation) {
                    return file.clone();
                }
                Some((e.digest, e.last_modified))
            }
            None => None,
        };
        let (digest, file) = rendered.into_file(previous, now);
        let weight = weight_of(&file);
        // A file bigger than the whole shard is served but not kept (only its validators are).
        let keep = weight <= budget;
        let key: Arc<str> = match self.entries.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            device: Weak::new(),
            epoch: 0,
            generation: 0,
            digest,
            last_modified: file.last_modified,
            file: None,
            used: AtomicBool::new(false),
            checked: AtomicU64::new(0),
        });
        let was_cached = match entry.file.take() {
            Some(old) => {
                self.bytes = self.bytes.saturating_sub(weight_of(&old));
                true
            }
            None => false,
        };
        entry.device = Arc::downgrade(device);
        entry.epoch = view.epoch;
        entry.generation = generation;
        // Snapshot `generation` holds `device`: its requests may skip the comparison.
        *entry.checked.get_mut() = generation;
        entry.digest = digest;
        entry.last_modified = file.last_modified;
        // A new file must earn its place with a hit before the hand comes round (scan resistance).
        *entry.used.get_mut() = false;
        if keep {
            entry.file = Some(file.clone());
            self.bytes += weight;
            if !was_cached {
                self.ring.push(key);
            }
        } else if was_cached {
            self.ring.retain(|k| *k != key);
        }
        if self.bytes > budget {
            self.evict(budget / 100 * EVICT_TO_PERCENT);
        }
        if self.entries.len() > self.prune_at.max(prune_floor(snap)) {
            self.prune(snap, now);
        }
        file
    }

    /// CLOCK: drops the files of entries not hit since the hand last passed them until the shard
    /// costs at most `target`.
    fn evict(&mut self, target: usize) {
        // Each file is passed at most twice: once to clear its bit, once to evict it.
        let mut steps = 2 * self.ring.len();
        while self.bytes > target && steps > 0 && !self.ring.is_empty() {
            steps -= 1;
            if self.hand >= self.ring.len() {
                self.hand = 0;
            }
            let Some(entry) = self.entries.get_mut(&self.ring[self.hand]) else {
                self.ring.swap_remove(self.hand);
                continue;
            };
            if std::mem::take(entry.used.get_mut()) {
                self.hand += 1;
                continue;
            }
            if let Some(file) = entry.file.take() {
                self.bytes = self.bytes.saturating_sub(weight_of(&file));
            }
            entry.device = Weak::new();
            self.ring.swap_remove(self.hand);
        }
    }

    /// Drops the entries of devices no longer in the directory, once their date is in the past:
    /// a device created again under the name later still gets a strictly later `Last-Modified`.
    fn prune(&mut self, snap: &DirectorySnapshot, now: SystemTime) {
        let mut freed = 0;
        self.entries.retain(|key, e| {
            let listed = key
                .strip_suffix(DEVICE_SUFFIX)
                .is_some_and(|stem| snap.device(stem).is_some());
            let keep = listed || e.last_modified >= now;
            if !keep {
                freed += e.file.as_ref().map_or(0, |f| weight_of(f));
            }
            keep
        });
        if freed > 0 {
            self.bytes = self.bytes.saturating_sub(freed);
            let entries = &self.entries;
            self.ring
                .retain(|k| entries.get(k).is_some_and(|e| e.file.is_some()));
        }
        // Amortised: the next prune waits until the shard doubles again.
        self.prune_at = 2 * self.entries.len();
    }
}

/// A file that depends on the whole snapshot (XMLDefault, the list), with what it was made from.
#[derive(Debug)]
struct Derived {
    /// A settings epoch (XMLDefault) or a directory generation (the list); both only grow.
    made_from: u64,
    digest: [u8; 16],
    file: Arc<ConfigFile>,
}

/// The files served over a [`Directory`], rendered on demand; cheap to share behind an `Arc`.
pub struct ConfigFiles {
    directory: Directory,
    view: ArcSwap<View>,
    // One view update at a time, so epochs are handed out in order (a short compare, no render).
    view_update: Mutex<()>,
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    /// Bytes each shard may hold.
    shard_budget: usize,
    xml_default: Mutex<Option<Derived>>,
    cache_list: Mutex<Option<Derived>>,
    /// Fetches by transport and result, counted by [`ConfigFiles::fetch`].
    fetches: Arc<FetchStats>,
}

impl std::fmt::Debug for ConfigFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = self.view.load();
        f.debug_struct("ConfigFiles")
            .field("generation", &view.generation)
            .field("settings_epoch", &view.epoch)
            .field("cached_bytes", &self.cached_bytes())
            .finish()
    }
}

impl ConfigFiles {
    /// The files of `directory`, with a cache of [`DEFAULT_CACHE_BYTES`]; nothing is rendered
    /// until the first request.
    pub fn new(directory: Directory) -> Self {
        ConfigFiles {
            directory,
            view: ArcSwap::default(),
            view_update: Mutex::new(()),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            shard_budget: DEFAULT_CACHE_BYTES / SHARDS,
            xml_default: Mutex::new(None),
            cache_list: Mutex::new(None),
            fetches: Arc::default(),
        }
    }

    /// Keeps at most about `bytes` of rendered device files (spread over the shards).
    pub fn with_cache_bytes(mut self, bytes: usize) -> Self {
        self.shard_budget = bytes / SHARDS;
        self
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

    /// What the cached device files cost now, in bytes (bodies, names and a fixed overhead each).
    pub fn cached_bytes(&self) -> usize {
        self.shards.iter().map(|s| read(s).bytes).sum()
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

    /// The file a client asked for by name (case-insensitive), rendered if it is not cached.
    pub fn lookup(&self, requested: &str) -> Result<Arc<ConfigFile>, LookupError> {
        let key = names::lookup_key(requested)?;
        let key = key.as_str();
        let (view, snap) = self.current();
        if key.eq_ignore_ascii_case(XML_DEFAULT) {
            return self.xml_default(&view, &snap);
        }
        if key.eq_ignore_ascii_case(CACHE_LIST) {
            return self.cache_list(&snap);
        }
        let stem = key
            .strip_suffix(DEVICE_SUFFIX)
            .ok_or(LookupError::NotFound)?;
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        // The common case: the file was served (or rendered) for this very snapshot already.
        if let Some(file) = read(shard).hit_checked(key, snap.generation, view.epoch) {
            return Ok(file);
        }
        let device = snap
            .device(stem)
            .filter(|d| names::device_kind(&d.name).is_some())
            .ok_or(LookupError::NotFound)?;
        if let Some(file) = read(shard).hit(key, device, view.epoch, snap.generation) {
            return Ok(file);
        }
        // Rendered outside any lock: two requests for the same new file may both render it, and
        // the second to finish serves the first one's file.
        let rendered = Rendered {
            name: names::device_file_name(&device.name),
            body: try_render(device, &snap)
                .map_err(render_failed)?
                .into_bytes(),
            owner: Some(device.owner.clone()),
            content_type: crate::CONTENT_TYPE,
        };
        let now = whole_seconds(SystemTime::now());
        Ok(write(shard).put(
            key,
            device,
            &view,
            snap.generation,
            rendered,
            now,
            self.shard_budget,
            &snap,
        ))
    }

    /// The current snapshot and its settings epoch.
    fn current(&self) -> (Arc<View>, Arc<DirectorySnapshot>) {
        // The view first: a snapshot loaded after it is at least as new as the one it was made
        // from, so equal generations mean this epoch is this snapshot's.
        let view = self.view.load_full();
        let snap = self.directory.snapshot();
        if view.generation == snap.generation {
            return (view, snap);
        }
        let _one = lock(&self.view_update);
        let view = self.view.load_full();
        let snap = self.directory.snapshot();
        if view.generation == snap.generation {
            return (view, snap);
        }
        // Tens of nodes at most: comparing them once per directory change is cheap.
        let settings = Settings::of(&snap);
        let epoch = if settings == view.settings {
            view.epoch
        } else {
            view.epoch + 1
        };
        let next = Arc::new(View {
            generation: snap.generation,
            epoch,
            settings,
        });
        self.view.store(next.clone());
        (next, snap)
    }

    fn xml_default(
        &self,
        view: &View,
        snap: &DirectorySnapshot,
    ) -> Result<Arc<ConfigFile>, LookupError> {
        derived(&self.xml_default, view.epoch, || {
            Ok(Rendered {
                name: XML_DEFAULT.to_string(),
                body: render_default_config(snap)?.into_bytes(),
                owner: None,
                content_type: crate::CONTENT_TYPE,
            })
        })
    }

    /// `ConfigFileCacheList.txt`: the names of the files served, from the device names alone.
    fn cache_list(&self, snap: &DirectorySnapshot) -> Result<Arc<ConfigFile>, LookupError> {
        derived(&self.cache_list, snap.generation, || {
            let mut listed: Vec<String> = snap
                .all_devices()
                .filter(|d| names::device_kind(&d.name).is_some())
                .map(|d| names::device_file_name(&d.name))
                .collect();
            listed.push(XML_DEFAULT.to_string());
            listed.sort_by_cached_key(|n| n.to_ascii_lowercase());
            let mut body = Vec::with_capacity(listed.iter().map(|n| n.len() + 1).sum());
            for name in &listed {
                body.extend_from_slice(name.as_bytes());
                body.push(b'\n');
            }
            Ok(Rendered {
                name: CACHE_LIST.to_string(),
                body,
                owner: None,
                content_type: "text/plain",
            })
        })
    }
}

/// The file in `slot` if it was made from `made_from` or later, else a new one from `render`
/// (one file, rendered under its own lock: requests for it wait rather than render it twice).
fn derived(
    slot: &Mutex<Option<Derived>>,
    made_from: u64,
    render: impl FnOnce() -> Result<Rendered, RenderError>,
) -> Result<Arc<ConfigFile>, LookupError> {
    let mut slot = lock(slot);
    if let Some(d) = slot.as_ref().filter(|d| d.made_from >= made_from) {
        return Ok(d.file.clone());
    }
    let rendered = render().map_err(render_failed)?;
    let previous = slot.as_ref().map(|d| (d.digest, d.file.last_modified));
    let (digest, file) = rendered.into_file(previous, whole_seconds(SystemTime::now()));
    *slot = Some(Derived {
        made_from,
        digest,
        file: file.clone(),
    });
    Ok(file)
}

fn render_failed(e: RenderError) -> LookupError {
    tracing::error!(error = %e, "cannot render a device config file");
    LookupError::Render
}

/// Records of a shard kept without pruning: twice its share of the devices, plus some slack.
fn prune_floor(snap: &DirectorySnapshot) -> usize {
    2 * snap.device_count() / SHARDS + PRUNE_SLACK
}

/// Marks a hit for CLOCK.
fn mark_used(entry: &Entry) {
    // A load first: a store on every hit would bounce the cache line between cores.
    if !entry.used.load(Ordering::Relaxed) {
        entry.used.store(true, Ordering::Relaxed);
    }
}

fn weight_of(file: &ConfigFile) -> usize {
    FILE_OVERHEAD
        + file.body.len()
        + file.name.len()
        + file.etag.len()
        + file.owner.as_ref().map_or(0, String::len)
}

// A poisoned lock only means a request panicked while holding it. The worst it can leave behind is
// a miscounted cache size; serving on beats refusing every later request.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read(s: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    s.read().unwrap_or_else(|e| e.into_inner())
}

fn write(s: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    s.write().unwrap_or_else(|e| e.into_inner())
}

/// The first 16 bytes of the body's SHA-256: what the ETag shows.
fn digest(body: &[u8]) -> [u8; 16] {
    let mut d = [0; 16];
    d.copy_from_slice(&Sha256::digest(body)[..16]);
    d
}

fn etag_of(digest: &[u8; 16]) -> String {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

#[cfg(test)]
fn etag(body: &[u8]) -> String {
    etag_of(&digest(body))
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{fixture, node, parse, Fixture};
    use sipreg_store::{Change, Line, ProfileTransport, SecurityProfile, Store};

    fn device(name: &str, dns: &[&str], profile: &str) -> Device {
        Device {
            name: name.into(),
            owner: "jdoe".into(),
            lines: dns
                .iter()
                .map(|dn| Line {
                    dn: (*dn).into(),
                    display_name: None,
                })
                .collect(),
            oauth: true,
            updated_at: 2,
            model: String::new(),
            profile: profile.into(),
        }
    }

    async fn apply(f: &Fixture, change: Change) {
        f.directory
            .apply(f.store.as_ref(), &[change])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn files_are_rendered_once_and_looked_up_case_insensitively() {
        let f = fixture(true).await;
        let files = ConfigFiles::new(f.directory.clone());
        let csf = files.lookup("csfJDOE.CNF.xml").unwrap();
        assert_eq!(csf.name, "CSFjdoe.cnf.xml");
        assert_eq!(csf.owner.as_deref(), Some("jdoe"));
        let snap = f.directory.snapshot();
        assert_eq!(
            &*csf.body,
            crate::render_device_config(snap.device("CSFjdoe").unwrap(), &snap).as_bytes()
        );
        assert!(
            Arc::ptr_eq(&csf, &files.lookup("/CSFjdoe.cnf.xml").unwrap()),
            "nothing changed: the cached file, not a new render"
        );
        assert!(Arc::ptr_eq(
            &files.lookup("XMLDefault.cnf.xml").unwrap(),
            &files.lookup("xmldefault.CNF.XML").unwrap()
        ));
        assert!(files.cached_bytes() > csf.body.len());

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
        assert_eq!(files.lookup("CSFjdoe"), Err(LookupError::NotFound));
    }

    #[tokio::test]
    async fn the_cache_list_names_every_served_file_and_odd_device_names_get_none() {
        let f = fixture(false).await;
        f.store
            .create_device(&Device {
                name: "deskphone7".into(),
                oauth: false,
                ..device("deskphone7", &["1099"], "")
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
        assert_eq!(
            files.lookup("deskphone7"),
            Err(LookupError::NotFound),
            "a device name alone is no file"
        );

        // A new device is listed on the next fetch; the list keeps its date while it is the same.
        f.store
            .create_device(&device("TCTnew", &["1098"], ""))
            .await
            .unwrap();
        apply(&f, Change::Device("TCTnew".into())).await;
        let list2 = files.lookup("ConfigFileCacheList.txt").unwrap();
        assert_eq!(
            std::str::from_utf8(&list2.body).unwrap(),
            "CSFjdoe.cnf.xml\nSEP001122334455.cnf.xml\nTCTnew.cnf.xml\nXMLDefault.cnf.xml\n"
        );
        assert!(list2.last_modified > list.last_modified);
        apply(&f, Change::Device("CSFjdoe".into())).await;
        let list3 = files.lookup("ConfigFileCacheList.txt").unwrap();
        assert_eq!(list3.etag, list2.etag);
        assert_eq!(list3.last_modified, list2.last_modified);
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
    async fn settings_changes_render_again_and_only_changed_files_get_new_tags() {
        let f = fixture(true).await;
        let files = ConfigFiles::new(f.directory.clone());
        let csf = files.lookup("CSFjdoe.cnf.xml").unwrap();
        let sep = files.lookup("SEP001122334455.cnf.xml").unwrap();
        let default = files.lookup("XMLDefault.cnf.xml").unwrap();

        // The SEP device opts out of OAuth, so turning the cluster off changes only the CSF file
        // (and XMLDefault).
        f.store.set_oauth_mode(false).await.unwrap();
        apply(&f, Change::Cluster).await;
        let csf2 = files.lookup("CSFjdoe.cnf.xml").unwrap();
        let sep2 = files.lookup("SEP001122334455.cnf.xml").unwrap();
        assert_eq!(
            parse(std::str::from_utf8(&csf2.body).unwrap()).at(&["sipOAuthMode"]),
            "0"
        );
        assert_ne!(csf2.etag, csf.etag);
        assert!(
            csf2.last_modified > csf.last_modified,
            "strictly later, even within a second"
        );
        assert_eq!(sep2.etag, sep.etag);
        assert_eq!(sep2.last_modified, sep.last_modified);
        let default2 = files.lookup("XMLDefault.cnf.xml").unwrap();
        assert_ne!(default2.etag, default.etag);
        assert!(default2.last_modified > default.last_modified);

        // A node's ports change every file that lists the node.
        f.store
            .upsert_node(&node("b-sub", "10.0.0.2", 7060))
            .await
            .unwrap();
        apply(&f, Change::Node("b-sub".into())).await;
        let sep3 = files.lookup("sep001122334455.cnf.xml").unwrap();
        assert_ne!(sep3.etag, sep.etag);
        assert!(std::str::from_utf8(&sep3.body)
            .unwrap()
            .contains("<sipPort>7060</sipPort>"));
        assert_ne!(
            files.lookup("xmldefault.cnf.xml").unwrap().etag,
            default2.etag
        );

        // A full reload hands out new `Arc<Device>`s: rendered again, same bytes, same dates.
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let sep4 = files.lookup("sep001122334455.cnf.xml").unwrap();
        assert!(!Arc::ptr_eq(&sep4, &sep3));
        assert_eq!(
            (&sep4.etag, sep4.last_modified),
            (&sep3.etag, sep3.last_modified)
        );
    }

    #[tokio::test]
    async fn a_device_change_renders_that_device_only() {
        let f = fixture(true).await;
        let files = ConfigFiles::new(f.directory.clone());
        let csf = files.lookup("CSFjdoe.cnf.xml").unwrap();
        let sep = files.lookup("SEP001122334455.cnf.xml").unwrap();

        let mut changed = f
            .directory
            .snapshot()
            .device("SEP001122334455")
            .unwrap()
            .as_ref()
            .clone();
        changed.lines.push(Line {
            dn: "1013".into(),
            display_name: Some("Second".into()),
        });
        f.store.update_device(&changed).await.unwrap();
        apply(&f, Change::Device("SEP001122334455".into())).await;

        let sep2 = files.lookup("SEP001122334455.cnf.xml").unwrap();
        assert_ne!(sep2.etag, sep.etag);
        assert!(sep2.last_modified > sep.last_modified);
        let xml = std::str::from_utf8(&sep2.body).unwrap();
        assert_eq!(
            parse(xml)
                .one("sipProfile")
                .one("sipLines")
                .all("line")
                .count(),
            2
        );
        assert!(xml.contains("Second"), "{xml}");
        assert!(
            Arc::ptr_eq(&csf, &files.lookup("CSFjdoe.cnf.xml").unwrap()),
            "the untouched device keeps its cached file"
        );

        // Deleted: gone at once.
        f.store.delete_device("SEP001122334455").await.unwrap();
        apply(&f, Change::Device("SEP001122334455".into())).await;
        assert_eq!(
            files.lookup("SEP001122334455.cnf.xml"),
            Err(LookupError::NotFound)
        );
    }

    #[tokio::test]
    async fn hits_checked_in_one_snapshot_are_checked_again_in_the_next() {
        let f = fixture(true).await;
        let files = ConfigFiles::new(f.directory.clone());
        let sep = files.lookup("SEP001122334455.cnf.xml").unwrap();
        // Hits in the snapshot it was rendered in skip the device lookup: the same file.
        for name in ["SEP001122334455.cnf.xml", "sep001122334455.CNF.XML"] {
            assert!(Arc::ptr_eq(&sep, &files.lookup(name).unwrap()));
        }
        let csf = files.lookup("CSFjdoe.cnf.xml").unwrap();

        // Another device changes: the untouched file is compared once, then served as before.
        let mut changed = f
            .directory
            .snapshot()
            .device("CSFjdoe")
            .unwrap()
            .as_ref()
            .clone();
        changed.lines[0].display_name = Some("Changed".into());
        f.store.update_device(&changed).await.unwrap();
        apply(&f, Change::Device("CSFjdoe".into())).await;
        for _ in 0..2 {
            assert!(Arc::ptr_eq(
                &sep,
                &files.lookup("SEP001122334455.cnf.xml").unwrap()
            ));
            let csf2 = files.lookup("CSFjdoe.cnf.xml").unwrap();
            assert_ne!(csf2.etag, csf.etag, "a file hit often is still re-checked");
            assert!(std::str::from_utf8(&csf2.body).unwrap().contains("Changed"));
        }

        // Deleted after hits in two snapshots: gone at once, and again with the next request.
        f.store.delete_device("SEP001122334455").await.unwrap();
        apply(&f, Change::Device("SEP001122334455".into())).await;
        for _ in 0..2 {
            assert_eq!(
                files.lookup("SEP001122334455.cnf.xml"),
                Err(LookupError::NotFound)
            );
        }
    }

    #[tokio::test]
    async fn the_http_body_and_header_values_are_the_files_own() {
        let f = fixture(false).await;
        let files = ConfigFiles::new(f.directory.clone());
        let file = files.lookup("CSFjdoe.cnf.xml").unwrap();
        assert_eq!(file.http_body.as_ref(), file.body.as_ref());
        assert_eq!(
            file.http_body.as_ptr(),
            file.body.as_ptr(),
            "shared, not copied"
        );
        assert_eq!(file.etag_header.as_ref().unwrap(), file.etag.as_str());
        assert_eq!(
            file.last_modified_header.as_ref().unwrap(),
            httpdate::fmt_http_date(file.last_modified).as_str()
        );
    }

    #[tokio::test]
    async fn a_security_profile_change_reaches_its_devices_files() {
        let f = fixture(true).await;
        let mut profile = SecurityProfile {
            name: "jabber-oauth".into(),
            description: String::new(),
            oauth: true,
            digest: false,
            transport: ProfileTransport::Tls,
        };
        f.store.create_profile(&profile).await.unwrap();
        f.store
            .create_device(&device("BOTjdoe", &["1020"], "jabber-oauth"))
            .await
            .unwrap();
        apply(&f, Change::Device("BOTjdoe".into())).await;
        let files = ConfigFiles::new(f.directory.clone());
        let mode = |file: &ConfigFile| {
            parse(std::str::from_utf8(&file.body).unwrap())
                .at(&["sipOAuthMode"])
                .to_string()
        };
        let bot = files.lookup("BOTjdoe.cnf.xml").unwrap();
        assert_eq!(mode(&bot), "1");
        let csf = files.lookup("CSFjdoe.cnf.xml").unwrap();

        profile.oauth = false;
        f.store.update_profile(&profile).await.unwrap();
        apply(&f, Change::Profile("jabber-oauth".into())).await;
        let bot2 = files.lookup("BOTjdoe.cnf.xml").unwrap();
        assert_eq!(mode(&bot2), "0");
        assert!(bot2.last_modified > bot.last_modified);
        assert!(Arc::ptr_eq(&csf, &files.lookup("CSFjdoe.cnf.xml").unwrap()));
    }

    #[tokio::test]
    async fn the_cache_is_bounded_and_an_evicted_file_keeps_its_validators() {
        let f = fixture(true).await;
        for i in 0..64 {
            f.store
                .create_device(&device(&format!("TABdev{i}"), &[&format!("2{i:03}")], ""))
                .await
                .unwrap();
        }
        f.directory.reload(f.store.as_ref()).await.unwrap();
        // Room for about two files per shard: most of the 64 are evicted.
        let budget = SHARDS * 5_000;
        let files = ConfigFiles::new(f.directory.clone()).with_cache_bytes(budget);
        let first: Vec<_> = (0..64)
            .map(|i| files.lookup(&format!("TABdev{i}.cnf.xml")).unwrap())
            .collect();
        assert!(files.cached_bytes() <= budget, "{}", files.cached_bytes());
        assert!(files.cached_bytes() > 0);
        let again: Vec<_> = (0..64)
            .map(|i| files.lookup(&format!("tabDEV{i}.cnf.xml")).unwrap())
            .collect();
        assert!(
            first.iter().zip(&again).any(|(a, b)| !Arc::ptr_eq(a, b)),
            "some files were evicted and rendered again"
        );
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(a.body, b.body);
            assert_eq!((&a.etag, a.last_modified), (&b.etag, b.last_modified));
        }
        assert!(files.cached_bytes() <= budget);

        // Changed while evicted: new bytes and a strictly later date on the next fetch.
        let mut changed = device("TABdev0", &["2000"], "");
        changed.lines[0].display_name = Some("Renamed".into());
        f.store.update_device(&changed).await.unwrap();
        apply(&f, Change::Device("TABdev0".into())).await;
        for i in 1..64 {
            files.lookup(&format!("TABdev{i}.cnf.xml")).unwrap();
        }
        let changed = files.lookup("TABdev0.cnf.xml").unwrap();
        assert!(std::str::from_utf8(&changed.body)
            .unwrap()
            .contains("Renamed"));
        assert!(changed.last_modified > first[0].last_modified);

        // A file bigger than a whole shard is served but not kept.
        let tiny = ConfigFiles::new(f.directory.clone()).with_cache_bytes(SHARDS * 100);
        let a = tiny.lookup("CSFjdoe.cnf.xml").unwrap();
        assert_eq!(tiny.cached_bytes(), 0);
        let b = tiny.lookup("CSFjdoe.cnf.xml").unwrap();
        assert_eq!((&a.etag, a.last_modified), (&b.etag, b.last_modified));
    }

    #[tokio::test]
    async fn concurrent_first_fetches_serve_one_version() {
        let f = fixture(true).await;
        let files = Arc::new(ConfigFiles::new(f.directory.clone()));
        let got: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| files.lookup("CSFjdoe.cnf.xml").unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for g in &got {
            assert_eq!(
                (&g.etag, g.last_modified),
                (&got[0].etag, got[0].last_modified)
            );
        }
        assert!(Arc::ptr_eq(
            &files.lookup("CSFjdoe.cnf.xml").unwrap(),
            &files.lookup("CSFjdoe.cnf.xml").unwrap()
        ));
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
