//! Jetson identity and power state: board, L4T release (and so JetPack and CUDA version), GPU
//! architecture, nvpmodel power mode and whether `jetson_clocks` pinned the clocks.
//!
//! A Jetson's speed depends on its power mode (Orin Nano: 7 W / 15 W / 25 W "MAXN SUPER";
//! the mode caps CPU and GPU clocks and the number of online cores) and on `jetson_clocks`
//! (clocks pinned at the mode's maximum instead of scaling with load). Numbers without them
//! can not be compared, so the bench and the doctor record both.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::cuda::{CudaVersion, Gpu};
use super::{find_program, run_command, sensors, HostEnv, Root};

/// The current nvpmodel mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerMode {
    pub id: u32,
    /// Its name in `/etc/nvpmodel.conf` (`15W`, `MAXN_SUPER`), or what `nvpmodel -q` printed.
    pub name: Option<String>,
    /// `nvpmodel -q`, `/var/lib/nvpmodel/status`, or `/etc/nvpmodel.conf (default)` when only
    /// the configured default is known.
    pub source: String,
}

/// A mode defined in `/etc/nvpmodel.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerModeDef {
    pub id: u32,
    pub name: String,
}

/// Whether the clocks are pinned (what `jetson_clocks` does: minimum = maximum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClockPinning {
    /// `None`: the cpufreq/devfreq limits could not be read.
    pub pinned: Option<bool>,
    /// The limits it was judged from.
    pub basis: String,
}

/// A Jetson.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JetsonReport {
    /// `/proc/device-tree/model` (`NVIDIA Jetson Orin Nano Engineering Reference Developer Kit`).
    pub model: Option<String>,
    /// The SoC from `/proc/device-tree/compatible` (`tegra234`).
    pub soc: Option<String>,
    /// `R36.4.3` from `/etc/nv_tegra_release`.
    pub l4t: Option<String>,
    /// The JetPack release of that L4T (`6.1/6.2`).
    pub jetpack: Option<String>,
    /// The CUDA version of that JetPack (its driver's CUDA API).
    pub cuda: Option<CudaVersion>,
    pub gpu: Option<Gpu>,
    pub power_mode: Option<PowerMode>,
    pub power_modes: Vec<PowerModeDef>,
    pub jetson_clocks: ClockPinning,
}

/// (SoC, GPU, sm): the integrated GPUs tract-cuda can meet.
const SOCS: &[(&str, &str, Option<u32>)] = &[
    ("tegra234", "Orin (Ampere, ga10b)", Some(87)),
    ("tegra194", "Xavier (Volta, gv11b)", Some(72)),
    ("tegra186", "TX2 (Pascal, gp10b)", Some(62)),
    ("tegra210", "Nano/TX1 (Maxwell, gm20b)", Some(53)),
    ("tegra264", "Thor", None),
];

/// Looks for a Jetson under the root; `None` elsewhere.
pub(crate) fn detect(root: &Root, env: &HostEnv) -> Option<JetsonReport> {
    let compatible: Vec<String> = root
        .read("/proc/device-tree/compatible")
        .map(|t| {
            t.split('\0')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let release = root.read("/etc/nv_tegra_release");
    let tegra = compatible.iter().any(|c| c.starts_with("nvidia,tegra"));
    if !tegra && release.is_none() {
        return None;
    }
    let soc = compatible
        .iter()
        .find_map(|c| c.strip_prefix("nvidia,tegra").map(|n| format!("tegra{n}")));
    let gpu = soc.as_deref().and_then(|s| {
        SOCS.iter()
            .find(|(id, _, _)| *id == s)
            .map(|&(_, name, sm)| Gpu {
                name: name.to_string(),
                sm,
                source: "/proc/device-tree/compatible".to_string(),
            })
    });
    let (l4t, jetpack, cuda) = release
        .as_deref()
        .and_then(parse_tegra_release)
        .map_or((None, None, None), |(l4t, jp, cuda)| {
            (Some(l4t), jp.map(str::to_string), cuda)
        });
    let power_modes = root
        .read("/etc/nvpmodel.conf")
        .map(|t| parse_nvpmodel_conf(&t))
        .unwrap_or_default();
    Some(JetsonReport {
        model: root
            .read("/proc/device-tree/model")
            .map(|m| {
                m.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_string()
            })
            .filter(|m| !m.is_empty()),
        soc,
        l4t,
        jetpack,
        cuda,
        gpu,
        power_mode: power_mode(root, env, &power_modes),
        power_modes: power_modes.modes,
        jetson_clocks: clock_pinning(root),
    })
}

/// `# R36 (release), REVISION: 4.3, GCID: ...` → (`R36.4.3`, JetPack, CUDA).
pub fn parse_tegra_release(
    text: &str,
) -> Option<(String, Option<&'static str>, Option<CudaVersion>)> {
    let line = text.lines().find(|l| l.contains("REVISION"))?;
    let major: u32 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix('R'))?
        .parse()
        .ok()?;
    let revision = line
        .split("REVISION:")
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .to_string();
    let minor: u32 = revision.split('.').next()?.parse().ok()?;
    let (jetpack, cuda) = match (major, minor) {
        (32, _) => (Some("4.x"), Some(CudaVersion::new(10, 2))),
        (34 | 35, _) => (Some("5.x"), Some(CudaVersion::new(11, 4))),
        (36, 0..=3) => (Some("6.0"), Some(CudaVersion::new(12, 2))),
        (36, _) => (Some("6.1/6.2"), Some(CudaVersion::new(12, 6))),
        (38, _) => (Some("7.x"), Some(CudaVersion::new(13, 0))),
        _ => (None, None),
    };
    Some((format!("R{major}.{revision}"), jetpack, cuda))
}

/// The modes and the default of `/etc/nvpmodel.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NvpmodelConf {
    pub modes: Vec<PowerModeDef>,
    pub default: Option<u32>,
}

