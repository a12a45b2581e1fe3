//! The kiosk (this crate's binary) end to end, headless: it is run as a process with
//! `--display png:DIR` and the PNG frames it leaves are read back and classified by the colours
//! the layout uses (progress bar fill, preview/final image borders), so these tests check what
//! a screen would show, not what the program logged.
//!
//! The model is the shipped shapes64 checkpoint, converted once per run into a temporary
//! bundle as a host does before deploying (the kiosk itself never converts).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use embedded_graphics::prelude::{Point, Size};
use embedded_graphics::primitives::Rectangle;
use transfusion_board::Layout;
use transfusion_image::RgbImage;

/// The layout's colours (board/src/layout.rs; the golden images pin them too).
const BAR_TRACK: [u8; 3] = [52, 56, 68];
const BAR_FILL: [u8; 3] = [40, 110, 200];
const BAR_DONE: [u8; 3] = [40, 150, 80];
const BAR_ERROR: [u8; 3] = [190, 40, 40];
const FRAME_PREVIEW: [u8; 3] = [230, 160, 20];
const FRAME_FINAL: [u8; 3] = [60, 190, 100];

const WIDTH: u32 = 320;
const HEIGHT: u32 = 240;

/// One kiosk at a time: parallel kiosks would share the two cores and slow each other past
/// the tests' timeouts.
static SERIAL: Mutex<()> = Mutex::new(());

/// The shipped model's checkpoint converted once per test binary (FP32), as a host does before
/// deploying; every kiosk of these tests loads it.
fn bundle() -> &'static Path {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let shipped = root.join("models/shapes64/checkpoint");
        let ckpt = if shipped.join("model.safetensors").is_file() {
            shipped
        } else {
            // A tree without the shipped weights: an untrained shapes64 (the layout tests
            // read colours of the screen, not what the image shows).
            let ckpt = dir.path().join("untrained");
            transfusion_tools::init::run("shapes64", 0, &ckpt).unwrap();
            ckpt
        };
        let options = transfusion_tools::convert::ConvertOptions {
            precisions: vec![transfusion_sdk::Precision::Fp32],
            ..transfusion_tools::convert::ConvertOptions::all_precisions(false)
        };
        transfusion_tools::convert::convert(&ckpt, &bundle, &options).unwrap();
        (dir, bundle)
    });
    path
}

/// The kiosk binary of this crate, on the test bundle.
fn kiosk() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiosk"));
    command.env("RUST_LOG", "warn").arg("--model").arg(bundle());
    command
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn prompts_file(dir: &Path, lines: &[&str]) -> PathBuf {
    let path = dir.join("prompts.txt");
    let mut text = String::from("# test prompts\n\n");
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn display(dir: &Path) -> String {
    format!("png:{},size={WIDTH}x{HEIGHT}", dir.display())
}

/// The frames written, in order.
fn frames(dir: &Path) -> Vec<PathBuf> {
    let mut frames: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                .collect()
        })
        .unwrap_or_default();
    frames.sort();
    frames
}

/// What a frame shows, from its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Loading,
    /// A step with a preview image.
    Progress,
    /// A progress bar without a preview (the step-0 frame).
    ProgressNoImage,
    /// Still generating (text after the image), with the decoded image.
    Decoded,
    /// Finished, with the final image.
    Final,
    /// Done without an image (the "ready" screen).
    Ready,
    Error,
    Other,
}

fn classify(path: &Path) -> Shown {
    let image = RgbImage::load_png(path).unwrap();
    assert_eq!(
        (image.width(), image.height()),
        (WIDTH, HEIGHT),
        "{}",
        path.display()
    );
    let layout = Layout::new(Rectangle::new(Point::zero(), Size::new(WIDTH, HEIGHT)));
    let bar = layout.bar;
    // The bar's last row: below the label, so only the fill and the track colours are there.
    let y = (bar.top_left.y + bar.size.height as i32 - 1) as u32;
    let left = image.pixel(bar.top_left.x as u32 + 1, y).unwrap();
    let right = image
        .pixel((bar.top_left.x + bar.size.width as i32 - 2) as u32, y)
        .unwrap();
    let count = |rgb: [u8; 3]| image.data().chunks_exact(3).filter(|p| *p == rgb).count();
    // An image border is a ring of hundreds of pixels; a random picture has next to none of
    // these exact colours.
    let preview = count(FRAME_PREVIEW) > 100;
    let final_image = count(FRAME_FINAL) > 100;
    match (left, right) {
        (BAR_DONE, BAR_DONE) if final_image => Shown::Final,
        (BAR_DONE, BAR_DONE) if !preview => Shown::Ready,
        (BAR_ERROR, BAR_ERROR) => Shown::Error,
        (BAR_TRACK, BAR_TRACK) if !preview && !final_image => Shown::Loading,
        (BAR_FILL | BAR_TRACK, _) if preview => Shown::Progress,
        (BAR_FILL | BAR_TRACK, _) if final_image => Shown::Decoded,
        (BAR_FILL | BAR_TRACK, _) => Shown::ProgressNoImage,
        _ => Shown::Other,
    }
}

