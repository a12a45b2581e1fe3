//! The CUDA libraries and headers tract-cuda loads, where the dynamic loader and NVRTC look
//! for them, and the Debian/JetPack package that provides each.
//!
//! cudarc 0.19.10 (what tract-cuda 0.23.9 resolves to) opens each library by name with
//! `dlopen`: on Linux `libX.so`, `libX.so.<CUDA major>`, `.so.12`, `.so.11`, `.so.10`, `.so.9`,
//! `.so.1`, in that order (and Windows-style `libX64_*.so` names no Linux package ships). So
//! cuDNN 9's `libcudnn.so.9` opens, but cuDNN 8's `libcudnn.so.8` (JetPack 6.0) does not: only
//! the unversioned `libcudnn.so` of its `-dev` package does. `dlopen` searches
//! `LD_LIBRARY_PATH`, the directories of `/etc/ld.so.conf` and the default ones; the checks here
//! search the same directories under the root, and also where CUDA libraries often are without
//! being on that path, so the report can say "found, but add this directory".
//!
//! NVRTC's headers are found as tract-cuda 0.23.9 finds them: the toolkit root is `$CUDA_HOME`
//! if set (even to a directory that does not exist), else `$CUDA_PATH`, else `/usr/local/cuda`
//! if it exists, else the parent of the `bin/` holding `nvcc`; the include directory is
//! `<root>/include` or `<root>/targets/*/include`, whichever holds `cuda_fp16.h`; it must also
//! hold `math_constants.h`; CCCL's `cuda/std/cstdint` is looked for under `<include>/cccl`,
//! `<include>/libcudacxx/include` and `<include>`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{HostEnv, Root};
/// One library tract-cuda opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Library {
    /// `driver`, `cudart`, `nvrtc`, `cublas`, `cublasLt` or `cudnn`.
    pub name: &'static str,
    /// What it is for.
    pub what: &'static str,
    /// The file the dynamic loader would open (a device path), `None` when none opens.
    pub file: Option<PathBuf>,
    /// The names cudarc tries, in order.
    pub tried: Vec<String>,
    /// A file with one of those names outside the loader's search path.
    pub elsewhere: Option<PathBuf>,
    /// A file of this library under a name cudarc does not try (`libcudnn.so.8`).
    pub unloadable: Option<PathBuf>,
    /// The package that provides a name cudarc opens.
    pub package: String,
    /// What to do when it does not open.
    pub fix: Option<String>,
}

/// One header NVRTC needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// As NVRTC includes it (`cuda_fp16.h`, `math_constants.h`, CCCL's `cuda/std/cstdint`).
    pub name: &'static str,
    pub found: Option<PathBuf>,
    pub package: String,
}

/// The toolkit root NVRTC's headers come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Toolkit {
    /// The root tract-cuda would use (a device path; it may not exist when `CUDA_HOME` or
    /// `CUDA_PATH` names it).
    pub root: Option<PathBuf>,
    /// How it was found: `CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda` or `nvcc on PATH`.
    pub source: Option<String>,
    /// The include directory that holds `cuda_fp16.h`.
    pub include: Option<PathBuf>,
    pub headers: Vec<Header>,
}

/// (name, library stem, what).
pub(crate) const LIBRARIES: &[(&str, &str, &str)] = &[
    ("driver", "cuda", "the driver's CUDA API"),
    ("cudart", "cudart", "CUDA runtime"),
    ("nvrtc", "nvrtc", "compiles tract's kernels on the device"),
    ("cublas", "cublas", "matrix products"),
    ("cublasLt", "cublasLt", "cuBLAS's matmul back end"),
    ("cudnn", "cudnn", "convolutions"),
];

/// Package names for this platform.
pub(crate) struct Packages {
    pub(crate) suffix: String,
    pub(crate) major: u32,
    pub(crate) jetson: bool,
    /// JetPack 6.0 (CUDA 12.2) ships cuDNN 8.9; 6.1/6.2 and desktops cuDNN 9.
    pub(crate) cudnn8: bool,
}

impl Packages {
    pub(crate) fn for_library(&self, name: &str) -> String {
        let s = &self.suffix;
        match name {
            "driver" if self.jetson => "nvidia-l4t-cuda (part of L4T)".to_string(),
            "driver" => "the NVIDIA driver (Ubuntu: libnvidia-compute-<branch>)".to_string(),
            "cudart" => format!("cuda-cudart-{s}"),
            "nvrtc" => format!("cuda-nvrtc-{s}"),
            "cublas" | "cublasLt" => format!("libcublas-{s}"),
            _ if self.cudnn8 => {
                "libcudnn8-dev (provides libcudnn.so; cudarc does not open libcudnn.so.8)"
                    .to_string()
            }
            _ => format!("libcudnn9-cuda-{} (provides libcudnn.so.9)", self.major),
        }
    }

