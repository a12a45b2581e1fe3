//! Linux fbdev backend (`/dev/fbN`): ask the driver for the geometry and pixel bit fields,
//! map the framebuffer, copy each finished frame in.
//!
//! The device sits behind [`FbDevice`] so the format handling and copy can be tested against an
//! in-memory fake; [`FbdevFile`] is the real node (ioctls and `mmap` through `libc`, Linux only).
//! Note that NVIDIA removed fbdev from L4T 35.4.1 onwards: on a Jetson use the DRM backend.

use std::path::{Path, PathBuf};

use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::Size;

use crate::canvas::Canvas;
use crate::display::Display;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::pack::{Bitfield, PixelFormat};

/// `FB_VISUAL_TRUECOLOR`: pixels hold the colour itself.
pub const FB_VISUAL_TRUECOLOR: u32 = 2;
/// `FB_VISUAL_DIRECTCOLOR`: like true colour, through a per-channel gamma table.
pub const FB_VISUAL_DIRECTCOLOR: u32 = 3;

/// What the driver reports (the fields of `fb_var_screeninfo` / `fb_fix_screeninfo` used here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FbScreenInfo {
    /// Driver name (`fb_fix_screeninfo.id`), for logs.
    pub id: String,
    /// Visible width in pixels.
    pub xres: u32,
    /// Visible height in pixels.
    pub yres: u32,
    /// Panning offset of the visible area, in pixels.
    pub xoffset: u32,
    /// Panning offset of the visible area, in lines.
    pub yoffset: u32,
    /// Bits per pixel.
    pub bits_per_pixel: u32,
    /// Red field.
    pub red: Bitfield,
    /// Green field.
    pub green: Bitfield,
    /// Blue field.
    pub blue: Bitfield,
    /// Transparency field.
    pub transp: Bitfield,
    /// `FB_VISUAL_*`.
    pub visual: u32,
    /// Bytes per line (stride).
    pub line_length: u32,
}

/// An open framebuffer device: its description and its mapped memory.
pub trait FbDevice: Send {
    /// The node, for messages.
    fn path(&self) -> &Path;
    /// Geometry and format as the driver reports them.
    fn info(&self) -> &FbScreenInfo;
    /// The mapped framebuffer memory.
    fn memory(&mut self) -> &mut [u8];
}

/// Renders off-screen, then copies into the framebuffer with the device's bit-field layout.
pub struct FbdevDisplay<D: FbDevice> {
    device: D,
    format: PixelFormat,
    canvas: Canvas<Rgb888>,
    stride: usize,
    start: usize,
}

impl<D: FbDevice> FbdevDisplay<D> {
    /// Checks the device's format and geometry against its memory and prepares a canvas.
    pub fn new(mut device: D) -> Result<Self> {
        let info = device.info().clone();
        let path = device.path().to_path_buf();
        let unsupported = |reason: String| Error::Unsupported {
            device: path.clone(),
            reason,
        };
        if !matches!(info.visual, FB_VISUAL_TRUECOLOR | FB_VISUAL_DIRECTCOLOR) {
            return Err(unsupported(format!(
                "visual {} is not true colour (palette framebuffers are not supported)",
                info.visual
            )));
        }
        let format = PixelFormat::from_bitfields(
            info.bits_per_pixel,
            info.red,
            info.green,
            info.blue,
            info.transp,
        )
        .map_err(unsupported)?;
        let bpp = format.bytes_per_pixel;
        let row = (info.xres as usize).saturating_mul(bpp);
        let stride = match info.line_length as usize {
            0 => row,
            n => n,
        };
        if stride < row {
            return Err(unsupported(format!(
                "line length {stride} is shorter than {} pixels × {bpp} bytes",
                info.xres
            )));
        }
        // Saturating: absurd values from a driver give "too small" below, not an overflow.
        let start = (info.yoffset as usize)
            .saturating_mul(stride)
            .saturating_add((info.xoffset as usize).saturating_mul(bpp));
        let needed = (info.yres as usize)
            .saturating_sub(1)
            .saturating_mul(stride)
            .saturating_add(start)
            .saturating_add(row);
        let mapped = device.memory().len();
        if mapped < needed {
            return Err(unsupported(format!(
                "{mapped} bytes mapped but {}x{} at {} bpp needs {needed}",
                info.xres, info.yres, info.bits_per_pixel
            )));
        }
        let canvas = Canvas::new(Size::new(info.xres, info.yres), Rgb888::BLACK)?;
        log::info!(
            "{}: {} {}x{} {} bpp, stride {stride}",
            path.display(),
            info.id,
            info.xres,
            info.yres,
            info.bits_per_pixel
        );
        Ok(FbdevDisplay {
            device,
            format,
            canvas,
            stride,
            start,
        })
    }

