//! What tract-cuda 0.23.9 needs at run time, and whether this machine has it (read from its
//! source and cudarc 0.19.10's).
//!
//! tract-cuda binds cudarc with dynamic loading: the driver (`libcuda.so.1`), cudart, NVRTC,
//! cuBLAS/cuBLASLt and cuDNN are opened by name (`toolkit` has the names and where they are
//! looked for). Its runtime check probes them and the driver's API version, which must be at
//! least that of the `cuda-XXXXX` feature built, but stops at the first missing library and
//! names no package. NVRTC's headers and the kernel cache it does not check: its CUDA context,
//! created when the first graph is prepared, compiles kernels for the GPU's architecture
//! against `cuda_fp16.h`, `math_constants.h` (cudart's dev package) and CCCL's `cuda/std/...`,
//! writes them under `$XDG_CACHE_HOME/tract/<version>/cuda/<api>/cubins` (an absolute
//! `XDG_CACHE_HOME`, else `$HOME/.cache`, else `./.cache`), loads them from there, and
//! *panics* ("Could not create CUDA context") when any of that fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::jetson::JetsonReport;
use super::toolkit::{library, toolkit, Packages, LIBRARIES};
use super::{find_program, run_command, HostEnv, Root};

pub use super::toolkit::{candidate_names, Header, Library, Toolkit};

/// A CUDA API version (`12.6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

impl CudaVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        CudaVersion { major, minor }
    }

    /// The cargo feature of this version (`cuda-12060` for 12.6).
    pub fn feature(self) -> String {
        format!("cuda-{}{:03}", self.major, self.minor * 10)
    }

    /// The Debian package version suffix (`12-6`).
    pub fn package_suffix(self) -> String {
        format!("{}-{}", self.major, self.minor)
    }
}

impl std::fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The CUDA API version this build's tract-cuda is bound to (its `cuda-XXXXX` feature);
/// `None` in a build without CUDA.
pub const BUILD: Option<CudaVersion> = if cfg!(feature = "cuda-12000") {
    Some(CudaVersion::new(12, 0))
} else if cfg!(feature = "cuda-12020") {
    Some(CudaVersion::new(12, 2))
} else if cfg!(feature = "cuda-12060") {
    Some(CudaVersion::new(12, 6))
} else if cfg!(feature = "cuda-13000") {
    Some(CudaVersion::new(13, 0))
} else {
    None
};

/// The highest CUDA API a desktop/datacenter driver of this version supports (NVIDIA's
/// minimum driver per CUDA release, Linux); `None` for an unparsable or pre-CUDA-11.8 driver.
pub fn cuda_for_driver(version: &str) -> Option<CudaVersion> {
    let branch: u32 = version.trim().split('.').next()?.parse().ok()?;
    const TABLE: &[(u32, u32, u32)] = &[
        (580, 13, 0),
        (575, 12, 9),
        (570, 12, 8),
        (560, 12, 6),
        (555, 12, 5),
        (550, 12, 4),
        (545, 12, 3),
        (535, 12, 2),
        (530, 12, 1),
        (525, 12, 0),
        (520, 11, 8),
    ];
    TABLE
        .iter()
        .find(|(min, _, _)| branch >= *min)
        .map(|&(_, major, minor)| CudaVersion::new(major, minor))
}

/// The driver's CUDA version and where it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Driver {
    /// Driver version (`580.65.06`) or L4T release (`R36.4.3`).
    pub version: Option<String>,
    /// The highest CUDA API it supports.
    pub cuda: Option<CudaVersion>,
    pub source: Option<String>,
}

/// The GPU tract-cuda would use (device 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpu {
    pub name: String,
    /// Compute capability as `sm_XY` digits (87 for Orin).
    pub sm: Option<u32>,
    pub source: String,
}

impl Gpu {
    /// tract-cuda's flash-attention kernel needs sm >= 80 (else attention runs unfused).
    pub fn flash_attention(&self) -> Option<bool> {
        self.sm.map(|sm| sm >= 80)
    }
}

/// A GPU device node and whether this process can open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub present: bool,
    /// Why opening it read-write failed (`None`: it opened, or is absent).
    pub error: Option<String>,
}

impl DeviceNode {
    fn usable(&self) -> bool {
        self.present && self.error.is_none()
    }
}

