//! The GPU tooling that runs without a GPU: `transfusion doctor` on a fake Jetson root and
//! on this machine, the bench's machine record of a Jetson's power state, the sustained bench,
//! and the device comparison of `verify --device` (CPU against CPU, which must agree exactly).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use transfusion_sdk::manifest::Precision;
use transfusion_tools::bench::sustained::{sustained, SustainedOptions};
use transfusion_tools::bench::Machine;
use transfusion_tools::convert::{convert, ConvertOptions};

fn put(root: &Path, path: &str, content: &str) {
    let full = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, content).unwrap();
}

/// A JetPack 6.1 Orin with every CUDA piece: the toolkit under /usr/local/cuda, cuDNN 9's
/// runtime package (`libcudnn.so.9`) in the system directory.
fn fake_orin(root: &Path) {
    put(
        root,
        "/proc/cpuinfo",
        "processor\t: 0\nFeatures\t: fp asimd fphp asimdhp asimddp\nCPU part\t: 0xd42\n",
    );
    put(
        root,
        "/proc/device-tree/compatible",
        "nvidia,p3767-0005\0nvidia,tegra234\0",
    );
    put(
        root,
        "/proc/device-tree/model",
        "NVIDIA Jetson Orin Nano Developer Kit\0",
    );
    put(
        root,
        "/etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.3, GCID: 1\n",
    );
    put(
        root,
        "/etc/nvpmodel.conf",
        "< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=7W >\n",
    );
    put(root, "/var/lib/nvpmodel/status", "pmode:0001\n");
    put(root, "/usr/lib/aarch64-linux-gnu/nvidia/libcuda.so.1", "");
    put(
        root,
        "/etc/ld.so.conf",
        "/usr/lib/aarch64-linux-gnu/nvidia\n",
    );
    for lib in [
        "libcudart.so.12",
        "libnvrtc.so.12",
        "libcublas.so.12",
        "libcublasLt.so.12",
    ] {
        put(root, &format!("/usr/local/cuda/lib64/{lib}"), "");
    }
    put(root, "/usr/lib/aarch64-linux-gnu/libcudnn.so.9", "");
    for h in ["cuda_fp16.h", "math_constants.h", "cuda/std/cstdint"] {
        put(root, &format!("/usr/local/cuda/include/{h}"), "");
    }
    put(root, "/dev/nvmap", "");
    put(root, "/dev/nvgpu/igpu0/ctrl", "");
    put(
        root,
        "/sys/class/thermal/thermal_zone0/type",
        "tj-thermal\n",
    );
    put(root, "/sys/class/thermal/thermal_zone0/temp", "52000\n");
    let cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq";
    put(root, &format!("{cpufreq}/scaling_cur_freq"), "1510400\n");
    put(root, &format!("{cpufreq}/scaling_min_freq"), "1510400\n");
    put(root, &format!("{cpufreq}/scaling_max_freq"), "1510400\n");
    let hwmon = "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1";
    put(root, &format!("{hwmon}/in1_label"), "VDD_IN\n");
    put(root, &format!("{hwmon}/in1_input"), "5000\n");
    put(root, &format!("{hwmon}/curr1_input"), "2000\n");
}

fn transfusion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_transfusion"))
}

fn cuda_12_names() -> bool {
    transfusion_sdk::platform::cuda::BUILD.is_none_or(|b| b.major == 12)
}

