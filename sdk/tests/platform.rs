//! The preflight (`transfusion_sdk::platform`) against fake root filesystems built in a
//! temporary directory: a JetPack 6.1 Orin with the CUDA packages (cuDNN 9's runtime package
//! alone is enough: cudarc 0.19.10 opens `libcudnn.so.9`), the same with each piece missing or
//! misplaced, a JetPack 6.0 board (cuDNN 8's `libcudnn.so.8`, which cudarc does not open) under
//! a too-new build, a desktop driver, and a machine with no GPU at all.

use std::path::{Path, PathBuf};

use transfusion_sdk::platform::{self, CudaVersion, HostEnv, Preflight};

fn put(root: &Path, path: &str, content: &str) {
    let full = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, content).unwrap();
}

fn dir(root: &Path, path: &str) {
    std::fs::create_dir_all(root.join(path.trim_start_matches('/'))).unwrap();
}

const ORIN_CPUINFO: &str = "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes \
    pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc \
    flagm paca pacg\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n\nprocessor\t: 1\n\
    CPU part\t: 0xd42\n";

const CUDA_LIB: &str = "/usr/local/cuda-12.6/targets/aarch64-linux/lib";

/// A JetPack 6.1 Orin Nano with the driver, cudart, NVRTC, cuBLAS, the headers, and cuDNN 9's
/// runtime package (`libcudnn.so.9`; no `-dev` package, so no `libcudnn.so`).
fn orin(root: &Path) {
    put(root, "/proc/cpuinfo", ORIN_CPUINFO);
    put(
        root,
        "/proc/device-tree/compatible",
        "nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0",
    );
    put(
        root,
        "/proc/device-tree/model",
        "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\0",
    );
    put(
        root,
        "/etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: x\n",
    );
    put(
        root,
        "/etc/nvpmodel.conf",
        "< POWER_MODEL ID=0 NAME=15W >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=1 NAME=7W >\n\
         < POWER_MODEL ID=2 NAME=MAXN_SUPER >\n< PM_CONFIG DEFAULT=2 >\n",
    );
    put(root, "/var/lib/nvpmodel/status", "pmode:0001 fmode:quiet\n");
    put(
        root,
        "/etc/ld.so.conf",
        "include /etc/ld.so.conf.d/*.conf\n",
    );
    put(
        root,
        "/etc/ld.so.conf.d/nvidia-tegra.conf",
        "/usr/lib/aarch64-linux-gnu/nvidia\n",
    );
    put(
        root,
        "/etc/ld.so.conf.d/988_cuda-12.conf",
        &format!("{CUDA_LIB}\n"),
    );
    put(root, "/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1", "");
    for lib in [
        "libcudart.so.12",
        "libnvrtc.so.12",
        "libcublas.so.12",
        "libcublasLt.so.12",
    ] {
        put(root, &format!("{CUDA_LIB}/{lib}"), "");
    }
    put(root, "/usr/lib/aarch64-linux-gnu/libcudnn.so.9", "");
    for header in ["cuda_fp16.h", "math_constants.h", "cuda/std/cstdint"] {
        put(root, &format!("/usr/local/cuda/include/{header}"), "");
    }
    put(root, "/dev/nvmap", "");
    put(root, "/dev/nvgpu/igpu0/ctrl", "");
    put(
        root,
        "/sys/class/thermal/thermal_zone0/type",
        "cpu-thermal\n",
    );
    put(root, "/sys/class/thermal/thermal_zone0/temp", "47250\n");
    put(
        root,
        "/sys/class/thermal/thermal_zone1/type",
        "gpu-thermal\n",
    );
    put(root, "/sys/class/thermal/thermal_zone1/temp", "45500\n");
    put(
        root,
        "/sys/class/thermal/thermal_zone2/type",
        "cv0-thermal\n",
    );
    put(root, "/sys/class/thermal/thermal_zone2/temp", "-256000\n");
    for cpu in ["cpu0", "cpu1"] {
        let d = format!("/sys/devices/system/cpu/{cpu}/cpufreq");
        put(root, &format!("{d}/scaling_cur_freq"), "729600\n");
        put(root, &format!("{d}/scaling_min_freq"), "729600\n");
        put(root, &format!("{d}/scaling_max_freq"), "1510400\n");
    }
    let gpu = "/sys/class/devfreq/17000000.gpu";
    put(root, &format!("{gpu}/cur_freq"), "306000000\n");
    put(root, &format!("{gpu}/min_freq"), "306000000\n");
    put(root, &format!("{gpu}/max_freq"), "624750000\n");
    let hwmon = "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1";
    put(root, &format!("{hwmon}/in1_label"), "VDD_IN\n");
    put(root, &format!("{hwmon}/in1_input"), "5072\n");
    put(root, &format!("{hwmon}/curr1_input"), "1184\n");
    put(root, &format!("{hwmon}/in2_label"), "VDD_CPU_GPU_CV\n");
    put(root, &format!("{hwmon}/in2_input"), "5064\n");
    put(root, &format!("{hwmon}/curr2_input"), "320\n");
}

