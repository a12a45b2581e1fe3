//! Fixed-capacity text buffers and word wrapping for monospaced fonts.
//!
//! Captions, prompts and status lines live in [`heapless::String`]s so that a frame has a bounded
//! size no matter what the model generates; every copy into one truncates at a `char` boundary
//! instead of panicking or failing. Wrapping counts columns (one glyph per `char`, as the
//! embedded-graphics mono fonts draw), so "fits in N pixels" is "fits in N / advance columns".

use core::fmt;

/// The largest index `<= max` that is a `char` boundary of `s` (`s.len()` when `max` is past it).
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    // Index 0 is always a boundary, so this terminates.
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// Appends as much of `s` to `dst` as fits, cut at a `char` boundary. Returns `true` when all of
/// `s` fitted, `false` when it was truncated.
pub fn push_truncated<const N: usize>(dst: &mut heapless::String<N>, s: &str) -> bool {
    let room = N.saturating_sub(dst.len());
    let cut = floor_char_boundary(s, room);
    // `cut <= room` bytes always fit, so this push cannot fail.
    let _ = dst.push_str(&s[..cut]);
    cut == s.len()
}

/// A new buffer holding the longest prefix of `s` that fits in `N` bytes.
pub fn truncated<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    push_truncated(&mut out, s);
    out
}

/// A [`fmt::Write`] into a fixed buffer that drops what does not fit instead of failing, so
/// `write!(TruncatingWriter::new(&mut buf), "step {i}/{n}")` never panics or errors.
pub struct TruncatingWriter<'a, const N: usize> {
    buffer: &'a mut heapless::String<N>,
    truncated: bool,
}

impl<'a, const N: usize> TruncatingWriter<'a, N> {
    /// Writes after whatever `buffer` already holds.
    pub fn new(buffer: &'a mut heapless::String<N>) -> Self {
        Self {
            buffer,
            truncated: false,
        }
    }

    /// Whether some output was dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl<const N: usize> fmt::Write for TruncatingWriter<'_, N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !push_truncated(self.buffer, s) {
            self.truncated = true;
        }
        Ok(())
    }
}

/// `s` cut to at most `max_cols` characters; a cut line ends in `...` so the viewer knows.
/// The result also fits in `N` bytes (truncated further at a `char` boundary if needed).
pub fn fit_line<const N: usize>(s: &str, max_cols: usize) -> heapless::String<N> {
    let count = s.chars().count();
    if count <= max_cols {
        return truncated(s);
    }
    let (keep, dots) = if max_cols >= 4 {
        (max_cols - 3, "...")
    } else {
        (max_cols, "")
    };
    let cut = s.char_indices().nth(keep).map_or(s.len(), |(i, _)| i);
    let mut out = heapless::String::new();
    // Leave room for the dots so they survive a tight byte capacity.
    let room = N.saturating_sub(dots.len());
    let cut = floor_char_boundary(&s[..cut], room);
    push_truncated(&mut out, &s[..cut]);
    push_truncated(&mut out, dots);
    out
}

/// Greedy word wrap of `text` into lines of at most `max_cols` characters.
///
/// Lines are slices of `text` (no allocation per line). `\n` starts a new line (an empty
/// paragraph gives an empty line); runs of whitespace between words are kept as written
/// and counted; a word longer than a line is split across lines. `max_cols == 0` yields nothing.
pub fn wrap(text: &str, max_cols: usize) -> Vec<&str> {
    let mut lines = Vec::new();
    if max_cols == 0 {
        return lines;
    }
    for para in text.split('\n') {
        let para = para.strip_suffix('\r').unwrap_or(para);
        wrap_paragraph(para, max_cols, &mut lines);
    }
    lines
}

