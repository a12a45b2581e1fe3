//! The seven graphs of a bundle (see `docs/bundle.md`), built from a checkpoint.

use transfusion_sdk::config::{Config, PatchKind};
use transfusion_sdk::manifest::{IoDtype, Precision};
use transfusion_sdk::GraphId;

use super::builder::{Attr, BuiltGraph, Dim};
use super::layers::Net;
use super::quant::{Int8Parts, QuantGroup};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// One converted graph and whether it runs integer kernels.
pub struct Graph {
    pub built: BuiltGraph,
    pub int8_ops: bool,
}

/// Builds graph `name` at `precision`; `int8` selects the quantized groups for `Int8`.
pub fn build_graph(
    id: GraphId,
    ckpt: &Checkpoint,
    precision: Precision,
    int8: Int8Parts,
) -> Result<Graph> {
    let quant = (precision == Precision::Int8).then_some(int8);
    let mut net = Net::new(ckpt, precision.float_dtype(), quant);
    let c = &ckpt.config;
    match id {
        GraphId::TextEmbed => text_embed(&mut net, c)?,
        GraphId::Backbone => backbone(&mut net, c)?,
        GraphId::LmHead => lm_head(&mut net, c)?,
        GraphId::PatchIn => patch_in(&mut net, c)?,
        GraphId::PatchOut => patch_out(&mut net, c)?,
        GraphId::VaeEncoder => vae_encoder(&mut net, c)?,
        GraphId::VaeDecoder => vae_decoder(&mut net, c)?,
    }
    let int8_ops = net.used_int8;
    Ok(Graph {
        built: net.b.finish(id.name(), env!("CARGO_PKG_VERSION")),
        int8_ops,
    })
}

fn sym(s: &str) -> Dim {
    Dim::sym(s)
}

fn text_embed(net: &mut Net, c: &Config) -> Result<()> {
    let (v, d) = (c.text.vocab_size, c.backbone.dim);
    let ids = net
        .b
        .input("input_ids", IoDtype::Int64, &[1.into(), sym("S")]);
    let table = net.weight("text.embed.weight", &[v, d])?;
    let e = net
        .b
        .op("Gather", &[&table, &ids], vec![("axis", Attr::Int(0))]);
    net.b.output(
        "embeddings",
        &e,
        IoDtype::Float,
        &[1.into(), sym("S"), d.into()],
    );
    Ok(())
}

fn lm_head(net: &mut Net, c: &Config) -> Result<()> {
    let (v, d) = (c.text.vocab_size, c.backbone.dim);
    let h = net
        .b
        .input("hidden", IoDtype::Float, &[1.into(), sym("S"), d.into()]);
    let logits = net.linear(&h, "text.lm_head", (d, v), false, QuantGroup::Backbone)?;
    net.b.output(
        "logits",
        &logits,
        IoDtype::Float,
        &[1.into(), sym("S"), v.into()],
    );
    Ok(())
}

/// RoPE tables `[S, hd]` (cos, sin) in the graph's float type, from int64 positions.
fn rope_tables(net: &mut Net, positions: &str, head_dim: usize, theta: f32) -> (String, String) {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|j| (f64::from(theta)).powf(-(2.0 * j as f64) / head_dim as f64) as f32)
        .collect();
    let p = net.b.op("Cast", &[positions], vec![("to", Attr::Int(1))]);
    let axes = net.b.ints("axes", &[1]);
    let p = net.b.op("Unsqueeze", &[&p, &axes], vec![]);
    let inv = net.b.const_f32("rope_inv_freq", &[1, half], &inv);
    let ang = net.b.op("Mul", &[&p, &inv], vec![]);
    let ang = net
        .b
        .op("Concat", &[&ang, &ang], vec![("axis", Attr::Int(1))]);
    let cos = net.b.op("Cos", &[&ang], vec![]);
    let sin = net.b.op("Sin", &[&ang], vec![]);
    (net.from_f32(&cos), net.from_f32(&sin))
}

/// `x·cos + rotate_half(x)·sin` on `[1, H, S, hd]`.
fn apply_rope(net: &mut Net, x: &str, cos: &str, sin: &str, head_dim: usize) -> String {
    let half = head_dim as i64 / 2;
    let axes = net.b.ints("axes", &[3]);
    let s0 = net.b.ints("starts", &[0]);
    let s1 = net.b.ints("starts", &[half]);
    let e1 = net.b.ints("ends", &[head_dim as i64]);
    let x1 = net.b.op("Slice", &[x, &s0, &s1, &axes], vec![]);
    let x2 = net.b.op("Slice", &[x, &s1, &e1, &axes], vec![]);
    let nx2 = net.b.op("Neg", &[&x2], vec![]);
    let rot = net
        .b
        .op("Concat", &[&nx2, &x1], vec![("axis", Attr::Int(3))]);
    let a = net.b.op("Mul", &[x, cos], vec![]);
    let r = net.b.op("Mul", &[&rot, sin], vec![]);
    net.b.op("Add", &[&a, &r], vec![])
}