/// These fixtures are CUDA 12 boards: a build bound to CUDA 13 (`cuda-13000`, the GPU CI's)
/// looks for `.so.13` names there and is rightly refused, so the tests that expect a usable
/// board only run in CPU-only and CUDA 12 builds.
fn cuda_12_names() -> bool {
    let ok = platform::cuda::BUILD.is_none_or(|b| b.major == 12);
    if !ok {
        eprintln!("skipped: this build looks for CUDA 13 library names; the fixtures are CUDA 12");
    }
    ok
}

fn env() -> HostEnv {
    HostEnv::default()
}

fn check(root: &Path) -> Preflight {
    platform::preflight(root, &env())
}

/// The problems apart from "built without CUDA" (this test binary may or may not have the
/// `cuda` feature).
fn problems(p: &Preflight) -> Vec<String> {
    p.cuda_problems()
        .into_iter()
        .filter(|m| !m.contains("built without CUDA"))
        .collect()
}

fn lib<'a>(p: &'a Preflight, name: &str) -> &'a platform::cuda::Library {
    p.cuda.libraries.iter().find(|l| l.name == name).unwrap()
}

#[test]
fn orin_with_the_jetpack_packages_is_ready_and_described() {
    if !cuda_12_names() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    orin(tmp.path());
    let p = check(tmp.path());

    // cuDNN 9's runtime package is enough: cudarc 0.19.10 opens libcudnn.so.9.
    let cudnn = lib(&p, "cudnn");
    assert_eq!(
        cudnn.file.as_deref(),
        Some(Path::new("/usr/lib/aarch64-linux-gnu/libcudnn.so.9"))
    );
    assert_eq!((&cudnn.fix, &cudnn.unloadable), (&None, &None));
    assert_eq!(problems(&p), Vec::<String>::new());

    // Everything else was found where the loader looks.
    assert_eq!(
        lib(&p, "driver").file.as_deref(),
        Some(Path::new("/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1"))
    );
    assert_eq!(
        lib(&p, "cublasLt").file,
        Some(PathBuf::from(CUDA_LIB).join("libcublasLt.so.12"))
    );
    assert_eq!(lib(&p, "nvrtc").package, "cuda-nvrtc-12-6");
    assert!(p.cuda.toolkit.headers.iter().all(|h| h.found.is_some()));
    assert_eq!(p.cuda.toolkit.source.as_deref(), Some("/usr/local/cuda"));
    assert!(p.cuda.packages.contains(&"libcudnn9-cuda-12".to_string()));
    assert!(!p.cuda.packages.iter().any(|p| p.contains("-dev-cuda")));
    assert!(p.cuda.packages.contains(&"cuda-cccl-12-6".to_string()));

    // The CPU tract will see: Orin's A78AE with FP16 and dot product.
    assert_eq!(p.cpu.model, "Cortex-A78AE");
    assert!(p.cpu.has("asimdhp") && p.cpu.has("asimddp") && !p.cpu.has("i8mm"));

    // The board and its power state.
    let j = p.jetson.as_ref().unwrap();
    assert_eq!(j.l4t.as_deref(), Some("R36.4.3"));
    assert_eq!(j.jetpack.as_deref(), Some("6.1/6.2"));
    assert_eq!(j.cuda, Some(CudaVersion::new(12, 6)));
    assert_eq!(j.soc.as_deref(), Some("tegra234"));
    let gpu = p.cuda.gpu.as_ref().unwrap();
    assert_eq!((gpu.sm, gpu.flash_attention()), (Some(87), Some(true)));
    let mode = j.power_mode.as_ref().unwrap();
    assert_eq!((mode.id, mode.name.as_deref()), (1, Some("7W")));
    assert_eq!(mode.source, "/var/lib/nvpmodel/status");
    assert_eq!(j.power_modes.len(), 3);
    assert_eq!(j.jetson_clocks.pinned, Some(false));
    assert!(j
        .model
        .as_deref()
        .unwrap()
        .starts_with("NVIDIA Jetson Orin Nano"));

    // Sensors: the -256000 placeholder zone is dropped; power is V × I.
    let t = &p.telemetry;
    assert_eq!(t.thermal.len(), 2);
    assert_eq!(t.max_celsius(), Some(47.25));
    assert_eq!(t.cpu_mhz, [729.6, 729.6]);
    assert_eq!(t.gpu.as_ref().unwrap().cur_mhz, Some(306.0));
    let vdd_in = t.input_milliwatts().unwrap();
    assert!((vdd_in - 5072.0 * 1184.0 / 1000.0).abs() < 1e-6, "{vdd_in}");
    assert_eq!(t.rails.len(), 2);

    let text = p.to_text();
    for line in [
        "[ok] cudnn     /usr/lib/aarch64-linux-gnu/libcudnn.so.9",
        "[ok] asimdhp",
        "power mode: 1 (7W) from /var/lib/nvpmodel/status",
        "L4T R36.4.3 = JetPack 6.1/6.2, CUDA 12.6; SoC tegra234",
        "clocks: scaling (jetson_clocks not active)",
        "rail VDD_IN: 5.072 V, 1.184 A, 6.01 W",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn orin_with_everything_installed_is_ready() {
    if !cuda_12_names() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    orin(tmp.path());
    // libcudnn9-dev-cuda-12 adds the unversioned name.
    put(tmp.path(), "/usr/lib/aarch64-linux-gnu/libcudnn.so", "");
    // jetson_clocks: minimum = maximum.
    for cpu in ["cpu0", "cpu1"] {
        let d = format!("/sys/devices/system/cpu/{cpu}/cpufreq");
        put(tmp.path(), &format!("{d}/scaling_min_freq"), "1510400\n");
    }
    put(
        tmp.path(),
        "/sys/class/devfreq/17000000.gpu/min_freq",
        "624750000\n",
    );
    let mut p = check(tmp.path());
    assert_eq!(problems(&p), Vec::<String>::new());
    assert_eq!(
        lib(&p, "cudnn").file.as_deref(),
        Some(Path::new("/usr/lib/aarch64-linux-gnu/libcudnn.so"))
    );
    assert_eq!(p.jetson.as_ref().unwrap().jetson_clocks.pinned, Some(true));
    // A cuda-12000 build runs on it, as does a cuda-12060 one.
    for build in [CudaVersion::new(12, 0), CudaVersion::new(12, 6)] {
        p.cuda.build = Some(build);
        assert!(p.cuda_ready(), "{:?}", p.cuda_problems());
    }
}

#[test]
fn missing_libraries_and_headers_name_their_packages() {
    if !cuda_12_names() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    put(root, "/proc/cpuinfo", ORIN_CPUINFO);
    put(root, "/proc/device-tree/compatible", "nvidia,tegra234\0");
    put(
        root,
        "/etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.0, GCID: 1\n",
    );
    put(root, "/usr/lib/aarch64-linux-gnu/libcuda.so.1", "");
    put(root, "/dev/nvmap", "");
    put(root, "/dev/nvhost-ctrl-gpu", "");
    let p = check(root);
    let all = problems(&p);
    let find = |needle: &str| all.iter().any(|m| m.contains(needle));
    assert!(lib(&p, "driver").file.is_some());
    assert!(
        find("cudart (CUDA runtime): not found (tried libcudart.so, libcudart.so.12"),
        "{all:#?}"
    );
    assert!(find("install cuda-cudart-12-6"), "{all:#?}");
    assert!(find("install cuda-nvrtc-12-6"), "{all:#?}");
    assert!(find("install libcublas-12-6"), "{all:#?}");
    assert!(find("cudnn (convolutions): not found"), "{all:#?}");
    assert!(
        find("install libcudnn9-cuda-12 (provides libcudnn.so.9)"),
        "{all:#?}"
    );
    assert!(
        find("no CUDA toolkit directory for NVRTC's headers")
            && find("install cuda-cudart-dev-12-6 and cuda-cccl-12-6"),
        "{all:#?}"
    );
    assert!(!find("device node"), "{all:#?}");

    // A toolkit without CCCL: that one header is missing.
    for header in ["cuda_fp16.h", "math_constants.h"] {
        put(root, &format!("/opt/cuda/include/{header}"), "");
    }
    let with_home = HostEnv {
        cuda_home: Some("/opt/cuda".into()),
        ..env()
    };
    let p = platform::preflight(root, &with_home);
    assert_eq!(p.cuda.toolkit.source.as_deref(), Some("CUDA_HOME"));
    let all = problems(&p);
    assert!(
        all.iter().any(|m| m
            == "NVRTC header cuda/std/cstdint missing under /opt/cuda/include (toolkit root \
                from CUDA_HOME): install cuda-cccl-12-6"),
        "{all:#?}"
    );
    assert!(!all.iter().any(|m| m.contains("cuda_fp16.h")), "{all:#?}");
}

#[test]
fn a_library_off_the_loader_path_says_how_to_add_it() {
    if !cuda_12_names() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    orin(tmp.path());
    put(tmp.path(), "/usr/lib/aarch64-linux-gnu/libcudnn.so", "");
    // No 988_cuda-12.conf: the CUDA libraries are not on the loader's path.
    std::fs::remove_file(tmp.path().join("etc/ld.so.conf.d/988_cuda-12.conf")).unwrap();
    let p = check(tmp.path());
    let cudart = lib(&p, "cudart");
    assert_eq!(cudart.file, None);
    assert_eq!(
        cudart.elsewhere,
        Some(PathBuf::from(CUDA_LIB).join("libcudart.so.12"))
    );
    assert!(
        cudart.fix.as_deref().unwrap().contains("LD_LIBRARY_PATH"),
        "{cudart:?}"
    );
    // LD_LIBRARY_PATH (what the kiosk's drop-in sets) fixes it.
    let with_path = HostEnv {
        ld_library_path: vec![CUDA_LIB.into()],
        ..env()
    };
    let p = platform::preflight(tmp.path(), &with_path);
    assert_eq!(problems(&p), Vec::<String>::new());
}

#[test]
fn jetpack_6_0_under_a_cuda_12_6_build_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    orin(tmp.path());
    put(
        tmp.path(),
        "/etc/nv_tegra_release",
        "# R36 (release), REVISION: 3.0, GCID: 1\n",
    );
    // JetPack 6.0 ships cuDNN 8.9, whose soname cudarc does not open.
    let cudnn9 = tmp.path().join("usr/lib/aarch64-linux-gnu/libcudnn.so.9");
    std::fs::rename(&cudnn9, cudnn9.with_extension("8")).unwrap();
    let mut p = check(tmp.path());
    assert_eq!(p.jetson.as_ref().unwrap().jetpack.as_deref(), Some("6.0"));
    assert_eq!(lib(&p, "nvrtc").package, "cuda-nvrtc-12-2");
    let cudnn = lib(&p, "cudnn");
    assert_eq!(
        cudnn.unloadable.as_deref(),
        Some(Path::new("/usr/lib/aarch64-linux-gnu/libcudnn.so.8"))
    );
    let fix = cudnn.fix.as_deref().unwrap();
    assert!(
        fix.contains("libcudnn.so.8 is present but cudarc does not open that name"),
        "{fix}"
    );
    assert!(
        fix.contains("install libcudnn8-dev (provides libcudnn.so"),
        "{fix}"
    );
    p.cuda.build = Some(CudaVersion::new(12, 6));
    let all = p.cuda_problems();
    assert!(
        all.iter()
            .any(|m| m.contains("the driver supports CUDA 12.2")
                && m.contains("`cuda-12060`")
                && m.contains("rebuild with `cuda-12000`")),
        "{all:#?}"
    );
    p.cuda.build = Some(CudaVersion::new(12, 0));
    assert!(!p
        .cuda_problems()
        .iter()
        .any(|m| m.contains("driver supports")));
}

#[test]
fn the_toolkit_is_found_where_tract_cuda_looks() {
    if !cuda_12_names() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    orin(tmp.path());
    // CUDA_HOME wins even when it names nothing; /usr/local/cuda is then not looked at.
    let wrong = HostEnv {
        cuda_home: Some("/opt/missing".into()),
        ..env()
    };
    let all = problems(&platform::preflight(tmp.path(), &wrong));
    assert!(
        all.iter().any(|m| m
            .contains("neither /opt/missing/include nor /opt/missing/targets/*/include")
            && m.contains("from CUDA_HOME")
            && m.contains("or fix that variable")),
        "{all:#?}"
    );
    // Headers under targets/<arch>/include only (a toolkit without the include link), CCCL
    // in its CUDA 13 place.
    for h in ["cuda_fp16.h", "math_constants.h", "cccl/cuda/std/cstdint"] {
        put(
            tmp.path(),
            &format!("/opt/cuda-13/targets/sbsa-linux/include/{h}"),
            "",
        );
    }
    let in_targets = HostEnv {
        cuda_path: Some("/opt/cuda-13".into()),
        ..env()
    };
    let p = platform::preflight(tmp.path(), &in_targets);
    assert_eq!(problems(&p), Vec::<String>::new());
    assert_eq!(
        p.cuda.toolkit.include.as_deref(),
        Some(Path::new("/opt/cuda-13/targets/sbsa-linux/include"))
    );
    let cccl = p
        .cuda
        .toolkit
        .headers
        .iter()
        .find(|h| h.name == "cuda/std/cstdint")
        .unwrap();
    assert_eq!(
        cccl.found.as_deref(),
        Some(Path::new(
            "/opt/cuda-13/targets/sbsa-linux/include/cccl/cuda/std/cstdint"
        ))
    );
}

#[test]
fn the_kernel_cache_follows_tract_cudas_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = |cache_home: Option<&str>, home: Option<&str>| {
        let env = HostEnv {
            cache_home: cache_home.map(Into::into),
            home: home.map(Into::into),
            ..env()
        };
        platform::preflight(tmp.path(), &env)
            .cuda
            .kernel_cache
            .unwrap()
    };
    // The unit's XDG_CACHE_HOME; a relative one is ignored (XDG), then HOME, then ./.cache.
    assert_eq!(
        cache(Some("/var/cache/transfusion"), Some("/var/lib/transfusion")),
        Path::new("/var/cache/transfusion/tract")
    );
    assert_eq!(
        cache(Some("rel"), Some("/home/k")),
        Path::new("/home/k/.cache/tract")
    );
    assert_eq!(cache(None, None), Path::new(".cache/tract"));
    // In a fake root writability is not probed; on the host it is, and a failure is a
    // problem (tract-cuda loads its compiled kernels from there).
    let mut p = check(tmp.path());
    assert_eq!(p.cuda.kernel_cache_writable, None);
    p.cuda.kernel_cache_writable = Some(false);
    assert!(p
        .cuda_problems()
        .iter()
        .any(|m| m.contains("kernel cache") && m.contains("CacheDirectory=transfusion")));
}

