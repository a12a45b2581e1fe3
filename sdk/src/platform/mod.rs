//! Preflight: what this machine offers the runtime, read from files under a root directory.
//!
//! tract picks CPU kernels from the CPU's features, and tract-cuda loads the NVIDIA driver,
//! cudart, NVRTC, cuBLAS and cuDNN at run time and compiles its kernels with NVRTC against the
//! CUDA headers into an on-disk cache. A missing piece shows up late and badly: tract-cuda's
//! own check names only the first missing library, and a missing header or an unwritable
//! cache makes its CUDA context panic while the first graph is prepared. [`preflight`] looks
//! for every piece first, says which package provides what is missing, and on a Jetson also
//! records what the numbers depend on: the power mode, whether `jetson_clocks` pinned the
//! clocks, the temperatures and the power rails.
//!
//! Everything is read under `sysroot` (`/` on a device; a fake tree in tests), so the checks
//! are plain file reads that a test can stage. The only other inputs are in [`HostEnv`]: the
//! environment variables the loaders honour and, when allowed, the output of `nvpmodel -q`
//! and `nvidia-smi`. Used by `transfusion doctor`, the kiosk's `--check`, the bench's machine
//! record, and [`Device::resolve`](crate::Device::resolve) (which refuses the GPU, with these findings as
//! the reason, rather than let tract-cuda fail halfway).

pub mod cpu;
pub mod cuda;
pub mod jetson;
mod report;
pub mod sensors;
mod toolkit;

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use cpu::CpuReport;
pub use cuda::{CudaReport, CudaVersion};
pub use jetson::JetsonReport;
pub use sensors::Telemetry;

/// What the preflight may look at besides the files under the root: environment variables and
/// (for the real root only) two commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostEnv {
    /// `CUDA_HOME`: the toolkit root tract-cuda looks in first for NVRTC's headers.
    pub cuda_home: Option<PathBuf>,
    /// `CUDA_PATH`: the second place it looks.
    pub cuda_path: Option<PathBuf>,
    /// `PATH`, split: where `nvcc` (another way to find the toolkit root), `nvpmodel` and
    /// `nvidia-smi` are looked for.
    pub path: Vec<PathBuf>,
    /// `LD_LIBRARY_PATH`, split: searched by the dynamic loader before its configured
    /// directories.
    pub ld_library_path: Vec<PathBuf>,
    /// `XDG_CACHE_HOME`: tract-cuda keeps compiled kernels under `<it>/tract/`.
    pub cache_home: Option<PathBuf>,
    /// `HOME`: the cache is `~/.cache/tract/` without `XDG_CACHE_HOME`.
    pub home: Option<PathBuf>,
    /// Run `nvpmodel -q` and `nvidia-smi` (found on `path`) for the power mode and the GPU.
    /// Only meaningful when the root is `/`; tests leave it off.
    pub run_commands: bool,
}

