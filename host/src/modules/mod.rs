//! The content-addressed module store.
//!
//! A module is known by the sha256 of its `.wasm` bytes. The store compiles
//! each module once, keeps the compiled artifact in the host's data dir
//! (sealed, keyed by source hash and engine compatibility hash), and keeps
//! the pre-instantiated form in memory so a run only pays for instantiation.

pub mod artifact;
mod compiles;
mod world;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::Component;

pub use compiles::{CompileLimits, default_concurrency as default_compile_concurrency};
pub use world::{ACCEPTED_WORLDS, Prepared, Preparer, World, export_names};

use crate::engine::Engine;
use crate::error::ErrorKind;
use crate::slots::SlotsBusy;
use artifact::SealKey;
use compiles::Compiles;

/// Why a module could not be registered or loaded.
#[derive(Debug, Error)]
pub enum ModuleError {
    /// The bytes are not a valid WebAssembly component.
    #[error("malformed WebAssembly: {reason}")]
    Malformed {
        /// The parser's or validator's reason.
        reason: String,
    },
    /// A core module where a component was expected.
    #[error(
        "this is a core WebAssembly module, not a component: build it for `wasm32-wasip2` \
         (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component imports something the host does not provide.
    #[error("the component imports something the host does not provide: {detail}")]
    UnknownImport {
        /// wasmtime's description naming the import.
        detail: String,
    },
    /// The component's exports match no world chassis runs.
    #[error(
        "the component does not implement a world chassis runs: {detail}; exports found: [{}]; accepted: {}",
        exports.join(", "),
        ACCEPTED_WORLDS
    )]
    WrongWorld {
        /// Every export name found.
        exports: Vec<String>,
        /// What exactly did not match.
        detail: String,
    },
    /// A compiled artifact failed verification and is not loaded.
    #[error("refusing compiled artifact {}: {reason}", path.display())]
    ArtifactRejected {
        /// The file.
        path: PathBuf,
        /// Why it failed verification.
        reason: String,
    },
    /// The module is larger than the host accepts.
    #[error("module of {size} bytes is over the limit of {limit} bytes (runtime.max_module_mb)")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Reading or writing the data dir failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the store was doing.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The data dir's sealing key is missing, unreadable or unsafe.
    #[error("artifact sealing key: {0}")]
    Key(String),
    /// wasmtime could not serialize the compiled module.
    #[error("serializing the compiled module: {0}")]
    Serialize(String),
    /// A module id that is not 64 lower-case hex digits (a sha256).
    #[error("{0}")]
    InvalidId(#[from] InvalidModuleId),
    /// Every compile slot stayed busy for the queue timeout.
    #[error("not compiling now: {0}")]
    Busy(#[from] SlotsBusy),
    /// The compile thread died (a bug in the compiler).
    #[error("the compile was lost: {0}")]
    Lost(String),
}

/// A module id that is not a sha256 in lower-case hex. Ids name
/// directories in the data dir and keys in the claim store, so anything
/// else (empty, `..`, `/`, upper case) is refused before it is used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("module id `{shown}` is not a sha256: ids are 64 lower-case hex digits")]
pub struct InvalidModuleId {
    /// The id as given, clipped to 80 characters and with control
    /// characters escaped, so it is safe to log.
    pub shown: String,
}

/// Checks that `id` is a module id: exactly 64 lower-case hex digits.
pub fn check_id(id: &str) -> Result<&str, InvalidModuleId> {
    if id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(id)
    } else {
        let shown: String = id.chars().take(80).flat_map(char::escape_debug).collect();
        Err(InvalidModuleId { shown })
    }
}

impl ModuleError {
    /// The stable kind: `invalid-module` for anything about the bytes,
    /// `internal` for the host's own storage.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ModuleError::Io { .. }
            | ModuleError::Key(_)
            | ModuleError::Serialize(_)
            | ModuleError::Lost(_) => ErrorKind::Internal,
            ModuleError::Busy(_) => ErrorKind::Overloaded,
            ModuleError::InvalidId(_) => ErrorKind::InvalidRequest,
            _ => ErrorKind::InvalidModule,
        }
    }
}

/// A registered module, ready to run.
#[derive(Debug)]
pub struct Module {
    id: String,
    /// Unique to this `Module` for the life of the process (see
    /// [`Module::serial`]).
    serial: u64,
    world: World,
    size_bytes: u64,
    ignored_exports: Vec<String>,
    prepared: Prepared,
}

impl Module {
    /// The sha256 of the source `.wasm`, lower-case hex.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A number no other `Module` of this process has had or will have,
    /// even one of the same id registered again: a key per-run caches
    /// compare with one integer, instead of the 64-byte id, and that never
    /// names a module since freed.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The world it implements.
    pub fn world(&self) -> World {
        self.world
    }