    /// The pixel format in use.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// The device (e.g. a test fake, to inspect its memory).
    pub fn device(&self) -> &D {
        &self.device
    }
}

impl<D: FbDevice> Display for FbdevDisplay<D> {
    fn size(&self) -> Size {
        self.canvas.size()
    }

    fn draw(&mut self, frame: &Frame) -> Result<()> {
        self.canvas.render_frame(frame);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let (format, stride, start) = (self.format, self.stride, self.start);
        format.blit(&self.canvas, self.device.memory(), stride, start);
        Ok(())
    }

    fn describe(&self) -> String {
        let s = self.canvas.size();
        format!(
            "fbdev:{} ({}x{}, {} bpp)",
            self.device.path().display(),
            s.width,
            s.height,
            self.format.bytes_per_pixel * 8
        )
    }
}

/// What to check when an fbdev node is missing.
pub const FB_MISSING_HINT: &str = "recent L4T (>= 35.4.1) has no fbdev; use drm:/dev/dri/card0. \
     Elsewhere check `ls /dev/fb*` and that a framebuffer driver (fbcon, simpledrm, fbtft) is loaded";
/// What to check when an fbdev node may not be opened.
pub const FB_PERMISSION_HINT: &str =
    "add the user to the `video` group (`sudo usermod -aG video $USER`, log in again) or run as root";

