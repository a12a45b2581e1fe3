//! Small measurement helpers: percentiles, the machine description, peak resident memory.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use transfusion_sdk::platform::cuda::Gpu;
use transfusion_sdk::platform::{self, HostEnv, JetsonReport, Telemetry};

/// Milliseconds of `d` as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Linear-interpolation percentile (`q` in `[0, 1]`) of `values`, numpy's default rule (the
/// onnxruntime script uses the same one); `None` for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    // `lo <= hi <= len - 1` since `pos` lies in `[0, len - 1]`.
    let (a, b) = (*sorted.get(lo)?, *sorted.get(hi)?);
    Some(a + (b - a) * (pos - lo as f64))
}

/// The median of `values`, 0 when there are none.
pub fn p50(values: &[f64]) -> f64 {
    percentile(values, 0.5).unwrap_or(0.0)
}

/// The 90th percentile of `values`, 0 when there are none.
pub fn p90(values: &[f64]) -> f64 {
    percentile(values, 0.9).unwrap_or(0.0)
}

/// Where the numbers were measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// `model name` of `/proc/cpuinfo` (x86) or its `Hardware`/`CPU part` line; `unknown`
    /// elsewhere.
    pub cpu_model: String,
    /// x86 `cpu family` and `model` numbers (they tell CPU generations apart when the model
    /// name is generic, e.g. a virtual machine's "AMD EPYC").
    pub cpu_id: Option<String>,
    /// `processor` entries in `/proc/cpuinfo` (what `nproc --all` counts), else the same as
    /// `available_parallelism`.
    pub logical_cpus: usize,
    /// CPUs this process may run on (`std::thread::available_parallelism`, like `nproc`).
    pub available_parallelism: usize,
    /// SIMD features relevant to tract's and onnxruntime's kernels (AVX2, FMA, AVX-512, VNNI,
    /// F16C; NEON dot product and FP16 on aarch64).
    pub cpu_flags: Vec<String>,
    pub os: String,
    pub arch: String,
    /// The GPU `--device cuda` runs on (`nvidia-smi`, or the Jetson's device tree).
    pub gpu: Option<Gpu>,
    /// On a Jetson: board, L4T/JetPack release, nvpmodel power mode and whether
    /// `jetson_clocks` pinned the clocks. Orin figures mean nothing without them.
    pub jetson: Option<JetsonReport>,
    /// Clocks, temperatures and power rails when the machine was described (the start of the
    /// run; reports keep an end snapshot too).
    pub telemetry: Telemetry,
}

/// CPU flags worth reporting (x86 `flags`, aarch64 `Features`).
const INTERESTING_FLAGS: &[&str] = &[
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "asimd",
    "asimdhp",
    "fphp",
    "asimddp",
    "i8mm",
    "sve",
];

impl Machine {
    /// Describes this machine: `/proc/cpuinfo`, the standard library, and the preflight's GPU,
    /// Jetson power state and sensors (`transfusion_sdk::platform`).
    pub fn detect() -> Self {
        Self::detect_with(platform::preflight_host(), Path::new("/"))
    }

    /// [`Machine::detect`] from the files under `sysroot` (tests: a fake Jetson), running no
    /// commands.
    pub fn detect_in(sysroot: &Path) -> Self {
        Self::detect_with(platform::preflight(sysroot, &HostEnv::default()), sysroot)
    }