#[test]
fn doctor_reports_a_fake_jetson() {
    let tmp = tempfile::tempdir().unwrap();
    fake_orin(tmp.path());
    let out = transfusion()
        .args(["doctor", "--json", "--sysroot"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jetson = &doc["preflight"]["jetson"];
    assert_eq!(jetson["power_mode"]["id"], 1);
    assert_eq!(jetson["power_mode"]["name"], "7W");
    assert_eq!(jetson["jetson_clocks"]["pinned"], true);
    assert_eq!(jetson["gpu"]["sm"], 87);
    assert_eq!(
        doc["preflight"]["telemetry"]["rails"][0]["milliwatts"],
        10000.0
    );
    let problems: Vec<String> = doc["cuda_problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .filter(|p| !p.contains("built without CUDA"))
        .collect();
    if cuda_12_names() {
        // With the unit's LD_LIBRARY_PATH=/usr/local/cuda/lib64 everything is found (cuDNN 9
        // as libcudnn.so.9); in a CPU-only build, the build is the only problem left.
        assert_eq!(problems, Vec::<String>::new());
        let cudnn = &doc["preflight"]["cuda"]["libraries"][5];
        assert_eq!(cudnn["name"], "cudnn");
        assert_eq!(cudnn["file"], "/usr/lib/aarch64-linux-gnu/libcudnn.so.9");
    }

    // Without NVRTC: --require-cuda fails, and the report names the package.
    std::fs::remove_file(tmp.path().join("usr/local/cuda/lib64/libnvrtc.so.12")).unwrap();
    let out = transfusion()
        .args(["doctor", "--require-cuda", "--sysroot"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "Jetson: NVIDIA Jetson Orin Nano Developer Kit",
        "power mode: 1 (7W) from /var/lib/nvpmodel/status",
        "clocks: pinned (jetson_clocks)",
        "tj-thermal 52.0 °C",
        "[ok] asimdhp",
        "[--] nvrtc     missing (cuda-nvrtc-12-6)",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }

    let out = transfusion()
        .args(["doctor", "--sysroot", "/nonexistent/root"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

#[test]
fn doctor_runs_on_this_machine() {
    let out = transfusion().arg("doctor").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("preflight of /\nCPU: "), "{text}");
    assert!(text.contains("CUDA: "), "{text}");
}

#[test]
fn machine_records_the_jetson_power_state() {
    let tmp = tempfile::tempdir().unwrap();
    fake_orin(tmp.path());
    let m = Machine::detect_in(tmp.path());
    let power = m.power_state().unwrap();
    assert!(power.contains("power mode 1 (7W)"), "{power}");
    assert!(power.contains("clocks pinned"), "{power}");
    assert!(power.contains("L4T R36.4.3"), "{power}");
    assert_eq!(m.telemetry.cpu_mhz, [1510.4]);
    assert_eq!(m.telemetry.input_milliwatts(), Some(10000.0));
    assert!(m.describe().contains("GPU Orin"), "{}", m.describe());
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(
        json["jetson"]["power_mode"]["source"],
        "/var/lib/nvpmodel/status"
    );
    assert_eq!(json["telemetry"]["thermal"][0]["celsius"], 52.0);
    // Off a Jetson there is no power state.
    assert!(Machine::from_cpuinfo("", 1).power_state().is_none());
}

fn tiny_bundle(dir: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let bundle = dir.join("bundle");
    convert(&fixture, &bundle, &ConvertOptions::all_precisions(false)).unwrap();
    bundle
}

#[test]
fn device_comparison_of_the_cpu_with_itself_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(tmp.path());
    let cpu = tract_onnx::tract_core::runtime::DefaultRuntime;
    let results = transfusion_tools::devices::compare_on(&bundle, &cpu, None).unwrap();
    // 7 graphs × 3 precisions, every float output (the backbone's KV cache included).
    for graph in transfusion_sdk::GraphId::ALL {
        for precision in Precision::ALL {
            assert!(
                results
                    .iter()
                    .any(|r| r.precision == precision && r.case == format!("{graph}@cpu")),
                "{precision} {graph} not compared"
            );
        }
    }
    assert!(results.iter().any(|r| r.tensor == "present_key.0"));
    for r in &results {
        assert!(r.pass && r.max_abs == 0.0, "{r:?}");
    }
    // verify --device cpu is refused, naming the alternatives.
    let err = transfusion_tools::devices::compare(&bundle, transfusion_sdk::Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--device cuda") && err.contains("--reference"),
        "{err}"
    );
}

#[test]
fn sustained_bench_reports_intervals_and_validates_its_options() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(tmp.path());
    let options = SustainedOptions {
        precision: Precision::Fp32,
        threads: 1,
        steps: 1,
        prompt_tokens: 4,
        device: transfusion_sdk::Device::Cpu,
        duration: 1.0,
        interval: 0.25,
        progress: false,
    };
    let report = sustained(&bundle, &options).unwrap();
    assert!(report.images > 0);
    assert!(report.intervals.len() >= 2, "{:?}", report.intervals);
    assert_eq!(
        report.intervals.iter().map(|i| i.images).sum::<usize>(),
        report.images
    );
    assert!(report.intervals.iter().all(|i| i.images_per_s > 0.0));
    assert!(report.last_over_first.is_some());
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "machine",
        "intervals",
        "throttled",
        "warmup_image_ms",
        "max_celsius",
    ] {
        assert!(json.get(key).is_some(), "{key} missing");
    }
    assert!(report.to_text().contains("img/s"));

    for (bad, name) in [
        (
            SustainedOptions {
                duration: 0.0,
                ..options.clone()
            },
            "--duration",
        ),
        (
            SustainedOptions {
                interval: 5.0,
                ..options.clone()
            },
            "--interval",
        ),
        (
            SustainedOptions {
                steps: 0,
                ..options.clone()
            },
            "--steps",
        ),
    ] {
        let err = sustained(&bundle, &bad).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn bench_report_records_the_device_and_the_sensors_at_both_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tiny_bundle(tmp.path());
    let options = transfusion_tools::bench::BenchOptions {
        precisions: vec![Precision::Fp32],
        steps: vec![1],
        runs: 1,
        warmup: 0,
        prompt_tokens: 4,
        decode_tokens: 2,
        ..Default::default()
    };
    let report = transfusion_tools::bench::bench(&bundle, &options).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["device"], "cpu");
    assert!(json["telemetry_end"].is_object());
    assert!(json["machine"]["telemetry"].is_object());
    assert!(report.to_text().contains("sensors at the end"));
}
