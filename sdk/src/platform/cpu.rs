//! The CPU features tract 0.23.9 chooses its kernels by, from `/proc/cpuinfo`.
//!
//! tract reads the same file on aarch64 (`Features`: `asimdhp` enables its native FP16
//! kernels) and asks CPUID on x86; the `flags` line of `/proc/cpuinfo` reports the same bits.

use serde::Serialize;

use super::Root;

/// One feature and what it means for tract's kernels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuFeature {
    /// The name as `/proc/cpuinfo` spells it (`avx512_vnni`, `asimddp`).
    pub name: &'static str,
    pub present: bool,
    /// What tract runs with it.
    pub used_for: &'static str,
}

/// The CPU as tract will see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuReport {
    /// `x86_64`, `aarch64`, or `unknown` (no `flags`/`Features` line).
    pub arch: String,
    /// `model name` (x86), else the core named from the largest `CPU part` (aarch64).
    pub model: String,
    /// `processor` entries.
    pub cpus: usize,
    pub features: Vec<CpuFeature>,
}

const X86_FEATURES: &[(&str, &str)] = &[
    ("avx2", "256-bit f32 kernels (with fma)"),
    (
        "fma",
        "fused multiply-add f32 kernels: tract's main x86 tier",
    ),
    (
        "f16c",
        "f16 <-> f32 conversion (FP16 runs through f32 kernels on x86: pick fp32)",
    ),
    ("avx512f", "512-bit f32 kernels"),
    (
        "avx512_vnni",
        "INT8 dot-product kernels (avx512vnni_mmm_i32_*)",
    ),
    ("avx_vnni", "INT8 dot-product kernels, 256-bit"),
    (
        "avx512_bf16",
        "bf16 dot products (none of the bundle's fp32/fp16/int8 graphs use them)",
    ),
    ("amx_int8", "AMX tile INT8 kernels"),
];

const ARM_FEATURES: &[(&str, &str)] = &[
    ("asimd", "NEON f32 kernels (ARMv8 baseline)"),
    (
        "asimdhp",
        "native FP16 arithmetic: tract's f16 kernels (Orin's Cortex-A78AE: yes; Nano's A57: no)",
    ),
    ("asimddp", "SDOT/UDOT INT8 dot-product kernels"),
    (
        "i8mm",
        "SMMLA INT8 matrix multiply (reported only: tract 0.23.9 has no i8mm kernel)",
    ),
];

/// Arm core names by `CPU part` (implementer 0x41) for the report.
const ARM_PARTS: &[(&str, &str)] = &[
    ("0xd03", "Cortex-A53"),
    ("0xd04", "Cortex-A35"),
    ("0xd05", "Cortex-A55"),
    ("0xd07", "Cortex-A57"),
    ("0xd08", "Cortex-A72"),
    ("0xd09", "Cortex-A73"),
    ("0xd0a", "Cortex-A75"),
    ("0xd0b", "Cortex-A76"),
    ("0xd0c", "Neoverse-N1"),
    ("0xd0d", "Cortex-A77"),
    ("0xd40", "Neoverse-V1"),
    ("0xd41", "Cortex-A78"),
    ("0xd42", "Cortex-A78AE"),
    ("0xd49", "Neoverse-N2"),
    ("0xd4f", "Neoverse-V2"),
];

/// Reads `/proc/cpuinfo` under the root.
pub(crate) fn detect(root: &Root) -> CpuReport {
    from_cpuinfo(&root.read("/proc/cpuinfo").unwrap_or_default())
}

/// Parses the text of `/proc/cpuinfo` (empty: nothing known).
pub fn from_cpuinfo(cpuinfo: &str) -> CpuReport {
    let field = |key: &str| {
        cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let (arch, table, line) = if let Some(flags) = field("flags") {
        ("x86_64", X86_FEATURES, flags)
    } else if let Some(features) = field("Features") {
        ("aarch64", ARM_FEATURES, features)
    } else {
        ("unknown", &[][..], String::new())
    };
    let present: Vec<&str> = line.split_whitespace().collect();
    let features = table
        .iter()
        .map(|&(name, used_for)| CpuFeature {
            name,
            present: present.contains(&name),
            used_for,
        })
        .collect();
    let part = cpuinfo
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "CPU part").then(|| v.trim().to_string())
        })
        .max();
    let model = field("model name")
        .or_else(|| {
            let part = part?;
            let name = ARM_PARTS
                .iter()
                .find(|(p, _)| p.eq_ignore_ascii_case(&part))
                .map(|(_, n)| (*n).to_string());
            Some(name.unwrap_or_else(|| format!("CPU part {part}")))
        })
        .unwrap_or_else(|| "unknown".to_string());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    CpuReport {
        arch: arch.to_string(),
        model,
        cpus,
        features,
    }
}

impl CpuReport {
    /// Whether feature `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.features.iter().any(|f| f.name == name && f.present)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orin_features_and_core_are_named() {
        let text = "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull \
                    sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp \
                    uscat ilrcpc flagm\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n\n\
                    processor\t: 1\nCPU part\t: 0xd42\n";
        let cpu = from_cpuinfo(text);
        assert_eq!(cpu.arch, "aarch64");
        assert_eq!(cpu.model, "Cortex-A78AE");
        assert_eq!(cpu.cpus, 2);
        assert!(cpu.has("asimdhp") && cpu.has("asimddp") && !cpu.has("i8mm"));
    }

    #[test]
    fn x86_flags_use_cpuinfo_names() {
        let cpu = from_cpuinfo("processor : 0\nmodel name : Test\nflags : fma avx2 avx512_vnni\n");
        assert_eq!((cpu.arch.as_str(), cpu.model.as_str()), ("x86_64", "Test"));
        assert!(cpu.has("avx512_vnni") && !cpu.has("avx512f"));
        assert_eq!(from_cpuinfo("").arch, "unknown");
    }
}
