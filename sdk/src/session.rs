//! One growing sequence on a [`Model`]: the backbone's KV cache, the image blocks in it, and the
//! graph calls of text and image positions.
//!
//! The prefix goes through the backbone once; each diffusion step runs only the `N` image
//! positions against the cached prefix (attention bidirectional inside the block), and only the
//! clean latent at t = 0 is committed to the cache, followed by EOI.

use std::ops::Range;
use std::time::{Duration, Instant};

use serde::Serialize;
use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::graph_id::{GraphId, PerGraph};
use crate::model::{output_f32, Model};

/// Where the time of a generation (or of a session's calls) went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Time inside each graph (serialised as a map from graph name).
    pub graphs: PerGraph<Duration>,
    /// Sampler updates, previews and token sampling (everything outside the graphs).
    pub host: Duration,
    /// Wall time of the whole generation.
    pub total: Duration,
}

impl Timings {
    /// Time inside graph `id`.
    pub fn graph(&self, id: GraphId) -> Duration {
        self.graphs[id]
    }

    /// Time inside all graphs together.
    pub fn graphs_total(&self) -> Duration {
        self.graphs.iter().map(|(_, d)| *d).sum()
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Timings) {
        for id in GraphId::ALL {
            self.graphs[id] += other.graphs[id];
        }
        self.host += other.host;
        self.total += other.total;
    }
}

/// The additive mask rows of `s` new positions after `past` cached ones: causal, except that
/// positions of one image block see each other.
pub fn attention_mask(past: usize, s: usize, blocks: &[Range<usize>]) -> Vec<f32> {
    let total = past + s;
    let mut mask = vec![f32::NEG_INFINITY; s * total];
    for (i, row) in mask.chunks_exact_mut(total.max(1)).enumerate() {
        let a = past + i;
        let block = blocks.iter().find(|b| b.contains(&a));
        for (j, m) in row.iter_mut().enumerate() {
            if j <= a || block.is_some_and(|b| b.contains(&j)) {
                *m = 0.0;
            }
        }
    }
    mask
}

/// Fails with [`Error::Numerical`] on a NaN/Inf in `latent`: the graphs can turn one into
/// finite garbage (a plausible prediction, a black image, a poisoned KV cache) instead of
/// propagating it.
fn check_latent(latent: &[f32]) -> Result<()> {
    match latent.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        None => Ok(()),
        Some((i, v)) => Err(Error::Numerical {
            what: "latent".into(),
            message: format!("non-finite value {v} at element {i}"),
        }),
    }
}

/// The last `n` values of a backbone output: an error, not a panic, when a graph returned fewer
/// than its interface promised.
fn last_rows(hidden: &[f32], n: usize) -> Result<Vec<f32>> {
    hidden
        .len()
        .checked_sub(n)
        .and_then(|start| hidden.get(start..))
        .map(<[f32]>::to_vec)
        .ok_or_else(|| Error::Numerical {
            what: "hidden".into(),
            message: format!(
                "the backbone returned {} values, expected at least {n}",
                hidden.len()
            ),
        })
}

/// A sequence in progress.
pub struct Session<'m> {
    model: &'m Model,
    /// Past keys and values, `2 × n_layers` tensors `[1, H, P, hd]` in the backbone's float.
    past: Vec<TValue>,
    len: usize,
    blocks: Vec<Range<usize>>,
    /// Every embedding appended so far (`len × D`): only kept for [`Session::recompute_prefix`].
    history: Option<Vec<f32>>,
    pub timings: Timings,
}

impl<'m> Session<'m> {
    /// An empty sequence.
    pub fn new(model: &'m Model) -> Result<Self> {
        let g = &model.manifest().geometry;
        let empty = model
            .part(GraphId::Backbone)
            .float_tensor(&[1, g.n_heads, 0, g.head_dim], &[])?;
        Ok(Session {
            model,
            past: (0..2 * g.n_layers).map(|_| empty.clone().into()).collect(),
            len: 0,
            blocks: Vec::new(),
            history: None,
            timings: Timings::default(),
        })
    }

    /// Benchmark mode: every diffusion step recomputes the whole sequence instead of reading the
    /// KV cache, as a runtime without a prefix cache would. Call before appending anything.
    pub fn recompute_prefix(&mut self) {
        self.history = Some(Vec::new());
    }

    /// Positions in the sequence so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions still free in the context.
    pub fn remaining(&self) -> usize {
        self.model
            .manifest()
            .geometry
            .max_seq_len
            .saturating_sub(self.len)
    }