fn shown(dir: &Path) -> Vec<Shown> {
    frames(dir).iter().map(|p| classify(p)).collect()
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    }
    output
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn two_prompts_from_a_file_show_progress_previews_then_final_frames() {
    let mut kiosk = kiosk();
    let _serial = lock();
    let tmp = tempfile::tempdir().unwrap();
    let prompts = prompts_file(
        tmp.path(),
        &["a red circle above a blue square", "three green squares"],
    );
    let out = tmp.path().join("frames");
    let output = run(kiosk
        .arg("--prompts")
        .arg(&prompts)
        .args(["--display", &display(&out)])
        .args(["--max-prompts", "2", "--hold-ms", "0", "--steps", "4"])
        .args(["--precision", "fp32", "--threads", "1", "--no-timings"]));
    assert!(output.status.success(), "kiosk failed: {:?}", output.status);
    let shown = shown(&out);
    assert_eq!(shown.first(), Some(&Shown::Loading), "{shown:?}");
    assert_eq!(shown.last(), Some(&Shown::Final), "{shown:?}");
    let progress = shown.iter().filter(|s| **s == Shown::Progress).count();
    assert!(progress >= 2, "expected preview frames: {shown:?}");
    assert!(
        !shown.contains(&Shown::Error) && !shown.contains(&Shown::Other),
        "{shown:?}"
    );
    // Once shown, a final frame is followed by the next prompt's progress, never by a preview
    // of the same prompt.
    let first_final = shown.iter().position(|s| *s == Shown::Final).unwrap();
    assert!(shown[..first_final].contains(&Shown::Progress));
}

#[test]
fn identical_runs_give_identical_frames() {
    let _serial = lock();
    let tmp = tempfile::tempdir().unwrap();
    let prompts = prompts_file(tmp.path(), &["one yellow triangle"]);
    let mut finals = Vec::new();
    for run_no in 0..2 {
        let out = tmp.path().join(format!("run{run_no}"));
        let output = run(kiosk()
            .arg("--prompts")
            .arg(&prompts)
            .args(["--display", &display(&out)])
            .args(["--max-prompts", "1", "--seed", "7", "--precision", "fp32"])
            .args(["--threads", "1", "--no-timings"]));
        assert!(output.status.success());
        let last = frames(&out).pop().unwrap();
        assert_eq!(classify(&last), Shown::Final);
        finals.push(std::fs::read(last).unwrap());
    }
    assert!(
        finals[0] == finals[1],
        "same seed and --no-timings: the final frames should be byte-identical"
    );
}

