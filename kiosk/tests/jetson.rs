//! The Jetson deployment files (`board/jetson/`), checked without a Jetson: the systemd unit
//! and its CUDA drop-in parsed for the directives tract-cuda needs (always), `systemd-analyze
//! verify` on them where systemd is installed, the staging of `deploy.sh --cuda` (dry run) and
//! `install-rootfs.sh --cuda` into a fake rootfs, `cuda-setup.sh`'s package list against a
//! fake dpkg database, shellcheck where installed, and the kiosk's `--check`/`--warm-up`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn jetson(file: &str) -> PathBuf {
    repo().join("board/jetson").join(file)
}

/// `(key, value)` of every assignment in a unit file, in order (sections are not needed:
/// every key checked here is a `[Service]` one).
fn directives(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn unit() -> Vec<(String, String)> {
    directives(&jetson("transfusion-kiosk.service"))
}

fn drop_in() -> Vec<(String, String)> {
    directives(&jetson("transfusion-kiosk.service.d/cuda.conf"))
}

#[test]
fn cuda_drop_in_has_what_tract_cuda_needs() {
    let (base, cuda) = (unit(), drop_in());
    // The CPU unit stays locked down.
    assert_eq!(values(&base, "MemoryDenyWriteExecute"), ["yes"]);
    assert_eq!(values(&base, "DevicePolicy"), ["closed"]);
    assert_eq!(values(&base, "ProtectSystem"), ["strict"]);
    assert!(!values(&base, "DeviceAllow")
        .iter()
        .any(|v| v.contains("nv")));

    // JIT code, a persistent writable kernel cache, the toolkit root, the warm-up.
    assert_eq!(values(&cuda, "MemoryDenyWriteExecute"), ["no"]);
    assert_eq!(values(&cuda, "CacheDirectory"), ["transfusion"]);
    let env = values(&cuda, "Environment");
    for want in [
        "XDG_CACHE_HOME=%C/transfusion",
        "CUDA_HOME=/usr/local/cuda",
        "LD_LIBRARY_PATH=/usr/local/cuda/lib64",
    ] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    let pre = values(&cuda, "ExecStartPre");
    assert_eq!(pre.len(), 1);
    assert!(
        pre[0].starts_with("/opt/transfusion/bin/kiosk --config /opt/transfusion/kiosk.toml")
            && pre[0].ends_with("--warm-up"),
        "{pre:?}"
    );
    assert!(!values(&cuda, "TimeoutStartSec").is_empty());
    // The syscall filter is reset, then rebuilt without the @resources ban.
    assert_eq!(
        values(&cuda, "SystemCallFilter"),
        ["", "@system-service", "~@privileged"]
    );
    let allowed = values(&cuda, "DeviceAllow");
    for node in [
        "/dev/nvmap",
        "/dev/nvgpu/igpu0/ctrl",
        "/dev/nvhost-ctrl-gpu",
    ] {
        assert!(
            allowed.contains(&format!("{node} rw").as_str()),
            "{node}: {allowed:?}"
        );
    }
    // The drop-in weakens nothing else of the sandbox.
    for key in [
        "ProtectSystem",
        "ProtectHome",
        "NoNewPrivileges",
        "PrivateNetwork",
        "DevicePolicy",
        "User",
        "CapabilityBoundingSet",
    ] {
        assert!(values(&cuda, key).is_empty(), "the drop-in sets {key}");
    }
}

#[test]
fn drop_in_allows_every_node_the_preflight_opens() {
    // A fake Orin where every node the preflight looks at exists.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("proc/device-tree")).unwrap();
    std::fs::write(
        root.join("proc/device-tree/compatible"),
        "nvidia,tegra234\0",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("dev/nvgpu/igpu0")).unwrap();
    for node in ["dev/nvmap", "dev/nvgpu/igpu0/ctrl", "dev/nvhost-ctrl-gpu"] {
        std::fs::write(root.join(node), "").unwrap();
    }
    let p = transfusion_sdk::platform::preflight(root, &Default::default());
    let cuda = drop_in();
    let allowed = values(&cuda, "DeviceAllow");
    assert!(!p.cuda.device_nodes.is_empty());
    for node in &p.cuda.device_nodes {
        let want = format!("{} rw", node.path.display());
        assert!(
            allowed.contains(&want.as_str()),
            "{want} not in {allowed:?}"
        );
    }
}

/// A root with the host's systemd units (targets etc.), the kiosk's units and fake
/// executables at their paths, for `systemd-analyze verify --root`.
fn verify_root(with_drop_in: bool) -> Option<tempfile::TempDir> {
    let units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|d| Path::new(d).join("multi-user.target").exists())?;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(units)
        .arg(root.join("usr/lib/systemd/system"))
        .status()
        .unwrap();
    assert!(copied.success());
    let system = root.join("etc/systemd/system");
    std::fs::create_dir_all(&system).unwrap();
    for unit in ["transfusion-kiosk.service", "transfusion-setup.service"] {
        std::fs::copy(jetson(unit), system.join(unit)).unwrap();
    }
    if with_drop_in {
        let d = system.join("transfusion-kiosk.service.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            jetson("transfusion-kiosk.service.d/cuda.conf"),
            d.join("cuda.conf"),
        )
        .unwrap();
    }
    let bin = root.join("opt/transfusion/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for exe in [
        bin.join("kiosk"),
        root.join("opt/transfusion/setup-user.sh"),
    ] {
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    Some(tmp)
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    for with_drop_in in [false, true] {
        let Some(root) = verify_root(with_drop_in) else {
            eprintln!("skipped: no systemd unit directory to verify against");
            return;
        };
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.path().display()))
            .arg("/etc/systemd/system/transfusion-kiosk.service")
            .env("SYSTEMD_LOG_LEVEL", "debug")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "drop-in {with_drop_in}: {log}");
        // Warnings about our files (unknown keys, bad values) fail; debug noise about the
        // host's units does not.
        let ours: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "transfusion-kiosk.service",
                    "transfusion-setup.service",
                    "cuda.conf",
                ]
                .iter()
                .any(|f| l.contains(f))
                    && !l.contains("system call")
            })
            .filter(|l| {
                ["Unknown", "Failed", "Invalid", "ignoring", "not executable"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect();
        assert!(ours.is_empty(), "drop-in {with_drop_in}: {ours:#?}");
        // systemd's own dump of the merged unit, where this version prints one.
        if log.contains("DevicePolicy: closed") {
            let mdwe = if with_drop_in { "no" } else { "yes" };
            assert!(
                log.contains(&format!("MemoryDenyWriteExecute: {mdwe}")),
                "{log}"
            );
            if with_drop_in {
                for line in [
                    "DeviceAllow: /dev/nvmap rw",
                    "Environment: XDG_CACHE_HOME=/var/cache/transfusion",
                    "CacheDirectory: transfusion",
                ] {
                    assert!(log.contains(line), "{line} missing from systemd's view");
                }
            }
        }
    }
}

/// A file that passes `tf_is_aarch64_elf`; `cuda` adds tract-cuda's source path as a real
/// CUDA build carries it.
fn fake_binary(dir: &Path, cuda: bool) -> PathBuf {
    let mut bytes = vec![0u8; 64];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[18] = 0xb7;
    if cuda {
        bytes.extend_from_slice(b"/registry/src/tract-cuda-0.23.9/src/context.rs");
    }
    let path = dir.join(if cuda { "kiosk-cuda" } else { "kiosk-cpu" });
    std::fs::write(&path, bytes).unwrap();
    // Executable: the scripts build one with build.sh (a 20-minute cross build) otherwise.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

fn fake_model(dir: &Path) -> PathBuf {
    let model = dir.join("bundle");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("manifest.json"), "{}").unwrap();
    model
}

/// `bash board/jetson/NAME` with only the system's tools on `PATH`: should a script ever try to
/// cross-build (build.sh), it fails at once for want of cargo instead of building for minutes.
fn script(name: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(jetson(name))
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn deploy_dry_run_stages_the_cuda_variant() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fake_model(tmp.path());
    let run = |binary: &Path, cuda: bool| {
        let mut c = script("deploy.sh");
        c.arg("-n")
            .arg("--binary")
            .arg(binary)
            .arg("--model")
            .arg(&model);
        if cuda {
            c.arg("--cuda");
        }
        c.arg("nvidia@orin.local").output().unwrap()
    };
    let out = run(&fake_binary(tmp.path(), true), true);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for want in [
        "./transfusion/etc/systemd/system/transfusion-kiosk.service.d/cuda.conf",
        "./transfusion/opt/transfusion/cuda-setup.sh",
        "/opt/transfusion/cuda-setup.sh",
        "--check",
        "--warm-up",
        "config: device = \"auto\" (was \"cpu\")",
    ] {
        assert!(all.contains(want), "{want} missing:\n{all}");
    }

    // A CPU-only binary is refused for --cuda, and a CPU deploy removes the drop-in.
    let out = run(&fake_binary(tmp.path(), false), true);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("was built without CUDA"),
        "{}",
        text(&out)
    );
    let out = run(&fake_binary(tmp.path(), false), false);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains("./transfusion/etc/systemd/system/transfusion-kiosk.service.d"),
        "{all}"
    );
    assert!(all.contains("rm -f \"$dropin/cuda.conf\""), "{all}");
}