    /// Runs graph `id` and adds its time to [`Session::timings`].
    fn run(&mut self, id: GraphId, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        let start = Instant::now();
        let out = self.model.part(id).run(inputs);
        self.timings.graphs[id] += start.elapsed();
        out
    }

    fn check_room(&self, s: usize) -> Result<()> {
        let max = self.model.manifest().geometry.max_seq_len;
        if self.len + s > max {
            return Err(Error::Context {
                message: format!(
                    "{} positions do not fit: {} used of the model's {max}",
                    s, self.len
                ),
            });
        }
        Ok(())
    }

    /// Embeds token ids (`[S × D]`).
    pub fn embed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let t = tract_ndarray::Array2::from_shape_vec((1, ids.len()), ids)
            .map_err(|e| Error::Numerical {
                what: "input_ids".into(),
                message: e.to_string(),
            })?
            .into_tensor();
        let out = self.run(GraphId::TextEmbed, tvec![t.into()])?;
        output_f32(&out, 0, "embeddings")
    }

    /// Runs the backbone on `s` new positions (`emb` is `[S × D]`); `block` marks new image
    /// positions (relative). With `commit` the positions join the cache.
    fn backbone(
        &mut self,
        emb: &[f32],
        block: Option<Range<usize>>,
        commit: bool,
    ) -> Result<Vec<f32>> {
        let d = self.model.manifest().geometry.dim;
        let s = emb.len() / d;
        self.check_room(s)?;
        let mut blocks = self.blocks.clone();
        if let Some(b) = &block {
            blocks.push(self.len + b.start..self.len + b.end);
        }
        let recompute = self.history.is_some() && !commit;
        let (past_len, new, past) = match &self.history {
            Some(h) if recompute => {
                let mut all = h.clone();
                all.extend_from_slice(emb);
                let g = &self.model.manifest().geometry;
                let empty = self
                    .model
                    .part(GraphId::Backbone)
                    .float_tensor(&[1, g.n_heads, 0, g.head_dim], &[])?;
                let past: Vec<TValue> = (0..2 * g.n_layers).map(|_| empty.clone().into()).collect();
                (0, all, past)
            }
            _ => (self.len, emb.to_vec(), self.past.clone()),
        };
        let total_new = new.len() / d;
        let positions: Vec<i64> = (past_len..past_len + total_new).map(|p| p as i64).collect();
        let mask = attention_mask(past_len, total_new, &blocks);
        let bb = self.model.part(GraphId::Backbone);
        let mut inputs: TVec<TValue> = tvec![
            bb.float_tensor(&[1, total_new, d], &new)?.into(),
            tract_ndarray::Array1::from_vec(positions)
                .into_tensor()
                .into(),
            bb.float_tensor(&[total_new, past_len + total_new], &mask)?
                .into(),
        ];
        inputs.extend(past);
        let mut out = self.run(GraphId::Backbone, inputs)?;
        let hidden = output_f32(&out, 0, "hidden")?;
        if commit {
            out.remove(0);
            self.past = out.into_iter().collect();
            self.len += s;
            if let Some(b) = block {
                self.blocks
                    .push(self.len - s + b.start..self.len - s + b.end);
            }
            if let Some(h) = &mut self.history {
                h.extend_from_slice(emb);
            }
        }
        // Only the rows of the new positions (recompute mode returns the whole sequence).
        last_rows(&hidden, s * d)
    }

    /// Appends text tokens; returns the hidden state of the last one (`[D]`).
    pub fn append_tokens(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::InvalidOption {
                name: "tokens".into(),
                message: "nothing to append".into(),
            });
        }
        let emb = self.embed(ids)?;
        let hidden = self.backbone(&emb, None, true)?;
        let d = self.model.manifest().geometry.dim;
        last_rows(&hidden, d)
    }

    /// Next-token logits from a hidden state (`[D]` → `[V]`).
    pub fn logits(&mut self, hidden: &[f32]) -> Result<Vec<f32>> {
        let lm = self.model.part(GraphId::LmHead);
        let t = lm.float_tensor(&[1, 1, hidden.len()], hidden)?;
        let out = self.run(GraphId::LmHead, tvec![t.into()])?;
        output_f32(&out, 0, "logits")
    }

    /// `patch_in` on a latent `[C × Hl × Hl]` at model time `t`: patch vectors and U-Net skips.
    fn patch_in(&mut self, latent: &[f32], t: f32) -> Result<(Vec<f32>, TVec<TValue>)> {
        check_latent(latent)?;
        let g = &self.model.manifest().geometry;
        let shape = [1, g.latent_channels, g.latent_size, g.latent_size];
        let p = self.model.part(GraphId::PatchIn);
        let inputs = tvec![
            p.float_tensor(&shape, latent)?.into(),
            p.float_tensor(&[1], &[t])?.into(),
        ];
        let mut out = self.run(GraphId::PatchIn, inputs)?;
        let patches = output_f32(&out, 0, "patches")?;
        out.remove(0);
        Ok((patches, out))
    }

    /// One denoiser evaluation: the model's prediction for `latent` at model time `t`, with the
    /// image block attending to the cached sequence (BOI already appended) and to itself.
    pub fn denoise(&mut self, latent: &[f32], t: f32) -> Result<Vec<f32>> {
        let n = self.model.manifest().geometry.num_patches;
        let (patches, skips) = self.patch_in(latent, t)?;
        let hidden = self.backbone(&patches, Some(0..n), false)?;
        let d = self.model.manifest().geometry.dim;
        let po = self.model.part(GraphId::PatchOut);
        let mut inputs: TVec<TValue> = tvec![po.float_tensor(&[1, n, d], &hidden)?.into()];
        for skip in skips {
            // Skips come out of patch_in in its float type; patch_out may run another one.
            let value = if po.float == self.model.part(GraphId::PatchIn).float {
                skip
            } else {
                let (shape, data) = crate::graph::tensor_to_f32(&skip, "skip")?;
                po.float_tensor(&shape, &data)?.into()
            };
            inputs.push(value);
        }
        inputs.push(po.float_tensor(&[1], &[t])?.into());
        let out = self.run(GraphId::PatchOut, inputs)?;
        output_f32(&out, 0, "prediction")
    }

    /// Commits a clean latent (t = 0) as an image block followed by EOI; returns the hidden
    /// state at EOI (`[D]`), from which text continues. BOI must be the last position.
    pub fn append_image(&mut self, latent: &[f32]) -> Result<Vec<f32>> {
        let n = self.model.manifest().geometry.num_patches;
        let eoi = self.model.manifest().special_tokens.eoi;
        let (mut emb, _) = self.patch_in(latent, 0.0)?;
        emb.extend(self.embed(&[eoi])?);
        let hidden = self.backbone(&emb, Some(0..n), true)?;
        let d = self.model.manifest().geometry.dim;
        last_rows(&hidden, d)
    }

    /// Encodes an RGB image (`[3 × H × W]` in `[-1, 1]`) to a latent with the VAE.
    pub fn encode_image(&mut self, chw: &[f32]) -> Result<Vec<f32>> {
        let g = &self.model.manifest().geometry;
        let shape = [1, g.image_channels, g.image_size, g.image_size];
        let v = self.model.part(GraphId::VaeEncoder);
        let inputs = tvec![v.float_tensor(&shape, chw)?.into()];
        let out = self.run(GraphId::VaeEncoder, inputs)?;
        output_f32(&out, 0, "latent")
    }

    /// Decodes a latent to RGB `[3 × H × W]` in `[-1, 1]` with the VAE.
    pub fn decode_latent(&mut self, latent: &[f32]) -> Result<Vec<f32>> {
        check_latent(latent)?;
        let g = &self.model.manifest().geometry;
        let shape = [1, g.latent_channels, g.latent_size, g.latent_size];
        let v = self.model.part(GraphId::VaeDecoder);
        let inputs = tvec![v.float_tensor(&shape, latent)?.into()];
        let out = self.run(GraphId::VaeDecoder, inputs)?;
        output_f32(&out, 0, "image")
    }
}

#[cfg(test)]
mod tests {
    use super::attention_mask;
    use std::ops::Range;

    fn allowed(mask: &[f32], cols: usize, r: usize, c: usize) -> bool {
        mask[r * cols + c] == 0.0
    }

    #[test]
    fn mask_is_causal_with_bidirectional_image_blocks() {
        // 2 text, image block at 2..5, then EOI at 5 and one more text at 6.
        let blocks = [Range { start: 2, end: 5 }];
        let m = attention_mask(0, 7, &blocks);
        for r in 0..7 {
            for c in 0..7 {
                let expect = c <= r || (2..5).contains(&r) && (2..5).contains(&c);
                assert_eq!(allowed(&m, 7, r, c), expect, "row {r} col {c}");
            }
        }
        // Text before the image never sees it; text after sees all of it.
        assert!(!allowed(&m, 7, 1, 2));
        assert!((2..5).all(|c| allowed(&m, 7, 6, c)));
    }

    #[test]
    fn suffix_rows_match_the_full_mask() {
        let blocks = [Range { start: 3, end: 6 }];
        let full = attention_mask(0, 8, &blocks);
        let tail = attention_mask(3, 5, &blocks);
        assert_eq!(&full[3 * 8..], &tail[..]);
    }
}
