//! DRM selection, error mapping and scanout copy against a fake card.

use std::sync::{Arc, Mutex};

use super::*;
use crate::frame::Status;

fn mode(w: u32, h: u32, refresh: u32, preferred: bool) -> ModeInfo {
    ModeInfo {
        name: format!("{w}x{h}"),
        width: w,
        height: h,
        refresh,
        preferred,
    }
}

/// DSI-1 disconnected; HDMI-A-1 connected (not yet routed) through encoder 20 → CRTCs 30, 31;
/// CRTC 30 busy driving encoder 21 of another connector.
fn topology() -> Topology {
    Topology {
        connectors: vec![
            ConnectorInfo {
                id: 1,
                name: "DSI-1".into(),
                connected: false,
                modes: vec![],
                encoders: vec![21],
                current_encoder: None,
            },
            ConnectorInfo {
                id: 2,
                name: "HDMI-A-1".into(),
                connected: true,
                modes: vec![
                    mode(3840, 2160, 30, false),
                    mode(1920, 1080, 60, true),
                    mode(1280, 720, 50, false),
                    mode(1280, 720, 60, false),
                    mode(640, 480, 60, false),
                ],
                encoders: vec![20],
                current_encoder: None,
            },
        ],
        encoders: vec![
            EncoderInfo {
                id: 20,
                crtc: None,
                possible_crtcs: vec![30, 31],
            },
            EncoderInfo {
                id: 21,
                crtc: Some(30),
                possible_crtcs: vec![30],
            },
        ],
    }
}

#[test]
fn picks_connected_connector_preferred_mode_and_free_crtc() {
    let s = select_output(&topology(), None, None).unwrap();
    assert_eq!((s.connector, s.connector_name.as_str()), (2, "HDMI-A-1"));
    assert_eq!((s.mode_index, s.mode.width, s.mode.height), (1, 1920, 1080));
    assert_eq!(s.crtc, 31, "CRTC 30 is busy with another encoder");
}

#[test]
fn keeps_the_crtc_already_routed() {
    let mut t = topology();
    t.connectors[1].current_encoder = Some(20);
    t.encoders[0].crtc = Some(30);
    assert_eq!(select_output(&t, None, None).unwrap().crtc, 30);
}

#[test]
fn honours_requested_mode_and_connector() {
    let t = topology();
    let s = select_output(&t, Some("hdmi-a-1"), Some(Size::new(1280, 720))).unwrap();
    assert_eq!(
        (s.mode_index, s.mode.refresh),
        (3, 60),
        "highest refresh wins"
    );
    let err = select_output(&t, None, Some(Size::new(1024, 768))).unwrap_err();
    assert!(err.contains("no 1024x768 mode"), "{err}");
    assert!(err.contains("1920x1080, 1280x720, 640x480"), "{err}");
    let err = select_output(&t, Some("DSI-1"), None).unwrap_err();
    assert!(err.contains("DSI-1 has no monitor"), "{err}");
    let err = select_output(&t, Some("DP-1"), None).unwrap_err();
    assert!(err.contains("HDMI-A-1 connected"), "{err}");
}

#[test]
fn falls_back_to_first_mode_and_reports_no_monitor() {
    let mut t = topology();
    for m in &mut t.connectors[1].modes {
        m.preferred = false;
    }
    assert_eq!(select_output(&t, None, None).unwrap().mode_index, 0);
    t.connectors[1].connected = false;
    let err = select_output(&t, None, None).unwrap_err();
    assert!(err.contains("no connected monitor"), "{err}");
    t.encoders.clear();
    t.connectors[1].connected = true;
    let err = select_output(&t, None, None).unwrap_err();
    assert!(err.contains("no CRTC"), "{err}");
}