/// Everything about CUDA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CudaReport {
    /// [`BUILD`]: the CUDA version this binary is bound to.
    pub build: Option<CudaVersion>,
    pub driver: Driver,
    pub gpu: Option<Gpu>,
    pub device_nodes: Vec<DeviceNode>,
    pub libraries: Vec<Library>,
    pub toolkit: Toolkit,
    /// Where tract-cuda writes and loads the kernels NVRTC compiled: `$XDG_CACHE_HOME/tract`
    /// (absolute only), else `$HOME/.cache/tract`, else `.cache/tract` in the working
    /// directory; it adds `<version>/cuda/<api>/cubins/sm_XY/...` below.
    pub kernel_cache: Option<PathBuf>,
    /// Whether that cache can be written (probed on the real root only): required, tract-cuda
    /// fails to create its CUDA context otherwise.
    pub kernel_cache_writable: Option<bool>,
    /// The packages that provide all of the above on this platform.
    pub packages: Vec<String>,
    /// Whether this is a Jetson (integrated GPU, L4T driver).
    pub jetson: bool,
}

/// Runs the CUDA checks under the root.
pub(crate) fn check(
    root: &Root,
    env: &HostEnv,
    jetson: Option<&JetsonReport>,
    arch: &str,
) -> CudaReport {
    let smi = (env.run_commands && root.is_host() && jetson.is_none())
        .then(|| find_program(&env.path, "nvidia-smi"))
        .flatten()
        .and_then(|smi| {
            let args = [
                "--query-gpu=name,compute_cap,driver_version",
                "--format=csv,noheader",
            ];
            run_command(&smi, &args, Duration::from_secs(10))
        })
        .and_then(|text| parse_nvidia_smi(&text));
    let driver = driver_version(root, jetson, smi.as_ref().map(|(_, v)| v.as_str()));
    let gpu = match jetson {
        Some(j) => j.gpu.clone(),
        None => smi.map(|(gpu, _)| gpu),
    };
    // Package versions: the L4T's CUDA on a Jetson, else the build's, else the driver's.
    let version = jetson
        .and_then(|j| j.cuda)
        .or(BUILD)
        .or(driver.cuda)
        .unwrap_or(CudaVersion::new(12, 6));
    let packages = Packages {
        suffix: version.package_suffix(),
        major: version.major,
        jetson: jetson.is_some(),
        cudnn8: jetson.is_some() && version < CudaVersion::new(12, 6),
    };
    let major = BUILD.map_or(version.major, |b| b.major);
    let toolkit = toolkit(root, env, &packages);
    let libraries = LIBRARIES
        .iter()
        .map(|&(name, stem, what)| {
            library(
                root,
                env,
                arch,
                &toolkit,
                (name, stem, what),
                major,
                &packages,
            )
        })
        .collect();
    let (kernel_cache, kernel_cache_writable) = kernel_cache(root, env);
    CudaReport {
        build: BUILD,
        driver,
        gpu,
        device_nodes: device_nodes(root, jetson.is_some()),
        libraries,
        toolkit,
        kernel_cache,
        kernel_cache_writable,
        packages: packages.all(),
        jetson: jetson.is_some(),
    }
}

/// Parses `nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader`
/// (first GPU): the GPU and the driver version.
pub fn parse_nvidia_smi(text: &str) -> Option<(Gpu, String)> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let (name, cap, driver) = match fields.as_slice() {
        [name, cap, driver, ..] => (*name, *cap, *driver),
        _ => return None,
    };
    let sm = cap
        .split_once('.')
        .and_then(|(a, b)| Some(a.parse::<u32>().ok()? * 10 + b.parse::<u32>().ok()?));
    let gpu = Gpu {
        name: name.to_string(),
        sm,
        source: "nvidia-smi".to_string(),
    };
    Some((gpu, driver.to_string()))
}

fn driver_version(root: &Root, jetson: Option<&JetsonReport>, smi_driver: Option<&str>) -> Driver {
    if let Some(j) = jetson {
        return Driver {
            version: j.l4t.clone(),
            cuda: j.cuda,
            source: Some("/etc/nv_tegra_release (L4T's driver)".to_string()),
        };
    }
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 ..." (or
    // "... Open Kernel Module for x86_64  580.65.06 ...").
    let from_proc = root.read("/proc/driver/nvidia/version").and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
        line.split_whitespace()
            .find(|w| w.split('.').count() >= 2 && w.split('.').all(|p| p.parse::<u32>().is_ok()))
            .map(str::to_string)
    });
    let (version, source) = match (from_proc, smi_driver) {
        (Some(v), _) => (Some(v), Some("/proc/driver/nvidia/version".to_string())),
        (None, Some(v)) => (Some(v.to_string()), Some("nvidia-smi".to_string())),
        (None, None) => (None, None),
    };
    Driver {
        cuda: version.as_deref().and_then(cuda_for_driver),
        version,
        source,
    }
}

