//! Clocks, temperatures and power rails: what a benchmark's numbers depend on.
//!
//! All from sysfs, readable without root: CPU clocks (`cpufreq/scaling_cur_freq`), the GPU's
//! devfreq clock on a Jetson (`/sys/class/devfreq/*gpu*`, `*ga10b*`), thermal zones
//! (`/sys/class/thermal/thermal_zone*/{type,temp}`) and the Jetson's INA3221 power monitors
//! (`/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_{label,input}`, `curr*_input`). Missing
//! files leave fields empty: a desktop has no rails, a container often no cpufreq.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Root;

/// One thermal zone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThermalZone {
    /// `thermal_zone0`.
    pub zone: String,
    /// Its `type` (`cpu-thermal`, `gpu-thermal`, `tj-thermal`, `x86_pkg_temp`).
    pub kind: String,
    pub celsius: f64,
}

/// One INA3221 channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerRail {
    /// The channel's label (`VDD_IN`, `VDD_CPU_GPU_CV`, `VDD_SOC`), else `in<N>`.
    pub name: String,
    pub millivolts: f64,
    pub milliamps: f64,
    pub milliwatts: f64,
}

/// The GPU's devfreq clock (Jetson).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuClock {
    /// The devfreq device (`17000000.gpu`).
    pub device: String,
    pub cur_mhz: Option<f64>,
    pub min_mhz: Option<f64>,
    pub max_mhz: Option<f64>,
}

/// A snapshot of clocks, temperatures and power.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Telemetry {
    /// Current clock of each CPU (`cpu0`, `cpu1`, ...), MHz; CPUs without cpufreq are left out.
    pub cpu_mhz: Vec<f64>,
    pub gpu: Option<GpuClock>,
    pub thermal: Vec<ThermalZone>,
    pub rails: Vec<PowerRail>,
}

impl Telemetry {
    /// The hottest zone, °C.
    pub fn max_celsius(&self) -> Option<f64> {
        self.thermal.iter().map(|z| z.celsius).reduce(f64::max)
    }

    /// The mean CPU clock, MHz.
    pub fn mean_cpu_mhz(&self) -> Option<f64> {
        (!self.cpu_mhz.is_empty())
            .then(|| self.cpu_mhz.iter().sum::<f64>() / self.cpu_mhz.len() as f64)
    }

    /// The board's input power (`VDD_IN`, else the sum of the rails), mW.
    pub fn input_milliwatts(&self) -> Option<f64> {
        self.rails
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case("VDD_IN"))
            .map(|r| r.milliwatts)
            .or_else(|| {
                (!self.rails.is_empty()).then(|| self.rails.iter().map(|r| r.milliwatts).sum())
            })
    }

    /// One line: clocks, the hottest zone, input power.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(mhz) = self.mean_cpu_mhz() {
            parts.push(format!("cpu {mhz:.0} MHz (mean of {})", self.cpu_mhz.len()));
        }
        if let Some(mhz) = self.gpu.as_ref().and_then(|g| g.cur_mhz) {
            parts.push(format!("gpu {mhz:.0} MHz"));
        }
        if let Some(t) = self.max_celsius() {
            let zone = self
                .thermal
                .iter()
                .find(|z| z.celsius == t)
                .map(|z| z.kind.as_str())
                .unwrap_or("");
            parts.push(format!("hottest {t:.1} °C ({zone})"));
        }
        if let Some(mw) = self.input_milliwatts() {
            parts.push(format!("{:.2} W in", mw / 1000.0));
        }
        if parts.is_empty() {
            "no clock, thermal or power sensors readable".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// Reads every sensor under `sysroot`.
pub fn read_under(sysroot: &Path) -> Telemetry {
    read(&Root::new(sysroot))
}

/// Reads every sensor of this machine.
pub fn read_host() -> Telemetry {
    read_under(Path::new("/"))
}

pub(crate) fn read(root: &Root) -> Telemetry {
    Telemetry {
        cpu_mhz: cpu_mhz(root),
        gpu: gpu_clock(root),
        thermal: thermal(root),
        rails: rails(root),
    }
}

fn cpu_mhz(root: &Root) -> Vec<f64> {
    let base = Path::new("/sys/devices/system/cpu");
    root.list(base)
        .into_iter()
        .filter(|n| {
            n.strip_prefix("cpu")
                .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
        })
        .filter_map(|cpu| root.read_i64(base.join(cpu).join("cpufreq/scaling_cur_freq")))
        .map(|khz| khz as f64 / 1000.0)
        .collect()
}

/// The GPU's devfreq device: Jetson names it after the GPU (`17000000.gpu` on L4T 36,
/// `17000000.ga10b` on 35, `gv11b`/`gp10b`/`gm20b` on older boards).
pub(crate) fn gpu_devfreq(root: &Root) -> Option<PathBuf> {
    let base = Path::new("/sys/class/devfreq");
    root.list(base)
        .into_iter()
        .find(|n| {
            let n = n.to_ascii_lowercase();
            ["gpu", "ga10b", "gv11b", "gp10b", "gm20b"]
                .iter()
                .any(|k| n.contains(k))
        })
        .map(|n| base.join(n))
}

fn gpu_clock(root: &Root) -> Option<GpuClock> {
    let dir = gpu_devfreq(root)?;
    let mhz = |file: &str| root.read_i64(dir.join(file)).map(|hz| hz as f64 / 1e6);
    Some(GpuClock {
        device: dir.file_name()?.to_string_lossy().into_owned(),
        cur_mhz: mhz("cur_freq"),
        min_mhz: mhz("min_freq"),
        max_mhz: mhz("max_freq"),
    })
}

fn thermal(root: &Root) -> Vec<ThermalZone> {
    let base = Path::new("/sys/class/thermal");
    root.list(base)
        .into_iter()
        .filter(|n| n.starts_with("thermal_zone"))
        .filter_map(|zone| {
            let dir = base.join(&zone);
            let milli = root.read_i64(dir.join("temp"))?;
            // Jetsons report absent sensors as -256000 (or other large negatives).
            if milli < -100_000 {
                return None;
            }
            Some(ThermalZone {
                kind: root
                    .read_value(dir.join("type"))
                    .unwrap_or_else(|| zone.clone()),
                zone,
                celsius: milli as f64 / 1000.0,
            })
        })
        .collect()
}

fn rails(root: &Root) -> Vec<PowerRail> {
    let base = Path::new("/sys/bus/i2c/drivers/ina3221");
    let mut out = Vec::new();
    for device in root.list(base) {
        let hwmon_dir = base.join(&device).join("hwmon");
        for hwmon in root.list(&hwmon_dir) {
            let dir = hwmon_dir.join(hwmon);
            let channels: Vec<String> = root
                .list(&dir)
                .into_iter()
                .filter_map(|f| {
                    let n = f.strip_prefix("in")?.strip_suffix("_input")?;
                    (!n.is_empty() && n.chars().all(|c| c.is_ascii_digit())).then(|| n.to_string())
                })
                .collect();
            for n in channels {
                let (Some(mv), Some(ma)) = (
                    root.read_i64(dir.join(format!("in{n}_input"))),
                    root.read_i64(dir.join(format!("curr{n}_input"))),
                ) else {
                    continue;
                };
                let name = root
                    .read_value(dir.join(format!("in{n}_label")))
                    .unwrap_or_else(|| format!("in{n}"));
                let (mv, ma) = (mv as f64, ma as f64);
                out.push(PowerRail {
                    name,
                    millivolts: mv,
                    milliamps: ma,
                    milliwatts: mv * ma / 1000.0,
                });
            }
        }
    }
    out
}