#[test]
fn prompts_from_stdin_until_end_of_input() {
    let mut kiosk = kiosk();
    let _serial = lock();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("frames");
    let mut child = kiosk
        .arg("--stdin")
        .args(["--display", &display(&out)])
        .args(["--precision", "fp32", "--threads", "1", "--max-tokens", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"a red circle\n\n  \nblue squares\n")
            .unwrap();
    } // closed: end of input
    let status = wait_timeout(&mut child, Duration::from_secs(300)).expect("kiosk hung");
    assert!(status.success(), "{status:?}");
    let shown = shown(&out);
    assert!(shown.contains(&Shown::Ready), "no ready screen: {shown:?}");
    assert_eq!(shown.last(), Some(&Shown::Final), "{shown:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn sigterm_cancels_the_generation_draws_a_stopped_frame_and_exits_0() {
    let mut kiosk = kiosk();
    let _serial = lock();
    let tmp = tempfile::tempdir().unwrap();
    let prompts = prompts_file(
        tmp.path(),
        &["a long list", "of prompts", "looping forever"],
    );
    let out = tmp.path().join("frames");
    // 400 steps: seconds of work per prompt, so the signal lands mid-generation.
    let mut child = kiosk
        .arg("--prompts")
        .arg(&prompts)
        .args(["--display", &display(&out)])
        .args(["--steps", "400", "--hold-ms", "0", "--precision", "fp32"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // Loading, step 0, step 1: generation is under way.
    while frames(&out).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no frames from the kiosk"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kiosk exited early: {status:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    let status = wait_timeout(&mut child, Duration::from_secs(10))
        .expect("kiosk did not exit within 10 s of SIGTERM");
    let took = sent.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?} to stop");
    let shown = shown(&out);
    assert_eq!(
        shown.last(),
        Some(&Shown::Error),
        "no stopped frame: {shown:?}"
    );
    assert!(shown.contains(&Shown::Progress), "{shown:?}");
    assert!(
        !shown.contains(&Shown::Final),
        "the first prompt should not have finished: {shown:?}"
    );
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    prompts_file(tmp.path(), &["a", "b", "c"]);
    let config = tmp.path().join("kiosk.toml");
    std::fs::write(
        &config,
        "display = \"png:shots\"\nprompts = \"prompts.txt\"\nsteps = 3\nseed = 5\n\
         seed_policy = \"increment\"\nthreads = 2\nprecision = \"fp16\"\n",
    )
    .unwrap();
    let output = run(kiosk()
        .arg("--config")
        .arg(&config)
        .args(["--steps", "6", "--check"]));
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("steps Some(6)"), "{stdout}");
    assert!(stdout.contains("Increment(5)"), "{stdout}");
    assert!(stdout.contains("threads Some(2)"), "{stdout}");
    assert!(stdout.contains("precision fp16"), "{stdout}");
    let resolved = tmp.path().join("prompts.txt");
    assert!(
        stdout.contains(&format!("{} (3 prompts", resolved.display())),
        "prompts should be relative to the config file: {stdout}"
    );

    // A button draws from the same file; --check opens no device, so any chip will do.
    let output = run(kiosk()
        .arg("--config")
        .arg(&config)
        .args(["--button", "/dev/gpiochip9:17,edge=rising,debounce_ms=50"])
        .args(["--seed-policy", "random", "--check"]));
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("one per press of /dev/gpiochip9:17 (Rising edge, 50 ms debounce)"),
        "{stdout}"
    );
    assert!(stdout.contains("seed Random"), "{stdout}");
}

#[test]
fn bad_settings_fail_at_start_naming_the_file_or_device() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = prompts_file(tmp.path(), &["a"]);
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let typo = tmp.path().join("typo.toml");
    std::fs::write(&typo, "display = \"png:x\"\nstpes = 4\n").unwrap();
    let missing = tmp.path().join("missing.txt");
    let p = prompts.to_str().unwrap();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--config".into(), typo.display().to_string()],
            "stpes".into(),
        ),
        (
            vec!["--config".into(), typo.display().to_string()],
            typo.display().to_string(),
        ),
        (
            vec!["--prompts".into(), missing.display().to_string()],
            missing.display().to_string(),
        ),
        (
            vec!["--prompts".into(), empty.display().to_string()],
            "has no prompts".into(),
        ),
        (vec![], "no prompts".into()),
        (
            vec![
                "--prompts".into(),
                p.into(),
                "--display".into(),
                "hdmi".into(),
            ],
            "KIND:PATH".into(),
        ),
        (
            vec![
                "--prompts".into(),
                p.into(),
                "--seed-policy".into(),
                "often".into(),
            ],
            "often".into(),
        ),
        (
            vec![
                "--prompts".into(),
                p.into(),
                "--precision".into(),
                "fp8".into(),
            ],
            "fp8".into(),
        ),
        (
            vec![
                "--prompts".into(),
                p.into(),
                "--max-prompts".into(),
                "0".into(),
            ],
            "max_prompts".into(),
        ),
        (
            vec![
                "--prompts".into(),
                p.into(),
                "--button".into(),
                "/dev/gpiochip0".into(),
            ],
            "CHIP:LINE".into(),
        ),
        (
            vec![
                "--stdin".into(),
                "--button".into(),
                "/dev/gpiochip0:3".into(),
            ],
            "cannot be used with".into(),
        ),
        #[cfg(target_os = "linux")]
        (
            vec![
                "--prompts".into(),
                p.into(),
                "--button".into(),
                "/dev/gpiochip-none:3".into(),
            ],
            "/dev/gpiochip-none".into(),
        ),
        #[cfg(target_os = "linux")]
        (
            vec![
                "--prompts".into(),
                p.into(),
                "--display".into(),
                "drm:/dev/dri/card-none".into(),
            ],
            "/dev/dri/card-none".into(),
        ),
    ];
    for (args, needle) in cases {
        let output = kiosk()
            .args(&args)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(&needle),
            "{args:?}: expected {needle:?} in\n{stderr}"
        );
    }
}