    /// Size of the source `.wasm`.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Exports other than the world's entry point: tolerated, never called
    /// (see [`World::is_entry`]).
    pub fn ignored_exports(&self) -> &[String] {
        &self.ignored_exports
    }

    /// The pre-instantiated form the sandbox runs.
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// A summary for listings.
    pub fn info(&self) -> ModuleInfo {
        ModuleInfo {
            id: self.id.clone(),
            world: self.world,
            size_bytes: self.size_bytes,
            ignored_exports: self.ignored_exports.clone(),
        }
    }
}

/// What listings show about a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleInfo {
    /// sha256 of the source.
    pub id: String,
    /// Its world.
    pub world: World,
    /// Source size.
    pub size_bytes: u64,
    /// Exports the host never calls (see [`World::is_entry`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_exports: Vec<String>,
}

/// Counters for what the store did, for metrics and tests.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Modules compiled from source.
    pub compiled: AtomicU64,
    /// Modules loaded from a verified artifact.
    pub loaded_from_artifact: AtomicU64,
    /// Artifacts that failed verification and were discarded.
    pub artifacts_rejected: AtomicU64,
}

/// The content-addressed store of compiled modules.
pub struct ModuleStore {
    engine: Engine,
    preparer: Arc<dyn Preparer>,
    dir: Option<PathBuf>,
    key: SealKey,
    compat: String,
    max_module_bytes: u64,
    modules: RwLock<HashMap<String, Arc<Module>>>,
    stats: StoreStats,
    compiles: Compiles,
}

impl std::fmt::Debug for ModuleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleStore")
            .field("dir", &self.dir)
            .field("compat", &self.compat)
            .field("modules", &self.list().len())
            .finish_non_exhaustive()
    }
}

/// Largest `.wasm` accepted by default.
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;