    fn detect_with(preflight: platform::Preflight, sysroot: &Path) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpuinfo = std::fs::read_to_string(sysroot.join("proc/cpuinfo")).unwrap_or_default();
        Machine {
            gpu: preflight.cuda.gpu,
            jetson: preflight.jetson,
            telemetry: preflight.telemetry,
            ..Self::from_cpuinfo(&cpuinfo, parallelism)
        }
    }

    /// Parses the text of `/proc/cpuinfo` (empty when unavailable).
    pub fn from_cpuinfo(cpuinfo: &str, available_parallelism: usize) -> Self {
        let field = |key: &str| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        let cpu_model = field("model name")
            .or_else(|| field("Hardware"))
            .or_else(|| field("CPU part").map(|p| format!("CPU part {p}")))
            .unwrap_or_else(|| "unknown".to_string());
        let cpu_id = match (field("cpu family"), field("model")) {
            (Some(f), Some(m)) => Some(format!("family {f} model {m}")),
            _ => None,
        };
        let processors = cpuinfo
            .lines()
            .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
            .count();
        let flags_line = field("flags").or_else(|| field("Features"));
        let present: Vec<&str> = flags_line
            .as_deref()
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        let cpu_flags = INTERESTING_FLAGS
            .iter()
            .filter(|f| present.contains(f))
            .map(|f| f.to_string())
            .collect();
        Machine {
            cpu_model,
            cpu_id,
            logical_cpus: if processors > 0 {
                processors
            } else {
                available_parallelism
            },
            available_parallelism,
            cpu_flags,
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            gpu: None,
            jetson: None,
            telemetry: Telemetry::default(),
        }
    }

    /// The Jetson's power state in one line (`None` off a Jetson): board, L4T, power mode,
    /// clock pinning.
    pub fn power_state(&self) -> Option<String> {
        let j = self.jetson.as_ref()?;
        let mode = j.power_mode.as_ref().map_or_else(
            || "power mode unknown".to_string(),
            |m| {
                format!(
                    "power mode {} ({})",
                    m.id,
                    m.name.as_deref().unwrap_or("unnamed")
                )
            },
        );
        let clocks = match j.jetson_clocks.pinned {
            Some(true) => "clocks pinned (jetson_clocks)",
            Some(false) => "clocks scaling (no jetson_clocks)",
            None => "clock pinning unknown",
        };
        Some(format!(
            "{}, L4T {}, {mode}, {clocks}",
            j.model.as_deref().unwrap_or("Jetson"),
            j.l4t.as_deref().unwrap_or("?")
        ))
    }

    /// One line for the human report.
    pub fn describe(&self) -> String {
        let id = self
            .cpu_id
            .as_ref()
            .map(|i| format!(" ({i})"))
            .unwrap_or_default();
        let mut line = format!(
            "{}{id}, {} logical CPUs ({} available), {}/{}, flags: {}",
            self.cpu_model,
            self.logical_cpus,
            self.available_parallelism,
            self.os,
            self.arch,
            if self.cpu_flags.is_empty() {
                "-".to_string()
            } else {
                self.cpu_flags.join(" ")
            }
        );
        if let Some(gpu) = &self.gpu {
            let sm = gpu.sm.map(|sm| format!(" sm_{sm}")).unwrap_or_default();
            line.push_str(&format!("; GPU {}{sm}", gpu.name));
        }
        if let Some(power) = self.power_state() {
            line.push_str(&format!("; {power}"));
        }
        line.push_str(&format!("; {}", self.telemetry.describe()));
        line
    }
}

/// A `/proc/self/status` value in kB (`VmHWM`, `VmRSS`) as MiB; `None` off Linux.
fn status_mib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: f64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb / 1024.0)
    })
}

/// Peak resident set size of this process so far (`VmHWM`), MiB; `None` off Linux.
pub fn peak_rss_mb() -> Option<f64> {
    status_mib("VmHWM")
}

/// Current resident set size (`VmRSS`), MiB; `None` off Linux.
pub fn rss_mb() -> Option<f64> {
    status_mib("VmRSS")
}

/// Resets the peak RSS to the current RSS (`echo 5 > /proc/self/clear_refs`, Linux ≥ 4.0), so
/// each configuration reports its own peak; returns whether that worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        assert!((p90(&v) - 3.7).abs() < 1e-12);
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(p50(&[7.0]), 7.0);
    }

    #[test]
    fn cpuinfo_is_parsed() {
        let text = "processor\t: 0\nmodel name\t: Test CPU\ncpu family\t: 26\nmodel\t\t: 2\n\
                    flags\t\t: fpu avx2 fma avx512f\n\nprocessor\t: 1\nmodel name\t: Test CPU\n";
        let m = Machine::from_cpuinfo(text, 2);
        assert_eq!(m.cpu_model, "Test CPU");
        assert_eq!(m.cpu_id.as_deref(), Some("family 26 model 2"));
        assert_eq!(m.logical_cpus, 2);
        assert_eq!(m.cpu_flags, ["avx2", "fma", "avx512f"]);
        let empty = Machine::from_cpuinfo("", 3);
        assert_eq!(
            (empty.cpu_model.as_str(), empty.logical_cpus),
            ("unknown", 3)
        );
    }
}
