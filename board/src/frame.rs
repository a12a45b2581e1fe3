//! What the display shows: one [`Frame`] is a complete, self-contained screen.
//!
//! A frame carries everything needed to redraw from scratch (no incremental state), so the render
//! thread may drop any number of stale frames and still show the right picture. Text lives in
//! fixed-capacity buffers: a runaway generation cannot grow a frame without bound, and copying
//! text in truncates at a `char` boundary instead of panicking.

use transfusion_image::RgbImage;

use crate::text::{push_truncated, truncated};

/// Bytes kept of the prompt (the top line shows fewer; the rest is for logs and screenshots).
pub const PROMPT_CAPACITY: usize = 256;
/// Bytes kept of generated text (a caption, a story): about a screenful at 800×480.
pub const TEXT_CAPACITY: usize = 1024;
/// Bytes kept of an error message.
pub const MESSAGE_CAPACITY: usize = 128;

/// The prompt buffer.
pub type PromptText = heapless::String<PROMPT_CAPACITY>;
/// The generated-text buffer.
pub type GeneratedText = heapless::String<TEXT_CAPACITY>;
/// An error message buffer.
pub type MessageText = heapless::String<MESSAGE_CAPACITY>;

/// Where generation stands; drives the progress bar and its label.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Status {
    /// The model is loading (empty bar, "loading").
    #[default]
    Loading,
    /// Denoising: step `step` of `total` done, `elapsed_ms` since the request started.
    Generating {
        /// Steps completed (clamped to `total` when drawn).
        step: u32,
        /// Steps planned (0 draws an empty bar).
        total: u32,
        /// Milliseconds since generation started.
        elapsed_ms: u64,
    },
    /// Finished in `total_ms` milliseconds (full bar).
    Done {
        /// Milliseconds the whole request took.
        total_ms: u64,
    },
    /// Something failed; the message is shown in the bar, in red.
    Error(MessageText),
}

impl Status {
    /// An error status holding `message`, truncated to [`MESSAGE_CAPACITY`] bytes.
    pub fn error(message: &str) -> Self {
        Status::Error(truncated(message))
    }
}

/// Whether the image is an intermediate latent preview or the decoded result; the two are
/// framed in different colours so a viewer never mistakes a preview for the final picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A per-step preview (latent resolution, e.g. 16×16).
    Preview,
    /// The final decoded image (e.g. 64×64).
    Final,
}

/// An image to show and what kind it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameImage {
    /// The pixels, shown nearest-neighbour scaled by the largest integer factor that fits.
    pub image: RgbImage,
    /// Preview or final.
    pub kind: ImageKind,
}

/// One screen: prompt line, progress, optional image, generated text.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Frame {
    /// The user's prompt, shown on the top line (cut with `...` when too wide).
    pub prompt: PromptText,
    /// Progress bar state.
    pub status: Status,
    /// The preview or final image, centred in the middle area.
    pub image: Option<FrameImage>,
    /// Generated text, word-wrapped below the image.
    pub text: GeneratedText,
}

impl Frame {
    /// A frame with `prompt` (truncated to [`PROMPT_CAPACITY`] bytes), `status`, no image and
    /// no text.
    pub fn new(prompt: &str, status: Status) -> Self {
        Frame {
            prompt: truncated(prompt),
            status,
            image: None,
            text: GeneratedText::new(),
        }
    }

    /// This frame showing `image` as `kind`.
    pub fn with_image(mut self, image: RgbImage, kind: ImageKind) -> Self {
        self.image = Some(FrameImage { image, kind });
        self
    }

    /// This frame with generated text `text` (truncated to [`TEXT_CAPACITY`] bytes).
    pub fn with_text(mut self, text: &str) -> Self {
        self.set_text(text);
        self
    }

    /// Replaces the prompt; returns `false` if it was truncated.
    pub fn set_prompt(&mut self, prompt: &str) -> bool {
        self.prompt.clear();
        push_truncated(&mut self.prompt, prompt)
    }

    /// Replaces the generated text; returns `false` if it was truncated.
    pub fn set_text(&mut self, text: &str) -> bool {
        self.text.clear();
        push_truncated(&mut self.text, text)
    }

    /// Appends streamed text (e.g. one decoded token); returns `false` once the buffer is full.
    pub fn push_text(&mut self, piece: &str) -> bool {
        push_truncated(&mut self.text, piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_inputs_are_truncated_not_rejected() {
        let long = "ä".repeat(1000);
        let mut frame = Frame::new(&long, Status::error(&long));
        assert_eq!(frame.prompt.len(), PROMPT_CAPACITY);
        assert!(matches!(&frame.status, Status::Error(m) if m.len() == MESSAGE_CAPACITY));
        assert!(!frame.set_text(&long));
        assert_eq!(frame.text.len(), TEXT_CAPACITY);
        assert!(!frame.push_text("x"));
        assert!(frame.set_text("short"));
        assert!(frame.push_text(" more"));
        assert_eq!(frame.text.as_str(), "short more");
    }
}