/// Wraps one paragraph (no `\n`) into `lines`.
fn wrap_paragraph<'a>(para: &'a str, max_cols: usize, lines: &mut Vec<&'a str>) {
    // The current line is para[start..end] and is `cols` characters wide.
    let mut current: Option<(usize, usize, usize)> = None;
    for (word_start, word) in words(para) {
        let mut start = word_start;
        let mut rest = word;
        let mut rest_cols = rest.chars().count();
        loop {
            if let Some((line_start, line_end, cols)) = current {
                let gap = para[line_end..start].chars().count();
                if cols + gap + rest_cols <= max_cols {
                    current = Some((line_start, start + rest.len(), cols + gap + rest_cols));
                    break;
                }
                lines.push(&para[line_start..line_end]);
                current = None;
            }
            if rest_cols <= max_cols {
                current = Some((start, start + rest.len(), rest_cols));
                break;
            }
            // A word wider than a whole line: emit a full-width piece and go on with the rest.
            let cut = rest
                .char_indices()
                .nth(max_cols)
                .map_or(rest.len(), |(i, _)| i);
            lines.push(&rest[..cut]);
            start += cut;
            rest = &rest[cut..];
            rest_cols -= max_cols;
        }
    }
    match current {
        Some((line_start, line_end, _)) => lines.push(&para[line_start..line_end]),
        None => lines.push(""),
    }
}

/// The whitespace-separated words of `s` with their byte offsets.
fn words(s: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest_start = 0;
    core::iter::from_fn(move || {
        let rest = &s[rest_start..];
        let skip = rest.find(|c: char| !c.is_whitespace())?;
        let start = rest_start + skip;
        let len = s[start..]
            .find(char::is_whitespace)
            .unwrap_or(s.len() - start);
        rest_start = start + len;
        Some((start, &s[start..start + len]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn truncation_respects_char_boundaries() {
        // "é" is two bytes: a 3-byte buffer holds "aé", a 2-byte one only "a".
        assert_eq!(truncated::<3>("aéb").as_str(), "aé");
        assert_eq!(truncated::<2>("aéb").as_str(), "a");
        assert_eq!(truncated::<0>("abc").as_str(), "");
        assert_eq!(truncated::<8>("🙂🙂🙂").as_str(), "🙂🙂");
        let mut s: heapless::String<4> = truncated("ab");
        assert!(!push_truncated(&mut s, "cdé"));
        assert_eq!(s.as_str(), "abcd");
    }

    #[test]
    fn truncating_writer_never_fails() {
        let mut buf = heapless::String::<10>::new();
        let mut w = TruncatingWriter::new(&mut buf);
        assert!(write!(w, "step {}/{} ms", 12345, 67890).is_ok());
        assert!(w.truncated());
        assert_eq!(buf.as_str(), "step 12345");
    }

    #[test]
    fn fit_line_adds_ellipsis() {
        assert_eq!(fit_line::<64>("hello", 5).as_str(), "hello");
        assert_eq!(fit_line::<64>("hello world", 8).as_str(), "hello...");
        assert_eq!(fit_line::<64>("héllo wörld", 8).as_str(), "héllo...");
        assert_eq!(fit_line::<64>("hello", 2).as_str(), "he");
        assert_eq!(fit_line::<64>("hello", 0).as_str(), "");
        // Byte capacity tighter than the column limit: still valid UTF-8 and ends in dots.
        assert_eq!(fit_line::<6>("ééééé ééé", 8).as_str(), "é...");
    }

    #[test]
    fn wraps_on_words() {
        assert_eq!(
            wrap("a photo of a red cat on a mat", 10),
            ["a photo of", "a red cat", "on a mat"]
        );
        assert_eq!(wrap("exactly10c", 10), ["exactly10c"]);
        assert_eq!(
            wrap("  leading and trailing  ", 9),
            ["leading", "and", "trailing"]
        );
    }

    #[test]
    fn wraps_long_words_and_newlines() {
        assert_eq!(wrap("abcdefghijkl xy", 5), ["abcde", "fghij", "kl xy"]);
        assert_eq!(wrap("one\n\ntwo\r\nthree", 10), ["one", "", "two", "three"]);
        assert_eq!(wrap("héllo wörld ñ", 5), ["héllo", "wörld", "ñ"]);
        assert!(wrap("anything", 0).is_empty());
    }

    #[test]
    fn wrapped_lines_never_exceed_width() {
        let text = "The quick brown fox jumps over the lazy dog; \
                    supercalifragilisticexpialidocious words   with  gaps.";
        for cols in 1..40 {
            for line in wrap(text, cols) {
                assert!(line.chars().count() <= cols, "{cols}: {line:?}");
            }
        }
    }
}