fn dpkg_status(root: &Path, packages: &[&str]) {
    let dir = root.join("var/lib/dpkg");
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = packages
        .iter()
        .map(|p| {
            format!(
                "Package: {p}\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1\n\n"
            )
        })
        .collect();
    std::fs::write(dir.join("status"), text).unwrap();
}

const JP61_PACKAGES: [&str; 6] = [
    "cuda-cudart-12-6",
    "cuda-cudart-dev-12-6",
    "cuda-nvrtc-12-6",
    "libcublas-12-6",
    "cuda-cccl-12-6",
    "libcudnn9-cuda-12",
];

fn have_dpkg() -> bool {
    let ok = Command::new("dpkg-query").arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: dpkg-query is not installed");
    }
    ok
}

#[test]
fn cuda_setup_names_the_missing_packages() {
    if !have_dpkg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let release = root.join("etc/nv_tegra_release");
    std::fs::write(
        &release,
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n",
    )
    .unwrap();
    // JetPack 6.1 with only the runtime side: NVRTC's headers are missing.
    dpkg_status(
        root,
        &[
            "nvidia-l4t-cuda",
            "cuda-cudart-12-6",
            "cuda-nvrtc-12-6",
            "libcublas-12-6",
            "libcudnn9-cuda-12",
        ],
    );
    let out = script("cuda-setup.sh")
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("missing: cuda-cudart-dev-12-6 cuda-cccl-12-6\n"),
        "{all}"
    );
    let mut complete = JP61_PACKAGES.to_vec();
    complete.push("nvidia-l4t-cuda");
    dpkg_status(root, &complete);
    let out = script("cuda-setup.sh")
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // JetPack 6.0: CUDA 12.2 packages and cuDNN 8; JetPack 5: refused.
    std::fs::write(&release, "# R36 (release), REVISION: 3.0, GCID: 1\n").unwrap();
    let all = text(
        &script("cuda-setup.sh")
            .arg("--root")
            .arg(root)
            .output()
            .unwrap(),
    );
    assert!(
        all.contains("cuda-nvrtc-12-2") && all.contains("libcudnn8-dev"),
        "{all}"
    );
    std::fs::write(&release, "# R35 (release), REVISION: 5.0, GCID: 1\n").unwrap();
    let out = script("cuda-setup.sh")
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("JetPack 5"), "{}", text(&out));
}