/// Parses `< POWER_MODEL ID=0 NAME=15W >` and `< PM_CONFIG DEFAULT=0 >` lines.
pub fn parse_nvpmodel_conf(text: &str) -> NvpmodelConf {
    let mut conf = NvpmodelConf::default();
    for line in text.lines() {
        let line = line
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        let value = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        if line.starts_with("POWER_MODEL") {
            if let (Some(id), Some(name)) =
                (value("ID").and_then(|i| i.parse().ok()), value("NAME"))
            {
                conf.modes.push(PowerModeDef { id, name });
            }
        } else if line.starts_with("PM_CONFIG") {
            conf.default = value("DEFAULT").and_then(|d| d.parse().ok());
        }
    }
    conf
}

/// Parses `nvpmodel -q`: `NV Power Mode: 15W` then the mode's number on its own line.
pub fn parse_nvpmodel_query(text: &str) -> Option<(u32, Option<String>)> {
    let name = text.lines().find_map(|l| {
        l.split_once("NV Power Mode:")
            .map(|(_, n)| n.trim().to_string())
            .filter(|n| !n.is_empty())
    });
    let id = text.lines().find_map(|l| l.trim().parse::<u32>().ok())?;
    Some((id, name))
}

fn power_mode(root: &Root, env: &HostEnv, conf: &NvpmodelConf) -> Option<PowerMode> {
    let name_of = |id: u32| {
        conf.modes
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
    };
    if env.run_commands && root.is_host() {
        let mut dirs = env.path.clone();
        dirs.extend(["/usr/sbin", "/usr/bin", "/sbin"].map(Into::into));
        if let Some((id, name)) = find_program(&dirs, "nvpmodel")
            .and_then(|p| run_command(&p, &["-q"], Duration::from_secs(5)))
            .and_then(|t| parse_nvpmodel_query(&t))
        {
            return Some(PowerMode {
                id,
                name: name_of(id).or(name),
                source: "nvpmodel -q".to_string(),
            });
        }
    }
    // "pmode:0002 fmode:quiet" (what nvpmodel persists across boots).
    let status = root.read("/var/lib/nvpmodel/status").and_then(|t| {
        t.split_whitespace()
            .find_map(|w| w.strip_prefix("pmode:"))
            .and_then(|n| n.parse::<u32>().ok())
    });
    if let Some(id) = status {
        return Some(PowerMode {
            id,
            name: name_of(id),
            source: "/var/lib/nvpmodel/status".to_string(),
        });
    }
    conf.default.map(|id| PowerMode {
        id,
        name: name_of(id),
        source: "/etc/nvpmodel.conf (default; current mode unknown)".to_string(),
    })
}

/// `jetson_clocks` sets each clock's minimum to its maximum: compare cpu0's cpufreq limits and
/// the GPU's devfreq limits.
fn clock_pinning(root: &Root) -> ClockPinning {
    let cpu = Path::new("/sys/devices/system/cpu/cpu0/cpufreq");
    let cpu_limits = (
        root.read_i64(cpu.join("scaling_min_freq")),
        root.read_i64(cpu.join("scaling_max_freq")),
    );
    let gpu = sensors::gpu_devfreq(root);
    let gpu_limits = gpu.as_ref().map(|d| {
        (
            root.read_i64(d.join("min_freq")),
            root.read_i64(d.join("max_freq")),
        )
    });
    let mut basis = Vec::new();
    let mut pinned = Vec::new();
    if let (Some(min), Some(max)) = cpu_limits {
        basis.push(format!("cpu0 {min}..{max} kHz"));
        pinned.push(min == max);
    }
    if let Some((Some(min), Some(max))) = gpu_limits {
        basis.push(format!("gpu {min}..{max} Hz"));
        pinned.push(min == max);
    }
    ClockPinning {
        pinned: (!pinned.is_empty()).then(|| pinned.iter().all(|p| *p)),
        basis: if basis.is_empty() {
            "cpufreq/devfreq limits unreadable".to_string()
        } else {
            basis.join(", ")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l4t_releases_map_to_jetpack_and_cuda() {
        let (l4t, jp, cuda) = parse_tegra_release(
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n",
        )
        .unwrap();
        assert_eq!((l4t.as_str(), jp), ("R36.4.3", Some("6.1/6.2")));
        assert_eq!(cuda, Some(CudaVersion::new(12, 6)));
        let (_, jp, cuda) = parse_tegra_release("# R36 (release), REVISION: 3.0, GCID: 1").unwrap();
        assert_eq!((jp, cuda), (Some("6.0"), Some(CudaVersion::new(12, 2))));
        assert!(parse_tegra_release("nonsense").is_none());
    }

    #[test]
    fn nvpmodel_files_parse() {
        let conf = parse_nvpmodel_conf(
            "< POWER_MODEL ID=0 NAME=15W >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=1 NAME=7W >\n\
             < PM_CONFIG DEFAULT=0 >\n",
        );
        assert_eq!(conf.modes.len(), 2);
        assert_eq!(conf.default, Some(0));
        assert_eq!(
            parse_nvpmodel_query("NV Power Mode: 7W\n1\n"),
            Some((1, Some("7W".into())))
        );
        assert_eq!(parse_nvpmodel_query("no mode"), None);
    }
}