fn device_nodes(root: &Root, jetson: bool) -> Vec<DeviceNode> {
    let mut paths: Vec<String> = if jetson {
        [
            "/dev/nvmap",
            "/dev/nvgpu/igpu0/ctrl",
            "/dev/nvhost-ctrl-gpu",
        ]
        .map(str::to_string)
        .to_vec()
    } else {
        let first_gpu = root
            .list("/dev")
            .into_iter()
            .find(|n| {
                n.strip_prefix("nvidia")
                    .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
            })
            .unwrap_or_else(|| "nvidia0".to_string());
        vec!["/dev/nvidiactl".to_string(), format!("/dev/{first_gpu}")]
    };
    paths.dedup();
    paths
        .into_iter()
        .map(|p| {
            let path = PathBuf::from(p);
            let full = root.join(&path);
            let present = full.exists();
            let error = present
                .then(|| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&full)
                        .err()
                        .map(|e| e.to_string())
                })
                .flatten();
            DeviceNode {
                path,
                present,
                error,
            }
        })
        .collect()
}

fn kernel_cache(root: &Root, env: &HostEnv) -> (Option<PathBuf>, Option<bool>) {
    // tract-cuda ignores a relative XDG_CACHE_HOME (the XDG rule) and falls back to
    // `./.cache` when neither variable helps.
    let base = env
        .cache_home
        .clone()
        .filter(|p| p.is_absolute())
        .or_else(|| env.home.as_ref().map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    let dir = base.join("tract");
    if !root.is_host() {
        return (Some(dir), None);
    }
    // Probe the nearest existing ancestor: a read-only mount (ProtectSystem=strict) or a
    // missing permission both show up as a failed create.
    let mut probe = dir.clone();
    loop {
        if probe.as_os_str().is_empty() {
            probe = PathBuf::from(".");
        }
        if probe.exists() {
            break;
        }
        match probe.parent() {
            Some(p) => probe = p.to_path_buf(),
            None => return (Some(dir), Some(false)),
        }
    }
    let file = probe.join(format!(".transfusion-preflight-{}", std::process::id()));
    let writable = std::fs::File::create(&file).is_ok();
    let _ = std::fs::remove_file(&file);
    (Some(dir), Some(writable))
}

impl CudaReport {
    /// Why CUDA can not run, most basic first; empty when nothing is missing.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.build.is_none() {
            out.push(
                "this binary was built without CUDA (no `cuda-*` feature): rebuild with one, \
                 `cuda-12000` for every JetPack 6 release (docs/jetson.md)"
                    .to_string(),
            );
        }
        let nodes: Vec<String> = self
            .device_nodes
            .iter()
            .map(|n| n.path.display().to_string())
            .collect();
        if self.device_nodes.iter().all(|n| !n.present) {
            out.push(format!(
                "no NVIDIA GPU device node ({}): no GPU here, or its driver is not loaded",
                nodes.join(", ")
            ));
        } else {
            for n in self
                .device_nodes
                .iter()
                .filter(|n| n.present && n.error.is_some())
            {
                out.push(format!(
                    "cannot open {}: {} (a systemd unit needs DeviceAllow={} rw; a user needs \
                     the node's group, video or render)",
                    n.path.display(),
                    n.error.as_deref().unwrap_or(""),
                    n.path.display()
                ));
            }
            if self.jetson {
                let ctrl_ok = self
                    .device_nodes
                    .iter()
                    .any(|n| n.path != Path::new("/dev/nvmap") && n.usable());
                if !ctrl_ok && self.device_nodes.iter().all(|n| n.error.is_none()) {
                    out.push(
                        "no GPU control node (/dev/nvgpu/igpu0/ctrl or /dev/nvhost-ctrl-gpu): is \
                         the nvgpu driver loaded?"
                            .to_string(),
                    );
                }
            }
        }
        if let (Some(build), Some(driver)) = (self.build, self.driver.cuda) {
            if driver < build {
                out.push(format!(
                    "the driver supports CUDA {driver} ({}{}) but this binary is built with `{}` \
                     (needs >= {build}): rebuild with `cuda-12000` or update the driver",
                    self.driver.version.as_deref().unwrap_or("?"),
                    self.driver
                        .source
                        .as_deref()
                        .map(|s| format!(", {s}"))
                        .unwrap_or_default(),
                    build.feature()
                ));
            }
        }
        for lib in &self.libraries {
            if let Some(fix) = &lib.fix {
                out.push(format!("{} ({}): {fix}", lib.name, lib.what));
            }
        }
        match &self.toolkit.root {
            None => out.push(format!(
                "no CUDA toolkit directory for NVRTC's headers (tried CUDA_HOME, CUDA_PATH, \
                 /usr/local/cuda, nvcc on PATH): install {} and set CUDA_HOME",
                self.toolkit
                    .headers
                    .iter()
                    .map(|h| h.package.as_str())
                    .fold(Vec::<&str>::new(), |mut v, p| {
                        if !v.contains(&p) {
                            v.push(p);
                        }
                        v
                    })
                    .join(" and ")
            )),
            Some(root) => {
                let source = self.toolkit.source.as_deref().unwrap_or("?");
                match &self.toolkit.include {
                    None => {
                        let mut packages: Vec<&str> = Vec::new();
                        for h in &self.toolkit.headers {
                            if !packages.contains(&h.package.as_str()) {
                                packages.push(&h.package);
                            }
                        }
                        out.push(format!(
                            "NVRTC header cuda_fp16.h is in neither {r}/include nor \
                             {r}/targets/*/include (toolkit root from {source}): install {}{}",
                            packages.join(" and "),
                            if source == "/usr/local/cuda" {
                                ""
                            } else {
                                ", or fix that variable"
                            },
                            r = root.display(),
                        ))
                    }
                    Some(include) => {
                        for h in self.toolkit.headers.iter().filter(|h| h.found.is_none()) {
                            out.push(format!(
                                "NVRTC header {} missing under {} (toolkit root from {source}): \
                                 install {}",
                                h.name,
                                include.display(),
                                h.package
                            ));
                        }
                    }
                }
            }
        }
        if let (Some(dir), Some(false)) = (&self.kernel_cache, self.kernel_cache_writable) {
            out.push(format!(
                "tract-cuda's kernel cache {} can not be written: it compiles every kernel into \
                 it and loads it from there, so the CUDA context fails (set XDG_CACHE_HOME to a \
                 writable directory; the kiosk's CUDA drop-in uses CacheDirectory=transfusion)",
                dir.display()
            ));
        }
        out
    }

    /// Findings that do not stop CUDA: no flash attention (slower attention), an unknown
    /// driver version (not checked against the build).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(gpu) = &self.gpu {
            if gpu.flash_attention() == Some(false) {
                out.push(format!(
                    "{} (sm_{}) is below sm_80: tract-cuda's flash attention is not available",
                    gpu.name,
                    gpu.sm.unwrap_or(0)
                ));
            }
        }
        if self.build.is_some() && self.driver.cuda.is_none() {
            out.push("the driver's CUDA version is unknown: not checked against the build".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_name_features_and_packages() {
        let v = CudaVersion::new(12, 6);
        assert_eq!(
            (v.feature(), v.package_suffix()),
            ("cuda-12060".into(), "12-6".into())
        );
        assert_eq!(CudaVersion::new(12, 0).feature(), "cuda-12000");
        assert_eq!(cuda_for_driver("580.65.06"), Some(CudaVersion::new(13, 0)));
        assert_eq!(cuda_for_driver("535.183.01"), Some(CudaVersion::new(12, 2)));
        assert_eq!(cuda_for_driver("470.1"), None);
        assert_eq!(cuda_for_driver("x"), None);
    }

    #[test]
    fn nvidia_smi_output_parses() {
        let (gpu, driver) = parse_nvidia_smi("NVIDIA H200, 9.0, 580.65.06\n").unwrap();
        assert_eq!((gpu.sm, driver.as_str()), (Some(90), "580.65.06"));
        assert_eq!(gpu.flash_attention(), Some(true));
        assert!(parse_nvidia_smi("garbage").is_none());
    }
}