impl HostEnv {
    /// This process's environment, with commands allowed.
    pub fn from_process() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let split = |name: &str| {
            std::env::var_os(name)
                .map(|v| {
                    std::env::split_paths(&v)
                        .filter(|p| !p.as_os_str().is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        HostEnv {
            cuda_home: var("CUDA_HOME"),
            cuda_path: var("CUDA_PATH"),
            path: split("PATH"),
            ld_library_path: split("LD_LIBRARY_PATH"),
            cache_home: var("XDG_CACHE_HOME"),
            home: var("HOME"),
            run_commands: true,
        }
    }
}

/// Everything the preflight found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preflight {
    /// The root the files were read under (`/` on a device).
    pub sysroot: PathBuf,
    pub cpu: CpuReport,
    pub cuda: CudaReport,
    /// Present when the root is a Jetson (device tree says `nvidia,tegra*`, or
    /// `/etc/nv_tegra_release` exists).
    pub jetson: Option<JetsonReport>,
    /// Clocks, temperatures and power rails at the time of the preflight.
    pub telemetry: Telemetry,
}

/// Runs every check under `sysroot`.
pub fn preflight(sysroot: &Path, env: &HostEnv) -> Preflight {
    let root = Root::new(sysroot);
    let cpu = cpu::detect(&root);
    let jetson = jetson::detect(&root, env);
    let cuda = cuda::check(&root, env, jetson.as_ref(), &cpu.arch);
    Preflight {
        sysroot: sysroot.to_path_buf(),
        cpu,
        cuda,
        jetson,
        telemetry: sensors::read(&root),
    }
}

/// [`preflight`] of this machine: root `/`, this process's environment.
pub fn preflight_host() -> Preflight {
    preflight(Path::new("/"), &HostEnv::from_process())
}

impl Preflight {
    /// Why CUDA can not run here, most basic first (no GPU, no driver, then libraries and
    /// headers); empty when every check passed. Each entry names the file and the fix.
    pub fn cuda_problems(&self) -> Vec<String> {
        self.cuda.problems()
    }

    /// Whether every CUDA check passed.
    pub fn cuda_ready(&self) -> bool {
        self.cuda_problems().is_empty()
    }

    /// The human-readable report (`transfusion doctor`, `kiosk --check`).
    pub fn to_text(&self) -> String {
        report::to_text(self)
    }
}

/// A root directory that absolute device paths are read under.
#[derive(Debug, Clone)]
pub(crate) struct Root {
    dir: PathBuf,
}

impl Root {
    pub(crate) fn new(dir: &Path) -> Self {
        Root {
            dir: dir.to_path_buf(),
        }
    }

    /// Whether this is the machine's real root (commands and device opens make sense).
    pub(crate) fn is_host(&self) -> bool {
        self.dir == Path::new("/")
    }

    /// `device_path` (absolute, as on the device) under the root. `..` components are dropped
    /// so a path from a config file can not climb out of a test's tree.
    pub(crate) fn join(&self, device_path: &Path) -> PathBuf {
        let mut out = self.dir.clone();
        for c in device_path.components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }

    /// The text of a file, `None` when it can not be read (absent, a directory, no access).
    pub(crate) fn read(&self, device_path: impl AsRef<Path>) -> Option<String> {
        let path = self.join(device_path.as_ref());
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .ok()?
            .take(1 << 20)
            .read_to_end(&mut bytes)
            .ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The first line of a file, trimmed (sysfs values).
    pub(crate) fn read_value(&self, device_path: impl AsRef<Path>) -> Option<String> {
        self.read(device_path)
            .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
            .filter(|v| !v.is_empty())
    }

    /// A sysfs number (`cur_freq`, `temp`, `in1_input`).
    pub(crate) fn read_i64(&self, device_path: impl AsRef<Path>) -> Option<i64> {
        self.read_value(device_path)?.parse().ok()
    }

    /// Entry names of a directory, sorted (empty when it can not be listed).
    pub(crate) fn list(&self, device_dir: impl AsRef<Path>) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.join(device_dir.as_ref()))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort_by(|a, b| natural_cmp(a, b));
        names
    }
}

/// Orders `cpu10` after `cpu9` and `thermal_zone10` after `thermal_zone2`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (head, tail) = s.split_at(s.len() - digits);
        (head.to_string(), tail.parse::<u64>().ok())
    };
    split(a).cmp(&split(b)).then_with(|| a.cmp(b))
}

/// The first file named `program` in one of `path`'s directories (under the real root).
pub(crate) fn find_program(path: &[PathBuf], program: &str) -> Option<PathBuf> {
    path.iter()
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `program args` and returns its standard output when it exits successfully within
/// `timeout` (a stuck tool is killed: a preflight must not hang a kiosk's start).
pub(crate) fn run_command(program: &Path, args: &[&str], timeout: Duration) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| log::debug!("preflight: running {}: {e}", program.display()))
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                log::warn!(
                    "preflight: {} did not finish within {timeout:?}; killed",
                    program.display()
                );
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = reader.join().ok()?;
    status.filter(|s| s.success()).map(|_| text)
}
