//! Finding and loading the ONNX Runtime shared library, once per process.
//!
//! Order: an explicit path (`--onnxruntime-lib` / `FLOTILLA_ONNXRUNTIME_LIB`),
//! then `ORT_DYLIB_PATH`, then the `onnxruntime` Python wheel of a virtual
//! environment (`$VIRTUAL_ENV`, else `./.venv`). A path the user gave that does
//! not load is an error; a wheel found on its own that does not load, or no
//! library at all, leaves ONNX models to tract.

use ort::logging::LogLevel;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the library path came from (for log lines and errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--onnxruntime-lib` or `FLOTILLA_ONNXRUNTIME_LIB`.
    Flag,
    /// `ORT_DYLIB_PATH`.
    Env,
    /// An `onnxruntime` Python wheel found in a virtual environment.
    PythonWheel,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Flag => "--onnxruntime-lib",
            Origin::Env => "ORT_DYLIB_PATH",
            Origin::PythonWheel => "python onnxruntime wheel",
        })
    }
}

/// The value of `--onnxruntime-lib` that turns ONNX Runtime off.
pub const DISABLED: &str = "none";

/// What [`locate`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    Found(PathBuf, Origin),
    /// `--onnxruntime-lib none`.
    Disabled,
    /// Nothing found; the text says where it looked.
    NotFound(String),
}

/// A loaded ONNX Runtime: the process-wide environment every session is created in.
pub struct Runtime {
    pub(crate) environment: ort::environment::Environment,
    path: PathBuf,
    origin: Origin,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Runtime({}, from {})", self.path.display(), self.origin)
    }
}

/// Why ONNX Runtime is not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

// === impl Runtime ===

impl Runtime {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Whether this library has the CUDA execution provider compiled in.
    pub fn has_cuda(&self) -> bool {
        use ort::ep::ExecutionProvider;
        ort::ep::CUDA::is_available().unwrap_or(false)
    }
}

/// Finds the library as the module doc describes, without loading it.
pub fn locate(flag: Option<&Path>) -> Located {
    match flag {
        Some(p) if p.as_os_str() == DISABLED => return Located::Disabled,
        Some(p) if !p.as_os_str().is_empty() => return Located::Found(p.to_path_buf(), Origin::Flag),
        _ => {}
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Located::Found(PathBuf::from(p), Origin::Env);
    }
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|p| !p.is_empty()) {
        venvs.push(PathBuf::from(v));
    }
    venvs.push(PathBuf::from(".venv"));
    for venv in &venvs {
        if let Some(p) = wheel_library(venv) {
            return Located::Found(p, Origin::PythonWheel);
        }
    }
    Located::NotFound(format!(
        "no --onnxruntime-lib / FLOTILLA_ONNXRUNTIME_LIB, no ORT_DYLIB_PATH, no onnxruntime wheel in {}",
        venvs.iter().map(|v| v.display().to_string()).collect::<Vec<_>>().join(" or ")
    ))
}

/// `<venv>/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*` (or `.dylib`).
pub fn wheel_library(venv: &Path) -> Option<PathBuf> {
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons.into_iter().rev().find_map(|py| {
        let capi = py.join("site-packages").join("onnxruntime").join("capi");
        let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                name.starts_with("libonnxruntime.") && name.contains(std::env::consts::DLL_SUFFIX)
            })
            .collect();
        libs.sort();
        libs.pop()
    })
}

/// The runtime of this process once loaded (failures are not kept: a later call may try another path).
static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

/// Loads ONNX Runtime from `path`, once per process: later calls get the same
/// runtime, and an error for a different path (the library is process-global).
pub fn load(path: &Path, origin: Origin) -> Result<Arc<Runtime>, LoadError> {
    let mut slot = RUNTIME.lock();
    if let Some(rt) = slot.as_ref() {
        if rt.path != absolute(path) {
            return Err(LoadError(format!(
                "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
                rt.path.display(),
                path.display()
            )));
        }
        return Ok(rt.clone());
    }
    let rt = load_uncached(path, origin)?;
    *slot = Some(rt.clone());
    Ok(rt)
}

/// The runtime loaded earlier in this process, if any.
pub fn loaded() -> Option<Arc<Runtime>> {
    RUNTIME.lock().clone()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn load_uncached(path: &Path, origin: Origin) -> Result<Arc<Runtime>, LoadError> {
    let path = absolute(path);
    let fail = |e: &dyn std::fmt::Display| {
        LoadError(format!("cannot load ONNX Runtime from {} (given by {origin}): {e}", path.display()))
    };
    if !path.is_file() {
        return Err(fail(&"no such file"));
    }
    let environment = ort::init_from(&path)
        .map_err(|e| fail(&e))?
        .with_name("flotilla")
        .with_logger(Arc::new(log))
        .build()
        .map_err(|e| fail(&e))?;
    // ORT formats messages only at or above this level; its INFO lines (arena sizes, devices) are noise.
    environment.set_log_level(LogLevel::Warning);
    Ok(Arc::new(Runtime { environment, path, origin }))
}

/// ONNX Runtime's own log lines, as tracing events (ORT's INFO and VERBOSE become debug and trace).
fn log(level: LogLevel, category: &str, _id: &str, location: &str, message: &str) {
    match level {
        LogLevel::Fatal | LogLevel::Error => tracing::error!(target: "onnxruntime", category, location, "{message}"),
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", category, location, "{message}"),
        LogLevel::Info => tracing::debug!(target: "onnxruntime", category, location, "{message}"),
        LogLevel::Verbose => tracing::trace!(target: "onnxruntime", category, location, "{message}"),
    }
}

/// Locates and loads the library for a server start: `Ok(None)` (after one warning
/// line saying why) when ONNX models should run on tract instead.
pub fn init(flag: Option<&Path>) -> Result<Option<Arc<Runtime>>, LoadError> {
    match locate(flag) {
        Located::Disabled => {
            tracing::info!("ONNX Runtime disabled (--onnxruntime-lib {DISABLED}); ONNX models run on tract");
            Ok(None)
        }
        Located::NotFound(why) => {
            tracing::warn!(reason = %why, "ONNX Runtime library not found; ONNX models fall back to tract");
            Ok(None)
        }
        Located::Found(path, Origin::PythonWheel) => match load(&path, Origin::PythonWheel) {
            Ok(rt) => Ok(Some(rt)),
            Err(e) => {
                tracing::warn!(reason = %e, "ONNX Runtime library not usable; ONNX models fall back to tract");
                Ok(None)
            }
        },
        Located::Found(path, origin) => load(&path, origin).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_and_none_disables() {
        assert_eq!(locate(Some(Path::new("none"))), Located::Disabled);
        assert_eq!(locate(Some(Path::new("/x/lib.so"))), Located::Found(PathBuf::from("/x/lib.so"), Origin::Flag));
    }

    #[test]
    fn finds_the_wheel_library_in_a_venv() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir.path().join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        assert_eq!(wheel_library(dir.path()), None);
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        let lib = capi.join(format!("libonnxruntime.1.31.1{}", std::env::consts::DLL_SUFFIX));
        std::fs::write(&lib, b"").unwrap();
        assert_eq!(wheel_library(dir.path()), Some(lib));
    }
}