#[test]
fn install_rootfs_cuda_checks_packages_then_stages_the_drop_in() {
    if !have_dpkg() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc/systemd/system")).unwrap();
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(
        rootfs.join("etc/nv_tegra_release"),
        "# R36 (release), REVISION: 4.3, GCID: 1\n",
    )
    .unwrap();
    dpkg_status(&rootfs, &["nvidia-l4t-cuda", "cuda-cudart-12-6"]);
    let binary = fake_binary(tmp.path(), true);
    let model = fake_model(tmp.path());
    let run = |extra: &[&str]| {
        script("install-rootfs.sh")
            .arg("--cuda")
            .args(extra)
            .arg("--binary")
            .arg(&binary)
            .arg("--model")
            .arg(&model)
            .arg(&rootfs)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("sudo chroot"), "{}", text(&out));
    assert!(!rootfs.join("opt/transfusion").exists());

    let out = run(&["--no-package-check"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(rootfs
        .join("etc/systemd/system/transfusion-kiosk.service.d/cuda.conf")
        .is_file());
    assert!(rootfs.join("opt/transfusion/cuda-setup.sh").is_file());
    let config = std::fs::read_to_string(rootfs.join("opt/transfusion/kiosk.toml")).unwrap();
    assert!(config.contains("\ndevice = \"auto\""), "{config}");

    let out = script("install-rootfs.sh")
        .arg("--uninstall")
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!rootfs
        .join("etc/systemd/system/transfusion-kiosk.service.d")
        .exists());
}

#[test]
fn scripts_are_shellcheck_clean() {
    if Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: shellcheck is not installed (apt-get install shellcheck)");
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("board/jetson"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    files.push(repo().join(".ci/gpu.sh"));
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(&files)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// This crate's kiosk binary.
fn kiosk() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiosk"));
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn kiosk_check_reports_the_preflight_and_warm_up_explains_itself() {
    let gpu = Path::new("/dev/nvidia0").exists() || Path::new("/dev/nvmap").exists();
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a red circle\n").unwrap();
    let run = |args: &[&str]| {
        kiosk()
            .arg("--prompts")
            .arg(&prompts)
            .args(args)
            .env("XDG_CACHE_HOME", tmp.path().join("cache"))
            .output()
            .unwrap()
    };
    let out = run(&["--check"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for want in [
        "preflight of /",
        "CPU: ",
        "CUDA: ",
        "  build: ",
        "device cpu: CUDA is not used",
    ] {
        assert!(all.contains(want), "{want} missing:\n{all}");
    }
    let out = run(&["--warm-up"]);
    assert!(out.status.success());
    assert!(text(&out).contains("nothing to do"), "{}", text(&out));
    if gpu {
        eprintln!("a GPU is present: the no-GPU paths are not what runs here");
        return;
    }
    let out = run(&["--device", "cuda", "--check"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("device = cuda, but CUDA can not run here"),
        "{}",
        text(&out)
    );
    let out = run(&["--device", "auto", "--warm-up"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the kiosk will run on the CPU"),
        "{}",
        text(&out)
    );
    let out = run(&["--device", "cuda", "--warm-up"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("cuda is unavailable"), "{}", text(&out));
}