    pub(crate) fn all(&self) -> Vec<String> {
        let s = &self.suffix;
        let mut list = vec![
            format!("cuda-cudart-{s}"),
            format!("cuda-cudart-dev-{s}"),
            format!("cuda-nvrtc-{s}"),
            format!("libcublas-{s}"),
            format!("cuda-cccl-{s}"),
        ];
        if self.cudnn8 {
            list.extend(["libcudnn8".to_string(), "libcudnn8-dev".to_string()]);
        } else {
            list.push(format!("libcudnn9-cuda-{}", self.major));
        }
        list
    }
}

/// The directories the dynamic loader searches: `LD_LIBRARY_PATH`, `/etc/ld.so.conf` (with its
/// `include`s), then the default directories.
pub(crate) fn loader_dirs(root: &Root, env: &HostEnv, arch: &str) -> Vec<PathBuf> {
    let mut dirs = env.ld_library_path.clone();
    ld_so_conf(root, Path::new("/etc/ld.so.conf"), 0, &mut dirs);
    let triples: &[&str] = match arch {
        "aarch64" => &["aarch64-linux-gnu"],
        "x86_64" => &["x86_64-linux-gnu"],
        _ => &["aarch64-linux-gnu", "x86_64-linux-gnu"],
    };
    for triple in triples {
        dirs.push(PathBuf::from(format!("/lib/{triple}")));
        dirs.push(PathBuf::from(format!("/usr/lib/{triple}")));
    }
    dirs.extend(["/lib64", "/usr/lib64", "/lib", "/usr/lib"].map(PathBuf::from));
    let mut unique = Vec::with_capacity(dirs.len());
    for d in dirs {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

fn ld_so_conf(root: &Root, file: &Path, depth: usize, dirs: &mut Vec<PathBuf>) {
    if depth > 4 {
        return;
    }
    let Some(text) = root.read(file) else { return };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            let pattern = Path::new("/etc").join(pattern.trim());
            let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
                continue;
            };
            let name = name.to_string_lossy();
            for entry in root.list(dir) {
                if glob_match(&name, &entry) {
                    ld_so_conf(root, &dir.join(entry), depth + 1, dirs);
                }
            }
        } else if line.starts_with('/') {
            dirs.push(PathBuf::from(line));
        }
    }
}