/// The sha256 of `bytes` as lower-case hex: a module's id.
pub fn module_id(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ModuleStore {
    /// A store that keeps compiled artifacts under `data_dir/modules` and
    /// its sealing key at `data_dir/keys/artifact.key`.
    pub fn open(
        engine: Engine,
        preparer: Arc<dyn Preparer>,
        data_dir: &Path,
    ) -> Result<Self, ModuleError> {
        let key = SealKey::load_or_create(&data_dir.join("keys").join("artifact.key"))
            .map_err(ModuleError::Key)?;
        Ok(Self::build(
            engine,
            preparer,
            Some(data_dir.join("modules")),
            key,
        ))
    }

    /// A store that compiles in memory only; nothing touches disk.
    pub fn in_memory(engine: Engine, preparer: Arc<dyn Preparer>) -> Result<Self, ModuleError> {
        let key = SealKey::random().map_err(|e| ModuleError::Key(e.to_string()))?;
        Ok(Self::build(engine, preparer, None, key))
    }

    fn build(
        engine: Engine,
        preparer: Arc<dyn Preparer>,
        dir: Option<PathBuf>,
        key: SealKey,
    ) -> Self {
        let compat = engine.compatibility_hash();
        Self {
            engine,
            preparer,
            dir,
            key,
            compat,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            modules: RwLock::new(HashMap::new()),
            stats: StoreStats::default(),
            compiles: Compiles::new(CompileLimits::default()),
        }
    }

    /// Bounds compiles made through [`ModuleStore::register_for`]: at most
    /// `limits.concurrency` at once, on that many threads of their own,
    /// each waiting at most `limits.queue_timeout` for its turn. Without
    /// this, compiles spread over every core (what the CLI wants).
    pub fn with_compile_limits(mut self, limits: CompileLimits) -> Result<Self, ModuleError> {
        self.compiles = Compiles::bounded(limits).map_err(ModuleError::Lost)?;
        Ok(self)
    }

    /// Sets the largest `.wasm` the store accepts.
    pub fn with_max_module_bytes(mut self, limit: u64) -> Self {
        self.max_module_bytes = limit;
        self
    }

    /// What the store has done so far.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Where the artifact for `id` lives, if the store has a data dir.
    pub fn artifact_path(&self, id: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(id).join(format!("{}.cwasm", self.compat)))
    }

    /// Registers `wasm` (a component), compiling it unless a verified
    /// artifact exists, and returns the ready module. Registering the same
    /// bytes again returns the same module without compiling.
    pub fn register(&self, wasm: &[u8]) -> Result<Arc<Module>, ModuleError> {
        let _span = tracing::info_span!("module.register", size_bytes = wasm.len()).entered();
        self.check_size(wasm)?;
        let digest: [u8; 32] = Sha256::digest(wasm).into();
        self.register_digested(wasm, digest)
    }

    /// [`ModuleStore::register`] for a remote `caller`, from async code: the
    /// hash, any compile and any artifact load run on blocking threads, and
    /// a compile waits for a compile slot in turn (see
    /// [`ModuleStore::with_compile_limits`]); `Busy` (`overloaded`) when
    /// none came within the queue timeout. Known modules return at once.
    pub async fn register_for(
        self: &Arc<Self>,
        wasm: Vec<u8>,
        caller: &str,
    ) -> Result<Arc<Module>, ModuleError> {
        self.check_size(&wasm)?;
        let lost = |e: tokio::task::JoinError| ModuleError::Lost(e.to_string());
        let (digest, wasm) = tokio::task::spawn_blocking(move || {
            let digest: [u8; 32] = Sha256::digest(&wasm).into();
            (digest, wasm)
        })
        .await
        .map_err(lost)?;
        if let Some(module) = self.get(&hex::encode(digest)) {
            return Ok(module);
        }
        let _slot = self.compiles.slot(caller).await?;
        let store = self.clone();
        let span = tracing::info_span!("module.register", size_bytes = wasm.len(), %caller);
        tokio::task::spawn_blocking(move || {
            let _span = span.entered();
            store.register_digested(&wasm, digest)
        })
        .await
        .map_err(lost)?
    }

    fn check_size(&self, wasm: &[u8]) -> Result<(), ModuleError> {
        let size = wasm.len() as u64;
        if size > self.max_module_bytes {
            return Err(ModuleError::TooLarge {
                size,
                limit: self.max_module_bytes,
            });
        }
        Ok(())
    }

    fn register_digested(&self, wasm: &[u8], digest: [u8; 32]) -> Result<Arc<Module>, ModuleError> {
        let id = hex::encode(digest);
        if let Some(module) = self.get(&id) {
            return Ok(module);
        }
        let component = match self.load_cached(&id) {
            Some(component) => component,
            None => self.compile_and_store(&digest, wasm)?,
        };
        self.insert(id, wasm.len() as u64, component)
    }

    /// Loads a sealed artifact written by [`ModuleStore::compile_to`] (with
    /// this data dir's key). Anything else is refused, never deserialized.
    pub fn load_artifact(&self, path: &Path) -> Result<Arc<Module>, ModuleError> {
        let bytes = std::fs::read(path).map_err(|source| ModuleError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        let (id, component) = self.deserialize(path, &bytes)?;
        if let Some(module) = self.get(&id) {
            return Ok(module);
        }
        self.insert(id, bytes.len() as u64, component)
    }

    /// Compiles `wasm` and writes a sealed artifact to `out` that this host
    /// (or any host sharing its data dir) can load with
    /// [`ModuleStore::load_artifact`]. Returns the module's id and world.
    pub fn compile_to(&self, wasm: &[u8], out: &Path) -> Result<ModuleInfo, ModuleError> {
        let module = self.register(wasm)?;
        let digest: [u8; 32] = Sha256::digest(wasm).into();
        let cached = self
            .artifact_path(module.id())
            .and_then(|p| std::fs::read(p).ok());
        let sealed = match cached {
            Some(sealed) => sealed,
            None => self.seal(&digest, &self.compile(wasm)?)?,
        };
        artifact::write_atomic(out, &sealed).map_err(|source| ModuleError::Io {
            action: "writing",
            path: out.to_path_buf(),
            source,
        })?;
        Ok(module.info())
    }

    /// The module with this id, if registered.
    pub fn get(&self, id: &str) -> Option<Arc<Module>> {
        self.modules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every registered module, sorted by id.
    pub fn list(&self) -> Vec<ModuleInfo> {
        let mut all: Vec<ModuleInfo> = self
            .modules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|m| m.info())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Forgets a module and deletes its artifacts. Returns whether it was
    /// known. An `id` that is not a sha256 is refused before it touches
    /// the data dir (an empty id would otherwise name `modules/` itself).
    pub fn remove(&self, id: &str) -> Result<bool, ModuleError> {
        check_id(id)?;
        let known = self
            .modules
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .is_some();
        if let Some(dir) = &self.dir {
            let path = dir.join(id);
            if path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(|source| ModuleError::Io {
                    action: "removing",
                    path,
                    source,
                })?;
            }
        }
        Ok(known)
    }

    fn insert(
        &self,
        id: String,
        size_bytes: u64,
        component: Component,
    ) -> Result<Arc<Module>, ModuleError> {
        let prepared = self.preparer.prepare(&component)?;
        let world = prepared.world();
        let ignored_exports: Vec<String> = export_names(&component)
            .into_iter()
            .filter(|export| !world.is_entry(export))
            .collect();
        if !ignored_exports.is_empty() {
            tracing::info!(
                module = %id,
                ignored = ?ignored_exports,
                "module exports more than its world; the host calls only its entry point"
            );
        }
        static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let module = Arc::new(Module {
            id: id.clone(),
            serial: SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            world,
            size_bytes,
            ignored_exports,
            prepared,
        });
        self.modules
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, module.clone());
        Ok(module)
    }

    fn load_cached(&self, id: &str) -> Option<Component> {
        let path = self.artifact_path(id)?;
        let bytes = std::fs::read(&path).ok()?;
        match self.deserialize(&path, &bytes) {
            Ok((found, component)) if found == id => {
                self.stats
                    .loaded_from_artifact
                    .fetch_add(1, Ordering::Relaxed);
                Some(component)
            }
            Ok(_) => {
                self.reject(&path, "artifact holds a different module");
                None
            }
            Err(e) => {
                self.reject(&path, &e.to_string());
                None
            }
        }
    }

    fn reject(&self, path: &Path, reason: &str) {
        self.stats
            .artifacts_rejected
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(path = %path.display(), reason, "discarding compiled artifact that failed verification; recompiling");
        let _ = std::fs::remove_file(path);
    }

    fn deserialize(&self, path: &Path, bytes: &[u8]) -> Result<(String, Component), ModuleError> {
        let rejected = |reason: String| ModuleError::ArtifactRejected {
            path: path.to_path_buf(),
            reason,
        };
        let open = artifact::unseal(&self.key, bytes, &self.compat).map_err(rejected)?;
        // SAFETY: the payload carries this host's HMAC seal, so it is exactly
        // the bytes `Component::serialize` produced on an engine with the same
        // compatibility hash; wasmtime re-checks its own header on top.
        let component = unsafe { Component::deserialize(self.engine.wasmtime(), open.payload) }
            .map_err(|e| rejected(format!("{e:#}")))?;
        Ok((hex::encode(open.source_sha256), component))
    }

    fn compile(&self, wasm: &[u8]) -> Result<Component, ModuleError> {
        if !wasm.starts_with(b"\0asm") {
            return Err(ModuleError::Malformed {
                reason: "missing the `\\0asm` magic header; this is not a .wasm file".into(),
            });
        }
        // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
        if wasm.get(6..8) == Some(&[0, 0]) {
            return Err(ModuleError::CoreModule);
        }
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        self.compiles
            .run(|| Component::new(self.engine.wasmtime(), wasm))
            .map_err(|e| ModuleError::Malformed {
                reason: format!("{e:#}"),
            })
    }

    fn seal(&self, digest: &[u8; 32], component: &Component) -> Result<Vec<u8>, ModuleError> {
        let payload = component
            .serialize()
            .map_err(|e| ModuleError::Serialize(format!("{e:#}")))?;
        Ok(artifact::seal(&self.key, digest, &self.compat, &payload))
    }

    fn compile_and_store(&self, digest: &[u8; 32], wasm: &[u8]) -> Result<Component, ModuleError> {
        let component = self.compile(wasm)?;
        if let Some(path) = self.artifact_path(&hex::encode(digest)) {
            let sealed = self.seal(digest, &component)?;
            artifact::write_atomic(&path, &sealed).map_err(|source| ModuleError::Io {
                action: "writing",
                path,
                source,
            })?;
        }
        Ok(component)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_lower_case_hex_digits_are_ids() {
        let good = module_id(b"x");
        assert_eq!(check_id(&good), Ok(good.as_str()));
        for bad in [
            String::new(),
            good[..63].to_string(),
            format!("{good}0"),
            good.to_uppercase(),
            "..".into(),
            "/".into(),
            format!("../{}", &good[3..]),
            format!("{}/", &good[1..]),
            "g".repeat(64),
        ] {
            let e = check_id(&bad).unwrap_err();
            assert!(e.to_string().contains("64 lower-case hex digits"), "{e}");
        }
        // What an error shows is clipped and escaped.
        let e = check_id(&format!("{}\n", "x".repeat(200))).unwrap_err();
        assert_eq!(e.shown.len(), 80);
        assert!(!check_id("a\nb").unwrap_err().shown.contains('\n'));
    }

    #[test]
    fn removing_a_bad_id_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let host = crate::Host::builder().data_dir(dir.path()).build().unwrap();
        let modules = dir.path().join("modules");
        let kept = modules.join(module_id(b"kept"));
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::write(kept.join("a.cwasm"), b"sealed").unwrap();
        for bad in ["", ".", "..", "/", "A"] {
            let e = host.modules().remove(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidRequest, "{bad:?}: {e}");
        }
        assert!(kept.join("a.cwasm").is_file());
        // A well-formed id of an unknown module deletes its directory only.
        assert!(!host.modules().remove(&module_id(b"kept")).unwrap());
        assert!(!kept.exists());
        assert!(modules.is_dir());
    }
}
