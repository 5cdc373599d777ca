//! Digest-based configuration sync (Magma's pattern). The router serves each placed model's
//! folder by content hash; a worker's assignment has a deterministic serialization with a
//! SHA-256 digest and one leaf digest per model. Heartbeats carry only the worker's applied
//! digest and the router's answer only the desired one; when they differ the worker fetches the
//! assignment (leaf digests), then only the changed models' manifests and the files its cache
//! lacks, each verified against its hash before the model loads.
//!
//! Canonical forms (byte-identical in every process and release):
//! - a file: `PATH \0 SHA256-HEX \0 SIZE \n`, paths relative with `/`, sorted bytewise;
//! - a model's leaf: SHA-256 of `flotilla-model-v1\n NAME \n` + its files;
//! - an assignment: SHA-256 of `flotilla-assignment-v1\n` + `MODEL \0 LEAF \n` sorted by model.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One file of a model folder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the model folder, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// A model's files and leaf digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub model: String,
    pub leaf: String,
    pub files: Vec<FileEntry>,
}

/// What a worker should serve from the router: model → leaf digest, and their digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub digest: String,
    pub models: BTreeMap<String, String>,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The leaf digest of a model's files (sorted here; the caller's order does not matter).
pub fn leaf_digest(model: &str, files: &[FileEntry]) -> String {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut h = Sha256::new();
    h.update(b"flotilla-model-v1\n");
    h.update(model.as_bytes());
    h.update(b"\n");
    for f in sorted {
        h.update(f.path.as_bytes());
        h.update(b"\0");
        h.update(f.sha256.as_bytes());
        h.update(b"\0");
        h.update(f.size.to_string().as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

/// The digest of an assignment (model → leaf).
pub fn assignment_digest(models: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(b"flotilla-assignment-v1\n");
    for (model, leaf) in models {
        h.update(model.as_bytes());
        h.update(b"\0");
        h.update(leaf.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())
}

/// Why a model folder cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("fetching {0}: {1}")]
    Fetch(String, String),
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> SyncError {
    move |e| SyncError::Io(what.to_string(), e)
}

/// Files of a model folder (hidden files and links skipped), with their hashes; `known`
/// reuses hashes of files whose size and modification time did not change.
pub fn scan(
    model: &str,
    dir: &Path,
    known: &mut BTreeMap<PathBuf, (u64, std::time::SystemTime, String)>,
) -> Result<Manifest, SyncError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SyncError> {
        for entry in std::fs::read_dir(dir).map_err(io(dir.display()))? {
            let entry = entry.map_err(io(dir.display()))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(io(entry.path().display()))?;
            if kind.is_dir() {
                walk(&entry.path(), out)?;
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
        Ok(())
    }
    if !dir.join("config.pbtxt").is_file() && !std::fs::read_dir(dir).map_err(io(dir.display()))?.any(|_| true) {
        return Err(SyncError::Invalid(format!("model '{model}': {} is empty", dir.display())));
    }
    let mut paths = Vec::new();
    walk(dir, &mut paths)?;
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(&p).map_err(io(p.display()))?;
        let mtime = meta.modified().map_err(io(p.display()))?;
        let sha = match known.get(&p) {
            Some((size, t, sha)) if *size == meta.len() && *t == mtime => sha.clone(),
            _ => {
                let sha = sha256_hex(&std::fs::read(&p).map_err(io(p.display()))?);
                known.insert(p.clone(), (meta.len(), mtime, sha.clone()));
                sha
            }
        };
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        let path = rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect::<Vec<_>>().join("/");
        files.push(FileEntry { path, sha256: sha, size: meta.len() });
    }
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(Manifest { model: model.to_string(), leaf: leaf_digest(model, &files), files })
}

/// Whether a manifest path is safe to write under a model folder (relative, no `..`).
pub fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with('.'))
}

// === the worker's side ===

/// Where the worker keeps its blob cache, staging folders and what it applied (hidden folders
/// in its model repository, which the repository does not list as models).
const SYNC_DIR: &str = ".flotilla-sync";
/// A full resync (assignment fetched and every applied folder checked) this often, as a safety
/// net beside the digests.
pub const FULL_RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

/// The worker's side of the sync: fetches what its assignment lists into its model repository
/// and loads it.
pub struct Syncer {
    root: PathBuf,
    worker: String,
    service: std::sync::Arc<flotilla_core::Service>,
    http: reqwest::Client,
    applied: parking_lot::Mutex<BTreeMap<String, String>>,
    desired: tokio::sync::watch::Sender<Option<(String, String)>>,
    /// Bytes fetched from routers (assignments, manifests, blobs).
    pub fetched_bytes: std::sync::atomic::AtomicU64,
}

impl Syncer {
    /// A syncer over the service's repository, with what a previous run applied (folders that
    /// are gone are forgotten, so they are fetched again).
    pub fn new(
        worker: &str,
        service: std::sync::Arc<flotilla_core::Service>,
        http: reqwest::Client,
    ) -> std::sync::Arc<Self> {
        let root = service.repository.root().to_path_buf();
        let saved: BTreeMap<String, String> = std::fs::read(root.join(SYNC_DIR).join("applied.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let applied = saved.into_iter().filter(|(m, _)| root.join(m).join("config.pbtxt").is_file()).collect();
        std::sync::Arc::new(Syncer {
            root,
            worker: worker.to_string(),
            service,
            http,
            applied: parking_lot::Mutex::new(applied),
            desired: tokio::sync::watch::channel(None).0,
            fetched_bytes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The digest of what this worker applied (what its heartbeats carry).
    pub fn applied_digest(&self) -> String {
        assignment_digest(&self.applied.lock())
    }

    /// A router's answer to a heartbeat named the desired digest.
    pub fn want(&self, router: &str, digest: &str) {
        let new = Some((router.to_string(), digest.to_string()));
        self.desired.send_if_modified(|d| {
            if *d != new {
                *d = new;
                true
            } else {
                false
            }
        });
    }

    /// Loads the models a previous run applied, then syncs whenever the desired digest differs
    /// from the applied one (and fully every [`FULL_RESYNC`]), until `stop`.
    pub fn spawn(
        self: &std::sync::Arc<Self>,
        on_change: impl Fn() + Send + Sync + 'static,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let kept: Vec<String> = me.applied.lock().keys().cloned().collect();
            for model in kept {
                if let Err(e) = me.load(&model).await {
                    tracing::warn!(model, error = %e, "a model synced before the restart did not load; fetching it again");
                    me.applied.lock().remove(&model);
                }
            }
            on_change();
            let mut desired = me.desired.subscribe();
            let mut last_full = tokio::time::Instant::now();
            loop {
                let want = desired.borrow_and_update().clone();
                let full = last_full.elapsed() >= FULL_RESYNC;
                if let Some((router, digest)) = want {
                    if full || digest != me.applied_digest() {
                        match me.sync(&router, full).await {
                            Ok(n) => {
                                if n > 0 || full {
                                    tracing::info!(models = n, digest = %me.applied_digest(), "synced the assignment");
                                }
                                on_change();
                                last_full = tokio::time::Instant::now();
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "sync failed; retrying in a second");
                                tokio::select! {
                                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                                    _ = stop.wait_for(|s| *s) => return,
                                }
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = desired.changed() => {}
                    _ = tokio::time::sleep(FULL_RESYNC.saturating_sub(last_full.elapsed())) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    }

    async fn get(&self, url: &str) -> Result<bytes::Bytes, SyncError> {
        let resp = self.http.get(url).send().await.map_err(|e| SyncError::Fetch(url.into(), e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| SyncError::Fetch(url.into(), e.to_string()))?;
        self.fetched_bytes.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if !status.is_success() {
            return Err(SyncError::Fetch(url.into(), format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        Ok(body)
    }

    /// One sync against `router`: the models whose leaf changed (all, when `full`) are fetched
    /// and loaded, the ones no longer assigned unloaded. Returns how many models moved.
    pub async fn sync(&self, router: &str, full: bool) -> Result<usize, SyncError> {
        let url = format!("{router}/v2/fleet/workers/{}/assignment", self.worker);
        let assignment: Assignment = serde_json::from_slice(&self.get(&url).await?)
            .map_err(|e| SyncError::Invalid(format!("assignment from {router}: {e}")))?;
        let applied = self.applied.lock().clone();
        let mut moved = 0;
        let mut failures = Vec::new();
        for (model, leaf) in &assignment.models {
            let have = applied.get(model) == Some(leaf) && self.root.join(model).join("config.pbtxt").is_file();
            if have && !full {
                continue;
            }
            match self.fetch_model(router, model, leaf, have).await {
                Ok(true) => {
                    moved += 1;
                    self.applied.lock().insert(model.clone(), leaf.clone());
                }
                Ok(false) => {
                    self.applied.lock().insert(model.clone(), leaf.clone());
                }
                Err(e) => failures.push(format!("{model}: {e}")),
            }
        }
        for model in applied.keys().filter(|m| !assignment.models.contains_key(*m)) {
            moved += 1;
            if self.service.repository.mode() == flotilla_core::repository::ControlMode::Explicit {
                let _ = self.service.unload_model(model).await;
            }
            let _ = std::fs::remove_dir_all(self.root.join(model));
            self.applied.lock().remove(model);
        }
        self.save();
        if failures.is_empty() {
            Ok(moved)
        } else {
            Err(SyncError::Invalid(failures.join("; ")))
        }
    }

    /// Brings one model folder to `leaf`: blobs the cache lacks are fetched and verified, the
    /// folder is staged and swapped in, and the model (re)loaded. Returns whether it moved
    /// (false: a full resync found it as it should be).
    async fn fetch_model(&self, router: &str, model: &str, leaf: &str, have: bool) -> Result<bool, SyncError> {
        // The model's folder is a name in the repository, whatever the router sends.
        if !safe_path(model) || model.contains('/') {
            return Err(SyncError::Invalid(format!("model name {model:?} is not a folder name of the repository")));
        }
        let url = format!("{router}/v2/fleet/artifacts/{model}");
        let manifest: Manifest = serde_json::from_slice(&self.get(&url).await?)
            .map_err(|e| SyncError::Invalid(format!("manifest of '{model}': {e}")))?;
        if manifest.leaf != leaf || leaf_digest(model, &manifest.files) != manifest.leaf {
            return Err(SyncError::Invalid(format!(
                "the manifest of '{model}' does not match its digest (the artifact changed meanwhile)"
            )));
        }
        if have {
            // Full resync: the folder on disk must still hash to the leaf.
            let on_disk = scan(model, &self.root.join(model), &mut BTreeMap::new())?;
            if on_disk.leaf == leaf {
                return Ok(false);
            }
        }
        let sync_dir = self.root.join(SYNC_DIR);
        let blobs = sync_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io(blobs.display()))?;
        for f in &manifest.files {
            if !safe_path(&f.path) || f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SyncError::Invalid(format!("model '{model}': unsafe manifest entry {:?}", f.path)));
            }
            let cached = blobs.join(&f.sha256);
            if cached.is_file() {
                continue;
            }
            let body = self.get(&format!("{router}/v2/fleet/blobs/{}", f.sha256)).await?;
            if sha256_hex(&body) != f.sha256 || body.len() as u64 != f.size {
                return Err(SyncError::Invalid(format!("model '{model}': {} does not match its hash", f.path)));
            }
            let tmp = blobs.join(format!("{}.part", f.sha256));
            std::fs::write(&tmp, &body).map_err(io(tmp.display()))?;
            std::fs::rename(&tmp, &cached).map_err(io(cached.display()))?;
        }
        let stage = sync_dir.join(format!("stage-{model}"));
        let _ = std::fs::remove_dir_all(&stage);
        for f in &manifest.files {
            let to = stage.join(&f.path);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent.display()))?;
            }
            let from = blobs.join(&f.sha256);
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(io(to.display()))?;
            }
        }
        let target = self.root.join(model);
        let old = sync_dir.join(format!("old-{model}"));
        let _ = std::fs::remove_dir_all(&old);
        if target.exists() {
            std::fs::rename(&target, &old).map_err(io(target.display()))?;
        }
        std::fs::rename(&stage, &target).map_err(io(target.display()))?;
        let _ = std::fs::remove_dir_all(&old);
        self.load(model).await?;
        Ok(true)
    }

    async fn load(&self, model: &str) -> Result<(), SyncError> {
        use flotilla_core::repository::ControlMode;
        match self.service.repository.mode() {
            ControlMode::Explicit => self
                .service
                .load_model(model, Default::default())
                .await
                .map_err(|e| SyncError::Invalid(format!("loading '{model}': {}", e.message))),
            // Poll mode picks the folder up on its next scan.
            ControlMode::Poll => Ok(()),
            ControlMode::None => Err(SyncError::Invalid(format!(
                "model '{model}' was synced but --model-control-mode none cannot load it; use explicit or poll"
            ))),
        }
    }

    fn save(&self) {
        let dir = self.root.join(SYNC_DIR);
        let text = serde_json::to_vec(&*self.applied.lock()).unwrap_or_default();
        if std::fs::create_dir_all(&dir).is_ok() {
            let tmp = dir.join("applied.json.part");
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, dir.join("applied.json"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(path: &str, body: &[u8]) -> FileEntry {
        FileEntry { path: path.into(), sha256: sha256_hex(body), size: body.len() as u64 }
    }

    #[test]
    fn digests_are_pinned() {
        let files = vec![entry("config.pbtxt", b"name: \"m\"\n"), entry("1/model.onnx", b"\x08\x07")];
        // Pinned: a change here changes every fleet's digests (bump the `-v1` tags instead).
        assert_eq!(leaf_digest("m", &files), leaf_digest("m", &[files[1].clone(), files[0].clone()]));
        let leaf = leaf_digest("m", &files);
        // The same bytes an independent implementation (Python's hashlib) computes.
        assert_eq!(leaf, "c3b084a073d6664ec6dbbfc8273ec5f2823a112bb57188a22926ce350173fa62");
        let a = assignment_digest(&BTreeMap::from([("m".to_string(), leaf.clone())]));
        assert_eq!(a, "c9abce576c6bac5815dd5a03e49ab6e9db0643c37bc198d7bb2cfc48c3e47a6e");
        assert_eq!(assignment_digest(&BTreeMap::new()), sha256_hex(b"flotilla-assignment-v1\n"));
        assert!(safe_path("1/model.onnx") && safe_path("config.pbtxt"));
        for bad in ["", "/etc/passwd", "../x", "1/../../x", "a//b", ".hidden", "a\\b"] {
            assert!(!safe_path(bad), "{bad}");
        }
    }

    #[test]
    fn scanning_a_folder_twice_and_in_a_copy_gives_the_same_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        std::fs::create_dir_all(m.join("1")).unwrap();
        std::fs::write(m.join("config.pbtxt"), "backend: \"x\"").unwrap();
        std::fs::write(m.join("1/model.bin"), [1u8, 2, 3]).unwrap();
        std::fs::write(m.join(".hidden"), "skipped").unwrap();
        let a = scan("m", &m, &mut BTreeMap::new()).unwrap();
        assert_eq!(a.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), vec!["1/model.bin", "config.pbtxt"]);
        let copy = dir.path().join("copy");
        std::fs::create_dir_all(copy.join("1")).unwrap();
        std::fs::write(copy.join("1/model.bin"), [1u8, 2, 3]).unwrap();
        std::fs::write(copy.join("config.pbtxt"), "backend: \"x\"").unwrap();
        assert_eq!(scan("m", &copy, &mut BTreeMap::new()).unwrap().leaf, a.leaf);
        std::fs::write(copy.join("1/model.bin"), [1u8, 2, 4]).unwrap();
        assert_ne!(scan("m", &copy, &mut BTreeMap::new()).unwrap().leaf, a.leaf);
    }

    proptest! {
        /// The digest of the same state is the same whatever order it was built in.
        #[test]
        fn digest_ignores_order(files in proptest::collection::btree_map("[a-z0-9/._]{1,12}", proptest::collection::vec(any::<u8>(), 0..16), 0..8),
                                models in proptest::collection::btree_map("[a-z]{1,6}", "[0-9a-f]{64}", 0..8),
                                seed in any::<u64>()) {
            let entries: Vec<FileEntry> = files.iter().map(|(p, b)| entry(p, b)).collect();
            let mut shuffled = entries.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            prop_assert_eq!(leaf_digest("m", &entries), leaf_digest("m", &shuffled));
            let mut pairs: Vec<(String, String)> = models.clone().into_iter().collect();
            fastrand::Rng::with_seed(seed).shuffle(&mut pairs);
            let rebuilt: BTreeMap<String, String> = pairs.into_iter().collect();
            prop_assert_eq!(assignment_digest(&models), assignment_digest(&rebuilt));
        }
    }
}