/// Shell-style `*`/`?` match of a whole file name.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => {
                (0..=n.len()).any(|i| n.get(i..).is_some_and(|tail| go(rest, tail)))
            }
            Some((c, rest)) => match n.split_first() {
                Some((m, tail)) if *c == '?' || c == m => go(rest, tail),
                _ => false,
            },
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// The names cudarc's loader tries for `stem`, on Linux, in its order.
pub fn candidate_names(stem: &str, cuda_major: u32) -> Vec<String> {
    let mut names = vec![format!("lib{stem}.so")];
    for v in [cuda_major, 12, 11, 10, 9, 1] {
        let name = format!("lib{stem}.so.{v}");
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Directories where CUDA libraries often are but the loader may not look.
fn other_dirs(root: &Root, toolkit: &Toolkit) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = toolkit.root.iter().cloned().collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    for name in root.list("/usr/local") {
        if name.starts_with("cuda-") {
            roots.push(Path::new("/usr/local").join(name));
        }
    }
    let mut dirs = Vec::new();
    for r in roots {
        for sub in [
            "lib64",
            "targets/aarch64-linux/lib",
            "targets/sbsa-linux/lib",
            "targets/x86_64-linux/lib",
        ] {
            dirs.push(r.join(sub));
        }
    }
    dirs.extend(
        [
            "/usr/lib/aarch64-linux-gnu/nvidia",
            "/usr/lib/aarch64-linux-gnu/tegra",
        ]
        .map(PathBuf::from),
    );
    dirs
}

pub(crate) fn library(
    root: &Root,
    env: &HostEnv,
    arch: &str,
    toolkit: &Toolkit,
    (name, stem, what): (&'static str, &str, &'static str),
    cuda_major: u32,
    packages: &Packages,
) -> Library {
    let tried = candidate_names(stem, cuda_major);
    let dirs = loader_dirs(root, env, arch);
    let find_in = |dirs: &[PathBuf]| {
        tried.iter().find_map(|n| {
            dirs.iter()
                .map(|d| d.join(n))
                .find(|p| root.join(p).exists())
        })
    };
    let file = find_in(&dirs);
    let others: Vec<PathBuf> = other_dirs(root, toolkit)
        .into_iter()
        .filter(|d| !dirs.contains(d))
        .collect();
    let elsewhere = file.is_none().then(|| find_in(&others)).flatten();
    let prefix = format!("lib{stem}.so.");
    let unloadable = file.is_none().then(|| {
        dirs.iter().chain(&others).find_map(|d| {
            root.list(d)
                .into_iter()
                .find(|n| n.starts_with(&prefix) && !tried.contains(n))
                .map(|n| d.join(n))
        })
    });
    let unloadable = unloadable.flatten();
    let package = packages.for_library(name);
    let fix = if file.is_some() {
        None
    } else if let Some(path) = &elsewhere {
        let dir = path.parent().unwrap_or(Path::new("/")).display();
        Some(format!(
            "{} is not on the dynamic loader's path: add {dir} to LD_LIBRARY_PATH (the kiosk's \
             CUDA drop-in sets /usr/local/cuda/lib64) or to a file in /etc/ld.so.conf.d/ and run \
             ldconfig",
            path.display()
        ))
    } else if let Some(path) = &unloadable {
        Some(format!(
            "{} is present but cudarc does not open that name (it tries {}): install {package}",
            path.display(),
            tried.join(", ")
        ))
    } else {
        Some(format!(
            "not found (tried {}): install {package}",
            tried.join(", ")
        ))
    };
    Library {
        name,
        what,
        file,
        tried,
        elsewhere,
        unloadable,
        package,
        fix,
    }
}

pub(crate) fn toolkit(root: &Root, env: &HostEnv, packages: &Packages) -> Toolkit {
    let nvcc_root = || {
        env.path
            .iter()
            .find(|d| root.join(&d.join("nvcc")).is_file())
            .and_then(|bin| bin.parent())
            .map(|r| (r.to_path_buf(), "nvcc on PATH"))
    };
    let found = env
        .cuda_home
        .clone()
        .map(|p| (p, "CUDA_HOME"))
        .or_else(|| env.cuda_path.clone().map(|p| (p, "CUDA_PATH")))
        .or_else(|| {
            let default = PathBuf::from("/usr/local/cuda");
            root.join(&default)
                .exists()
                .then_some((default, "/usr/local/cuda"))
        })
        .or_else(nvcc_root);
    let include = found.as_ref().and_then(|(r, _)| {
        let mut candidates = vec![r.join("include")];
        let targets = r.join("targets");
        candidates.extend(
            root.list(&targets)
                .into_iter()
                .map(|t| targets.join(t).join("include")),
        );
        candidates
            .into_iter()
            .find(|inc| root.join(&inc.join("cuda_fp16.h")).is_file())
    });
    let dev = format!("cuda-cudart-dev-{}", packages.suffix);
    let in_include = |name: &str| {
        include
            .as_ref()
            .map(|inc| inc.join(name))
            .filter(|p| root.join(p).is_file())
    };
    let cccl = include.as_ref().and_then(|inc| {
        [
            inc.join("cccl"),
            inc.join("libcudacxx/include"),
            inc.clone(),
        ]
        .into_iter()
        .map(|dir| dir.join("cuda/std/cstdint"))
        .find(|p| root.join(p).is_file())
    });
    let headers = vec![
        Header {
            name: "cuda_fp16.h",
            found: in_include("cuda_fp16.h"),
            package: dev.clone(),
        },
        Header {
            name: "math_constants.h",
            found: in_include("math_constants.h"),
            package: dev,
        },
        Header {
            name: "cuda/std/cstdint",
            found: cccl,
            package: format!("cuda-cccl-{}", packages.suffix),
        },
    ];
    Toolkit {
        root: found.as_ref().map(|(p, _)| p.clone()),
        source: found.map(|(_, s)| s.to_string()),
        include,
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cudarc_names_open_cudnn_9_but_not_cudnn_8() {
        let names = candidate_names("cudnn", 12);
        assert_eq!(
            names,
            [
                "libcudnn.so",
                "libcudnn.so.12",
                "libcudnn.so.11",
                "libcudnn.so.10",
                "libcudnn.so.9",
                "libcudnn.so.1"
            ]
        );
        assert!(!names.contains(&"libcudnn.so.8".to_string()));
        assert!(candidate_names("cuda", 12).contains(&"libcuda.so.1".to_string()));
        assert_eq!(candidate_names("cudart", 13)[1], "libcudart.so.13");
    }

    #[test]
    fn ld_so_conf_globs_match_whole_names() {
        assert!(glob_match("*.conf", "cuda-12-6.conf"));
        assert!(!glob_match("*.conf", "cuda.conf.bak"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
    }
}