/// `[1, S, H·hd]` → `[1, H, S, hd]`.
fn split_heads(net: &mut Net, x: &str, heads: usize, head_dim: usize) -> String {
    let shape = net
        .b
        .ints("heads_shape", &[0, 0, heads as i64, head_dim as i64]);
    let r = net.b.op("Reshape", &[x, &shape], vec![]);
    net.b.op(
        "Transpose",
        &[&r],
        vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
    )
}

fn backbone(net: &mut Net, c: &Config) -> Result<()> {
    let b = &c.backbone;
    let (d, h, hd, f) = (b.dim, b.n_heads, b.head_dim, b.ffn_dim);
    let hdim = h * hd;
    let q = QuantGroup::Backbone;
    let mut x = net.b.input(
        "embeddings",
        IoDtype::Float,
        &[1.into(), sym("S"), d.into()],
    );
    let positions = net.b.input("positions", IoDtype::Int64, &[sym("S")]);
    let mask = net
        .b
        .input("attention_mask", IoDtype::Float, &[sym("S"), sym("P+S")]);
    let past_shape = [1.into(), h.into(), sym("P"), hd.into()];
    let present_shape = [1.into(), h.into(), sym("P+S"), hd.into()];
    let mut past = Vec::new();
    for l in 0..b.n_layers {
        let k = net
            .b
            .input(&format!("past_key.{l}"), IoDtype::Float, &past_shape);
        let v = net
            .b
            .input(&format!("past_value.{l}"), IoDtype::Float, &past_shape);
        past.push((k, v));
    }
    let (cos, sin) = rope_tables(net, &positions, hd, b.rope_theta);
    let scale = net
        .b
        .const_float("attn_scale", &[], &[1.0 / (hd as f32).sqrt()]);
    let mut presents = Vec::new();
    for (l, (past_k, past_v)) in past.iter().enumerate() {
        let p = format!("backbone.layers.{l}");
        let hn = net.rms_norm(&x, &format!("{p}.attn_norm.weight"), d, b.norm_eps)?;
        let qv = net.linear(&hn, &format!("{p}.attn.q"), (d, hdim), false, q)?;
        let kv = net.linear(&hn, &format!("{p}.attn.k"), (d, hdim), false, q)?;
        let vv = net.linear(&hn, &format!("{p}.attn.v"), (d, hdim), false, q)?;
        let qh = split_heads(net, &qv, h, hd);
        let kh = split_heads(net, &kv, h, hd);
        let vh = split_heads(net, &vv, h, hd);
        let qh = apply_rope(net, &qh, &cos, &sin, hd);
        let kh = apply_rope(net, &kh, &cos, &sin, hd);
        let k_all = net
            .b
            .op("Concat", &[past_k, &kh], vec![("axis", Attr::Int(2))]);
        let v_all = net
            .b
            .op("Concat", &[past_v, &vh], vec![("axis", Attr::Int(2))]);
        let kt = net.b.op(
            "Transpose",
            &[&k_all],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        );
        let scores = net.b.op("MatMul", &[&qh, &kt], vec![]);
        let scores = net.b.op("Mul", &[&scores, &scale], vec![]);
        let scores = net.b.op("Add", &[&scores, &mask], vec![]);
        let s32 = net.to_f32(&scores);
        let probs = net.b.op("Softmax", &[&s32], vec![("axis", Attr::Int(-1))]);
        let probs = net.from_f32(&probs);
        let o = net.b.op("MatMul", &[&probs, &v_all], vec![]);
        let o = net.b.op(
            "Transpose",
            &[&o],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let merged = net.b.ints("merge_shape", &[0, 0, hdim as i64]);
        let o = net.b.op("Reshape", &[&o, &merged], vec![]);
        let o = net.linear(&o, &format!("{p}.attn.o"), (hdim, d), false, q)?;
        x = net.b.op("Add", &[&x, &o], vec![]);
        let hn = net.rms_norm(&x, &format!("{p}.ffn_norm.weight"), d, b.norm_eps)?;
        let g = net.linear(&hn, &format!("{p}.ffn.gate"), (d, f), false, q)?;
        let u = net.linear(&hn, &format!("{p}.ffn.up"), (d, f), false, q)?;
        let g = net.silu(&g);
        let gu = net.b.op("Mul", &[&g, &u], vec![]);
        let dn = net.linear(&gu, &format!("{p}.ffn.down"), (f, d), false, q)?;
        x = net.b.op("Add", &[&x, &dn], vec![]);
        presents.push((k_all, v_all));
    }
    let hidden = net.rms_norm(&x, "backbone.norm.weight", d, b.norm_eps)?;
    net.b.output(
        "hidden",
        &hidden,
        IoDtype::Float,
        &[1.into(), sym("S"), d.into()],
    );
    for (l, (k, v)) in presents.iter().enumerate() {
        net.b.output(
            &format!("present_key.{l}"),
            k,
            IoDtype::Float,
            &present_shape,
        );
        net.b.output(
            &format!("present_value.{l}"),
            v,
            IoDtype::Float,
            &present_shape,
        );
    }
    Ok(())
}

fn latent_shape(c: &Config) -> [Dim; 4] {
    let g = c.geometry();
    [
        sym("B"),
        g.latent_channels.into(),
        g.latent_size.into(),
        g.latent_size.into(),
    ]
}

/// Declares `timestep [B]` and returns `(temb, SiLU(temb))`.
fn timestep_input(net: &mut Net, c: &Config) -> Result<(String, String)> {
    let t = net.b.input("timestep", IoDtype::Float, &[sym("B")]);
    let temb = net.timestep_embedding(
        &t,
        c.patch.timestep_freq_dim,
        c.backbone.dim,
        QuantGroup::Patch,
    )?;
    let act = net.silu(&temb);
    Ok((temb, act))
}

fn patch_in(net: &mut Net, c: &Config) -> Result<()> {
    let g = c.geometry();
    let (d, n, p, ch) = (g.dim, g.num_patches, g.patch_size, g.latent_channels);
    let latent = net.b.input("latent", IoDtype::Float, &latent_shape(c));
    let (temb, temb_act) = timestep_input(net, c)?;
    let mut skip_values = Vec::new();
    let patches = match c.patch.kind {
        PatchKind::Linear => {
            let gd = g.patch_grid as i64;
            let (pi, ci) = (p as i64, ch as i64);
            let s6 = net.b.ints("patchify", &[0, ci, gd, pi, gd, pi]);
            let x = net.b.op("Reshape", &[&latent, &s6], vec![]);
            let x = net.b.op(
                "Transpose",
                &[&x],
                vec![("perm", Attr::Ints(vec![0, 2, 4, 1, 3, 5]))],
            );
            let s3 = net.b.ints("patchify", &[0, n as i64, ci * pi * pi]);
            let x = net.b.op("Reshape", &[&x, &s3], vec![]);
            let x = net.linear(
                &x,
                "patch.in_proj",
                (ch * p * p, d),
                true,
                QuantGroup::Patch,
            )?;
            let axes = net.b.ints("axes", &[1]);
            let t = net.b.op("Unsqueeze", &[&temb, &axes], vec![]);
            net.b.op("Add", &[&x, &t], vec![])
        }
        PatchKind::Unet => {
            let u = &c.patch.channels;
            let un = QuantGroup::Unet;
            let temb = Some((temb_act.as_str(), d));
            let (mut cur, _) = ends(u, "patch.channels")?;
            let mut h = net.conv(&latent, "patch.unet.conv_in", (ch, cur, 3), 1, un)?;
            for (i, &ui) in u.iter().enumerate() {
                let prefix = format!("patch.unet.down.{i}");
                h = net.resblock(&h, &format!("{prefix}.res"), (cur, ui), temb, un)?;
                skip_values.push(h.clone());
                h = net.conv(&h, &format!("{prefix}.downsample"), (ui, ui, 3), 2, un)?;
                cur = ui;
            }
            h = net.resblock(&h, "patch.unet.mid_in", (cur, cur), temb, un)?;
            h = net.conv(&h, "patch.unet.proj_in", (cur, d, 1), 1, QuantGroup::Patch)?;
            let s = net.b.ints("tokens", &[0, d as i64, n as i64]);
            let h = net.b.op("Reshape", &[&h, &s], vec![]);
            net.b.op(
                "Transpose",
                &[&h],
                vec![("perm", Attr::Ints(vec![0, 2, 1]))],
            )
        }
    };
    let patches = patch_conditioning(net, c, patches, &temb_act)?;
    net.b.output(
        "patches",
        &patches,
        IoDtype::Float,
        &[sym("B"), n.into(), d.into()],
    );
    for (i, (value, skip)) in skip_values.iter().zip(&g.skips).enumerate() {
        let shape = [
            sym("B"),
            skip.channels.into(),
            skip.size.into(),
            skip.size.into(),
        ];
        net.b
            .output(&format!("skip.{i}"), value, IoDtype::Float, &shape);
    }
    Ok(())
}

/// Format-2 conditioning of the patch vectors `[B, N, D]` (docs/checkpoint.md):
/// `+ patch.pos_embed [N, D]` (the 2-D cell position) and `+ patch.time_proj(SiLU(temb))`
/// (the timestep, one `[D]` vector per image, broadcast over its N patches).
fn patch_conditioning(
    net: &mut Net,
    c: &Config,
    patches: String,
    temb_act: &str,
) -> Result<String> {
    let g = c.geometry();
    let mut x = patches;
    if c.patch.has_position_embedding() {
        let pos = net.weight("patch.pos_embed", &[g.num_patches, g.dim])?;
        x = net.b.op("Add", &[&x, &pos], vec![]);
    }
    if c.patch.has_timestep_tokens() {
        let t = net.linear(
            temb_act,
            "patch.time_proj",
            (g.dim, g.dim),
            true,
            QuantGroup::Patch,
        )?;
        let axes = net.b.ints("axes", &[1]);
        let t = net.b.op("Unsqueeze", &[&t, &axes], vec![]);
        x = net.b.op("Add", &[&x, &t], vec![]);
    }
    Ok(x)
}

fn patch_out(net: &mut Net, c: &Config) -> Result<()> {
    let g = c.geometry();
    let (d, n, p, ch) = (g.dim, g.num_patches, g.patch_size, g.latent_channels);
    let gd = g.patch_grid as i64;
    let hidden = net
        .b
        .input("hidden", IoDtype::Float, &[sym("B"), n.into(), d.into()]);
    let mut skips = Vec::new();
    for (i, skip) in g.skips.iter().enumerate() {
        let name = format!("skip.{i}");
        let shape = [
            sym("B"),
            skip.channels.into(),
            skip.size.into(),
            skip.size.into(),
        ];
        skips.push(net.b.input(&name, IoDtype::Float, &shape));
    }
    let (temb, temb_act) = timestep_input(net, c)?;
    let prediction = match c.patch.kind {
        PatchKind::Linear => {
            let axes = net.b.ints("axes", &[1]);
            let t = net.b.op("Unsqueeze", &[&temb, &axes], vec![]);
            let x = net.b.op("Add", &[&hidden, &t], vec![]);
            let x = net.linear(
                &x,
                "patch.out_proj",
                (d, ch * p * p),
                true,
                QuantGroup::Patch,
            )?;
            let (pi, ci) = (p as i64, ch as i64);
            let s6 = net.b.ints("unpatchify", &[0, gd, gd, ci, pi, pi]);
            let x = net.b.op("Reshape", &[&x, &s6], vec![]);
            let x = net.b.op(
                "Transpose",
                &[&x],
                vec![("perm", Attr::Ints(vec![0, 3, 1, 4, 2, 5]))],
            );
            let hl = g.latent_size as i64;
            let s4 = net.b.ints("unpatchify", &[0, ci, hl, hl]);
            net.b.op("Reshape", &[&x, &s4], vec![])
        }
        PatchKind::Unet => {
            let u = &c.patch.channels;
            let un = QuantGroup::Unet;
            let temb = Some((temb_act.as_str(), d));
            let h = net.b.op(
                "Transpose",
                &[&hidden],
                vec![("perm", Attr::Ints(vec![0, 2, 1]))],
            );
            let s = net.b.ints("grid", &[0, d as i64, gd, gd]);
            let h = net.b.op("Reshape", &[&h, &s], vec![]);
            let (_, mut cur) = ends(u, "patch.channels")?;
            let h = net.conv(&h, "patch.unet.proj_out", (d, cur, 1), 1, QuantGroup::Patch)?;
            let mut h = net.resblock(&h, "patch.unet.mid_out", (cur, cur), temb, un)?;
            // `skips` has one input per entry of `u` (`Geometry::skips`).
            for (i, (&ui, skip)) in u.iter().zip(&skips).enumerate().rev() {
                let prefix = format!("patch.unet.up.{i}");
                let up = net.upsample2(&h);
                h = net.conv(&up, &format!("{prefix}.upsample"), (cur, cur, 3), 1, un)?;
                let cat = net
                    .b
                    .op("Concat", &[&h, skip], vec![("axis", Attr::Int(1))]);
                h = net.resblock(&cat, &format!("{prefix}.res"), (cur + ui, ui), temb, un)?;
                cur = ui;
            }
            let h = net.group_norm(&h, "patch.unet.norm_out", cur)?;
            let h = net.silu(&h);
            net.conv(&h, "patch.unet.conv_out", (cur, ch, 3), 1, un)?
        }
    };
    net.b
        .output("prediction", &prediction, IoDtype::Float, &latent_shape(c));
    Ok(())
}

fn image_shape(c: &Config) -> [Dim; 4] {
    [
        sym("B"),
        c.image.channels.into(),
        c.image.size.into(),
        c.image.size.into(),
    ]
}

fn vae_encoder(net: &mut Net, c: &Config) -> Result<()> {
    let v = &c.vae;
    let q = QuantGroup::Vae;
    let image = net.b.input("image", IoDtype::Float, &image_shape(c));
    let ch = &v.channels;
    let (mut cur, _) = ends(ch, "vae.channels")?;
    let levels = ch.len() - 1;
    let mut h = net.conv(
        &image,
        "vae.encoder.conv_in",
        (c.image.channels, cur, 3),
        1,
        q,
    )?;
    for (i, &ci) in ch.iter().enumerate() {
        let prefix = format!("vae.encoder.down.{i}");
        h = net.resblock(&h, &format!("{prefix}.res"), (cur, ci), None, q)?;
        if i < levels {
            h = net.conv(&h, &format!("{prefix}.downsample"), (ci, ci, 3), 2, q)?;
        }
        cur = ci;
    }
    h = net.resblock(&h, "vae.encoder.mid", (cur, cur), None, q)?;
    h = net.group_norm(&h, "vae.encoder.norm_out", cur)?;
    h = net.silu(&h);
    let lc = v.latent_channels;
    h = net.conv(&h, "vae.encoder.conv_out", (cur, 2 * lc, 3), 1, q)?;
    let starts = net.b.ints("starts", &[0]);
    let ends = net.b.ints("ends", &[lc as i64]);
    let axes = net.b.ints("axes", &[1]);
    let mean = net.b.op("Slice", &[&h, &starts, &ends, &axes], vec![]);
    let shift = net.b.const_float("latent_shift", &[], &[v.shift]);
    let scale = net.b.const_float("latent_scale", &[], &[v.scale]);
    let z = net.b.op("Sub", &[&mean, &shift], vec![]);
    let z = net.b.op("Mul", &[&z, &scale], vec![]);
    net.b.output("latent", &z, IoDtype::Float, &latent_shape(c));
    Ok(())
}

fn vae_decoder(net: &mut Net, c: &Config) -> Result<()> {
    let v = &c.vae;
    let q = QuantGroup::Vae;
    let z = net.b.input("latent", IoDtype::Float, &latent_shape(c));
    let inv = net.b.const_float("latent_inv_scale", &[], &[1.0 / v.scale]);
    let shift = net.b.const_float("latent_shift", &[], &[v.shift]);
    let z = net.b.op("Mul", &[&z, &inv], vec![]);
    let z = net.b.op("Add", &[&z, &shift], vec![]);
    let ch = &v.channels;
    let (_, mut cur) = ends(ch, "vae.channels")?;
    let mut h = net.conv(&z, "vae.decoder.conv_in", (v.latent_channels, cur, 3), 1, q)?;
    h = net.resblock(&h, "vae.decoder.mid", (cur, cur), None, q)?;
    for (j, &cj) in ch.iter().enumerate().rev() {
        let prefix = format!("vae.decoder.up.{j}");
        h = net.resblock(&h, &format!("{prefix}.res"), (cur, cj), None, q)?;
        cur = cj;
        if j > 0 {
            let up = net.upsample2(&h);
            h = net.conv(&up, &format!("{prefix}.upsample"), (cur, cur, 3), 1, q)?;
        }
    }
    h = net.group_norm(&h, "vae.decoder.norm_out", cur)?;
    h = net.silu(&h);
    h = net.conv(&h, "vae.decoder.conv_out", (cur, c.image.channels, 3), 1, q)?;
    net.b.output("image", &h, IoDtype::Float, &image_shape(c));
    Ok(())
}

/// The first and last entries of the config list `key`, or an error naming it
/// (`Config::validate` requires these lists to be non-empty).
fn ends(values: &[usize], key: &str) -> Result<(usize, usize)> {
    match (values.first(), values.last()) {
        (Some(&first), Some(&last)) => Ok((first, last)),
        _ => Err(Error::Invalid(format!(
            "config.json: {key} is empty, expected at least one entry"
        ))),
    }
}