#[cfg(target_os = "linux")]
pub use real::FbdevFile;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Status;

    /// A framebuffer in plain memory with whatever geometry a test wants.
    struct MemFb {
        info: FbScreenInfo,
        mem: Vec<u8>,
    }

    impl FbDevice for MemFb {
        fn path(&self) -> &Path {
            Path::new("/dev/fb-fake")
        }
        fn info(&self) -> &FbScreenInfo {
            &self.info
        }
        fn memory(&mut self) -> &mut [u8] {
            &mut self.mem
        }
    }

    fn rgb565_info(xres: u32, yres: u32, line_length: u32) -> FbScreenInfo {
        FbScreenInfo {
            id: "fake".into(),
            xres,
            yres,
            xoffset: 0,
            yoffset: 0,
            bits_per_pixel: 16,
            red: Bitfield::new(11, 5),
            green: Bitfield::new(5, 6),
            blue: Bitfield::new(0, 5),
            transp: Bitfield::new(0, 0),
            visual: FB_VISUAL_TRUECOLOR,
            line_length,
        }
    }

    #[test]
    fn frame_lands_in_memory_with_stride_and_panning() {
        // 320x240 RGB565 with 8 bytes of padding per line, panned to the second buffer.
        let mut info = rgb565_info(320, 240, 648);
        info.yoffset = 240;
        let mem = vec![0xEEu8; 648 * 480];
        let mut fb = FbdevDisplay::new(MemFb { info, mem }).unwrap();
        assert_eq!(fb.size(), Size::new(320, 240));
        fb.show(&Frame::new("hello", Status::Loading)).unwrap();
        let canvas = fb.canvas.clone();
        let mem = &fb.device().mem;
        assert!(
            mem[..648 * 240].iter().all(|&b| b == 0xEE),
            "first buffer untouched"
        );
        for (x, y) in [(0, 0), (10, 5), (319, 239), (160, 120)] {
            let at = 648 * (240 + y as usize) + 2 * x as usize;
            let want = PixelFormat::RGB565.pack(canvas.get(x, y).unwrap()) as u16;
            assert_eq!(
                u16::from_ne_bytes([mem[at], mem[at + 1]]),
                want,
                "({x},{y})"
            );
        }
        assert_eq!(
            mem[648 * 240 + 640..648 * 241],
            [0xEE; 8],
            "padding untouched"
        );
    }

    #[test]
    fn rejects_what_it_cannot_drive() {
        let mut info = rgb565_info(320, 240, 640);
        info.visual = 1; // pseudocolour
        let err = FbdevDisplay::new(MemFb {
            info,
            mem: vec![0; 640 * 240],
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("/dev/fb-fake: unsupported"),
            "{err}"
        );
        let mut info = rgb565_info(320, 240, 640);
        info.bits_per_pixel = 8;
        assert!(FbdevDisplay::new(MemFb {
            info,
            mem: vec![0; 640 * 240],
        })
        .is_err());
        let err = FbdevDisplay::new(MemFb {
            info: rgb565_info(320, 240, 640),
            mem: vec![0; 1000],
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("1000 bytes mapped"), "{err}");
    }
}

#[cfg(target_os = "linux")]
impl FbdevDisplay<FbdevFile> {
    /// Opens `/dev/fbN` and prepares it for drawing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(FbdevFile::open(path)?)
    }
}

#[cfg(target_os = "linux")]
mod real {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;
    use std::ptr::NonNull;

    const FBIOGET_VSCREENINFO: u32 = 0x4600;
    const FBIOGET_FSCREENINFO: u32 = 0x4602;

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct FbBitfield {
        offset: u32,
        length: u32,
        msb_right: u32,
    }