/// A card in memory: records calls, can fail like a card whose master is taken.
struct FakeCard {
    topology: Topology,
    master_error: Option<io::ErrorKind>,
    set_crtc_error: Option<io::ErrorKind>,
    pitch_padding: u32,
    mem: Vec<u8>,
    pitch: u32,
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeCard {
    fn new(log: &Arc<Mutex<Vec<String>>>) -> Self {
        let mut t = topology();
        // Keep the buffer small: make the preferred mode 320x240.
        t.connectors[1].modes[1] = mode(320, 240, 60, true);
        FakeCard {
            topology: t,
            master_error: None,
            set_crtc_error: None,
            pitch_padding: 64,
            mem: Vec::new(),
            pitch: 0,
            log: Arc::clone(log),
        }
    }

    fn note(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
}

impl KmsDevice for FakeCard {
    fn path(&self) -> &Path {
        Path::new("/dev/dri/card0")
    }
    fn acquire_master(&mut self) -> io::Result<()> {
        self.note("master".into());
        self.master_error.map_or(Ok(()), |k| Err(k.into()))
    }
    fn topology(&mut self) -> io::Result<Topology> {
        Ok(self.topology.clone())
    }
    fn create_scanout(&mut self, width: u32, height: u32) -> io::Result<u32> {
        self.note(format!("create {width}x{height}"));
        self.pitch = width * 4 + self.pitch_padding;
        self.mem = vec![0xAB; (self.pitch * height) as usize];
        Ok(self.pitch)
    }
    fn set_crtc(&mut self, s: &Selection) -> io::Result<()> {
        self.note(format!(
            "set_crtc {} {} {}",
            s.crtc, s.connector, s.mode.name
        ));
        self.set_crtc_error.map_or(Ok(()), |k| Err(k.into()))
    }
    fn with_scanout(&mut self, write: &mut dyn FnMut(&mut [u8])) -> io::Result<()> {
        self.note("map".into());
        write(&mut self.mem);
        Ok(())
    }
    fn release(&mut self) {
        self.note("release".into());
    }
}

#[test]
fn sets_mode_and_copies_frames_as_xrgb8888() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut display = DrmDisplay::new(FakeCard::new(&log), None, None).unwrap();
    assert_eq!(display.size(), Size::new(320, 240));
    assert!(display.describe().contains("HDMI-A-1 320x240@60"));
    display
        .show(&Frame::new("a cat", Status::Done { total_ms: 5 }))
        .unwrap();
    let card = display.device();
    let pitch = card.pitch as usize;
    for (x, y) in [(0u32, 0u32), (100, 20), (319, 239)] {
        let at = y as usize * pitch + x as usize * 4;
        let word = u32::from_ne_bytes(card.mem[at..at + 4].try_into().unwrap());
        let c = display.canvas.get(x, y).unwrap();
        assert_eq!(word, PixelFormat::XRGB8888.pack(c), "({x},{y})");
    }
    // Row padding is left alone.
    assert_eq!(card.mem[pitch - 1], 0xAB);
    drop(display);
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "master",
            "create 320x240",
            "map",
            "set_crtc 31 2 320x240",
            "map",
            "release"
        ]
    );
}

#[test]
fn busy_master_gives_an_actionable_error() {
    let log = Arc::new(Mutex::new(Vec::new()));
    for kind in [io::ErrorKind::ResourceBusy, io::ErrorKind::PermissionDenied] {
        let mut card = FakeCard::new(&log);
        card.master_error = Some(kind);
        let err = DrmDisplay::new(card, None, None).err().unwrap();
        assert!(matches!(err, Error::DrmBusy { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("/dev/dri/card0"), "{text}");
        assert!(text.contains("sudo systemctl stop gdm"), "{text}");
    }
    // A busy CRTC at mode-set time: same advice, and the buffer is released.
    log.lock().unwrap().clear();
    let mut card = FakeCard::new(&log);
    card.set_crtc_error = Some(io::ErrorKind::PermissionDenied);
    let err = DrmDisplay::new(card, None, None).err().unwrap();
    assert!(matches!(err, Error::DrmBusy { .. }), "{err:?}");
    assert_eq!(
        log.lock().unwrap().last().map(String::as_str),
        Some("release")
    );
}

#[test]
fn selection_errors_name_the_device() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut card = FakeCard::new(&log);
    card.topology.connectors[1].connected = false;
    let err = DrmDisplay::new(card, None, None).err().unwrap().to_string();
    assert!(
        err.starts_with("/dev/dri/card0: choosing an output"),
        "{err}"
    );
    assert!(err.contains("no connected monitor"), "{err}");
}