#[test]
fn desktop_driver_version_and_nodes_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    put(
        root,
        "/proc/cpuinfo",
        "processor : 0\nmodel name : Test Xeon\nflags : fma avx2 avx512f\n",
    );
    put(
        root,
        "/proc/driver/nvidia/version",
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n",
    );
    put(root, "/dev/nvidiactl", "");
    put(root, "/dev/nvidia0", "");
    put(root, "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "");
    dir(root, "/usr/local/cuda/include");
    let mut p = check(root);
    assert!(p.jetson.is_none());
    assert_eq!(p.cuda.driver.version.as_deref(), Some("535.183.01"));
    assert_eq!(p.cuda.driver.cuda, Some(CudaVersion::new(12, 2)));
    assert!(p
        .cuda
        .device_nodes
        .iter()
        .all(|n| n.present && n.error.is_none()));
    assert!(p.cpu.has("avx512f") && !p.cpu.has("avx512_vnni"));
    p.cuda.build = Some(CudaVersion::new(13, 0));
    let all = p.cuda_problems();
    assert!(
        all.iter()
            .any(|m| m.contains("the driver supports CUDA 12.2 (535.183.01")),
        "{all:#?}"
    );
    // Toolkit packages follow the build's CUDA version, else the driver's.
    let suffix = platform::cuda::BUILD
        .unwrap_or(CudaVersion::new(12, 2))
        .package_suffix();
    let nvrtc = format!("cuda-nvrtc-{suffix}");
    assert!(all.iter().any(|m| m.contains(&nvrtc)), "{all:#?}");
}

