//! Tests of [`super`]: panels against the gather they replace, and whole convolutions against
//! tract's own plan, bit for bit.

use super::*;
use crate::fused::test_util::{f32s, Rng};
use tract_onnx::tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};

/// (channels, height, width, kernel, stride, dilation, padding)
type Case = (
    usize,
    usize,
    usize,
    [usize; 2],
    [usize; 2],
    [usize; 2],
    usize,
);

/// The VAE's and the patch graphs' shapes, and odd ones: rows that do not divide into panels,
/// strides, dilations, a non-square kernel, a 1×1 one.
const CASES: [Case; 7] = [
    (16, 64, 64, [3, 3], [1, 1], [1, 1], 1),
    (32, 16, 16, [3, 3], [1, 1], [1, 1], 1),
    (3, 13, 11, [3, 3], [1, 1], [1, 1], 1),
    (5, 9, 10, [3, 3], [2, 2], [1, 1], 1),
    (4, 12, 12, [3, 3], [1, 1], [2, 2], 2),
    (6, 7, 9, [3, 2], [1, 1], [1, 1], 0),
    (7, 5, 6, [1, 1], [1, 1], [1, 1], 0),
];

fn shape_of(case: &Case) -> ConvShape {
    let &(_, _, _, kernel, stride, dilation, _) = case;
    ConvShape {
        kernel,
        stride,
        dilation,
    }
}

#[test]
fn panels_equal_the_element_by_element_gather() {
    let mut rng = Rng(0x1c);
    for case in CASES {
        let (c, h, w, ..) = case;
        for r in [4usize, 6, 8, 16, 5] {
            let packer = PackedFormat::new(DatumType::F32, r, 32);
            let panels = Im2colPanels::new(&shape_of(&case), &[1, c, h, w], packer).unwrap();
            let x: Vec<f32> = (0..c * h * w).map(|_| rng.unit() - 0.5).collect();
            let k = panels.k();
            for i in 0..panels.mn().div_ceil(r) {
                let mut got = vec![f32::NAN; panels.packer.single_panel_len(k)];
                panels.write_panel(&x, i, &mut got).unwrap();
                let cols = &panels.n_offsets[i * r..((i + 1) * r).min(panels.mn())];
                let mut want = vec![f32::NAN; k * r];
                gather_records(&x, &panels.k_offsets, cols, r, &mut want).unwrap();
                assert_eq!(&got[..k * r], &want[..], "{case:?} r {r} panel {i}");
            }
        }
    }
}

#[test]
fn a_short_input_or_buffer_is_an_error_not_a_panic() {
    let packer = PackedFormat::new(DatumType::F32, 6, 32);
    let panels = Im2colPanels::new(&shape_of(&CASES[1]), &[32, 16, 16], packer).unwrap();
    let mut out = vec![0f32; panels.packer.single_panel_len(panels.k())];
    assert!(panels.write_panel(&[0.0; 100], 3, &mut out).is_err());
    let x = vec![0f32; 32 * 16 * 16];
    assert!(panels.write_panel(&x, 3, &mut out[..10]).is_err());
    assert!(panels.write_panel(&x, 1000, &mut out).is_err());
}

/// A model of one f32 convolution of `case`, with `co` output channels and a bias.
fn conv_model(case: &Case, co: usize, rng: &mut Rng) -> TypedModel {
    let &(c, h, w, kernel, stride, dilation, pad) = case;
    let spec = PoolSpec {
        data_format: DataFormat::NCHW,
        kernel_shape: kernel.iter().copied().collect(),
        padding: PaddingSpec::Explicit(tvec![pad, pad], tvec![pad, pad]),
        dilations: Some(dilation.iter().copied().collect()),
        strides: Some(stride.iter().copied().collect()),
        input_channels: c,
        output_channels: co,
    };
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact([1, c, h, w])).unwrap();
    let weights = rng.tensor(&[co, c, kernel[0], kernel[1]], |r| r.unit() - 0.5);
    let kernel = model.add_const("w", weights).unwrap();
    let bias = model
        .add_const("b", rng.tensor(&[co], |r| r.unit()))
        .unwrap();
    let conv = Conv::new(spec, KernelFormat::OIHW, 1, None);
    let y = model.wire_node("conv", conv, &[x, kernel, bias]).unwrap();
    model.select_output_outlets(&y).unwrap();
    model
}

#[test]
fn convolutions_equal_tracts_plan() {
    let mut rng = Rng(0x2c);
    let mut lazy = 0;
    for case in CASES {
        for co in [3usize, 16, 33] {
            let mut model = conv_model(&case, co, &mut rng);
            model.declutter().unwrap();
            let shapes = conv_shapes(&model);
            // tract declutters a 1×1 convolution into a matrix product.
            if case.3 != [1, 1] {
                assert_eq!(shapes, [shape_of(&case)], "{case:?}: geometry not recorded");
            }
            model.optimize().unwrap();
            let on_tract = |m: &TypedModel| {
                m.nodes()
                    .iter()
                    .filter(|n| n.op.name() == "LazyIm2col")
                    .count()
            };
            lazy += on_tract(&model);
            let mut ours = model.clone();
            super::super::apply_optimized(&mut ours, super::super::Rewrites::ALL, &shapes);
            assert_eq!(
                on_tract(&ours),
                0,
                "{case:?} co {co}: a lazy im2col left on tract"
            );
            let (c, h, w, ..) = case;
            let x = rng.tensor(&[1, c, h, w], |r| r.unit() * 4.0 - 2.0);
            let run = |m: TypedModel| {
                let out = TypedSimplePlan::new(m)
                    .unwrap()
                    .run(tvec![x.clone().into_tvalue()])
                    .unwrap();
                f32s(&out[0].clone().into_tensor())
            };
            let (want, got) = (run(model), run(ours));
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{case:?} co {co}");
        }
    }
    // tract lowers the 3×3 (and 3×2) convolutions through lazy im2col on every CPU: the
    // comparison above ran on the replacement.
    assert!(lazy >= 3 * 6, "only {lazy} lazy im2col nodes");
}

#[test]
fn grouped_convolutions_are_not_recorded() {
    let mut rng = Rng(5);
    let mut model = conv_model(&CASES[2], 6, &mut rng);
    for node in model.nodes_mut() {
        if let Some(conv) = node.op_as_mut::<Conv>() {
            conv.group = 3;
        }
    }
    assert!(conv_shapes(&model).is_empty());
}