    /// `struct fb_var_screeninfo` from `<linux/fb.h>`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct FbVarScreeninfo {
        xres: u32,
        yres: u32,
        xres_virtual: u32,
        yres_virtual: u32,
        xoffset: u32,
        yoffset: u32,
        bits_per_pixel: u32,
        grayscale: u32,
        red: FbBitfield,
        green: FbBitfield,
        blue: FbBitfield,
        transp: FbBitfield,
        nonstd: u32,
        activate: u32,
        height: u32,
        width: u32,
        accel_flags: u32,
        timings: [u32; 11],
        reserved: [u32; 4],
    }

    /// `struct fb_fix_screeninfo` from `<linux/fb.h>`.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct FbFixScreeninfo {
        id: [u8; 16],
        smem_start: libc::c_ulong,
        smem_len: u32,
        kind: u32,
        type_aux: u32,
        visual: u32,
        xpanstep: u16,
        ypanstep: u16,
        ywrapstep: u16,
        line_length: u32,
        mmio_start: libc::c_ulong,
        mmio_len: u32,
        accel: u32,
        capabilities: u16,
        reserved: [u16; 2],
    }

    /// A real `/dev/fbN`, mapped read-write; unmapped on drop.
    pub struct FbdevFile {
        path: PathBuf,
        info: FbScreenInfo,
        map: NonNull<u8>,
        len: usize,
        _file: File,
    }

    // The mapping is owned by this value alone (no aliases are handed out beyond `&mut self`).
    unsafe impl Send for FbdevFile {}

    impl FbdevFile {
        /// Opens the node, reads its screen info and maps `smem_len` bytes.
        pub fn open(path: impl AsRef<Path>) -> Result<Self> {
            let path = path.as_ref().to_path_buf();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::open(&path, e, FB_MISSING_HINT, FB_PERMISSION_HINT))?;
            let fd = file.as_raw_fd();
            let mut var = FbVarScreeninfo::default();
            let mut fix = FbFixScreeninfo::default();
            // SAFETY: both structs match the kernel's layout and outlive the calls.
            let rc = unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO as _, &mut var) };
            if rc != 0 {
                return Err(ioctl_error(&path, "FBIOGET_VSCREENINFO"));
            }
            let rc = unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO as _, &mut fix) };
            if rc != 0 {
                return Err(ioctl_error(&path, "FBIOGET_FSCREENINFO"));
            }
            let len = fix.smem_len as usize;
            if len == 0 {
                return Err(Error::Unsupported {
                    device: path,
                    reason: "the driver reports no framebuffer memory".into(),
                });
            }
            // SAFETY: a fresh shared mapping of the device; checked for MAP_FAILED below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(Error::io(&path, "mmap", io::Error::last_os_error()));
            }
            let map = NonNull::new(ptr.cast::<u8>())
                .ok_or_else(|| Error::io(&path, "mmap", io::Error::other("null mapping")))?;
            let id_len = fix.id.iter().position(|&b| b == 0).unwrap_or(fix.id.len());
            let bitfield = |f: FbBitfield| Bitfield::new(f.offset, f.length);
            let info = FbScreenInfo {
                id: String::from_utf8_lossy(fix.id.get(..id_len).unwrap_or(&fix.id)).into_owned(),
                xres: var.xres,
                yres: var.yres,
                xoffset: var.xoffset,
                yoffset: var.yoffset,
                bits_per_pixel: var.bits_per_pixel,
                red: bitfield(var.red),
                green: bitfield(var.green),
                blue: bitfield(var.blue),
                transp: bitfield(var.transp),
                visual: fix.visual,
                line_length: fix.line_length,
            };
            Ok(FbdevFile {
                path,
                info,
                map,
                len,
                _file: file,
            })
        }
    }

    /// The last OS error of an ioctl on `path`.
    fn ioctl_error(path: &Path, what: &str) -> Error {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTTY) {
            Error::Unsupported {
                device: path.to_path_buf(),
                reason: format!("{what} failed: not a framebuffer device"),
            }
        } else {
            Error::io(path, what, e)
        }
    }

    impl FbDevice for FbdevFile {
        fn path(&self) -> &Path {
            &self.path
        }

        fn info(&self) -> &FbScreenInfo {
            &self.info
        }

        fn memory(&mut self) -> &mut [u8] {
            // SAFETY: `map` is a live mapping of `len` bytes owned by `self`.
            unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.len) }
        }
    }

    impl Drop for FbdevFile {
        fn drop(&mut self) {
            // SAFETY: unmapping exactly what `open` mapped, once.
            let rc = unsafe { libc::munmap(self.map.as_ptr().cast(), self.len) };
            if rc != 0 {
                log::warn!(
                    "{}: munmap: {}",
                    self.path.display(),
                    io::Error::last_os_error()
                );
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn kernel_struct_sizes() {
            // Sizes from <linux/fb.h> on LP64 (x86_64, aarch64).
            if std::mem::size_of::<libc::c_ulong>() == 8 {
                assert_eq!(std::mem::size_of::<FbVarScreeninfo>(), 160);
                assert_eq!(std::mem::size_of::<FbFixScreeninfo>(), 80);
            }
        }

        #[test]
        fn missing_and_non_fb_nodes_explain_themselves() {
            let err = FbdevFile::open("/dev/fb-does-not-exist")
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("/dev/fb-does-not-exist not found"), "{err}");
            assert!(err.contains("drm:/dev/dri/card0"), "{err}");
            let file = tempfile::NamedTempFile::new().unwrap();
            let err = FbdevFile::open(file.path()).err().unwrap().to_string();
            assert!(err.contains("not a framebuffer"), "{err}");
        }
    }
}