#[test]
fn no_gpu_is_the_first_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let p = check(tmp.path());
    let all = problems(&p);
    assert!(
        all.first()
            .unwrap()
            .starts_with("no NVIDIA GPU device node"),
        "{all:#?}"
    );
    assert!(p.jetson.is_none() && p.cuda.gpu.is_none());
    assert_eq!(p.cpu.arch, "unknown");
    assert!(p.telemetry.thermal.is_empty() && p.telemetry.rails.is_empty());
    assert!(!p.cuda_ready());
}

#[test]
fn the_configured_default_mode_is_reported_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    orin(tmp.path());
    std::fs::remove_file(tmp.path().join("var/lib/nvpmodel/status")).unwrap();
    let p = check(tmp.path());
    let mode = p.jetson.unwrap().power_mode.unwrap();
    assert_eq!((mode.id, mode.name.as_deref()), (2, Some("MAXN_SUPER")));
    assert!(mode.source.contains("default"), "{mode:?}");
}

#[test]
fn a_device_without_gpu_refuses_cuda_or_falls_back_with_the_reason() {
    if Path::new("/dev/nvidia0").exists() || Path::new("/dev/nvmap").exists() {
        eprintln!("a GPU is present: the refusal path is not what runs here");
        return;
    }
    use transfusion_sdk::Device;
    assert_eq!(Device::Cpu.resolve().unwrap(), Device::Cpu);
    assert_eq!(Device::Auto.resolve().unwrap(), Device::Cpu);
    let message = Device::Cuda.resolve().err().unwrap().to_string();
    assert!(message.contains("cuda is unavailable"), "{message}");
    if cfg!(feature = "cuda") {
        assert!(message.contains("preflight: "), "{message}");
        assert!(message.contains("no NVIDIA GPU device node"), "{message}");
    } else {
        assert!(message.contains("no CUDA support"), "{message}");
    }
}
