use super::*;
use crate::fused::test_util::{quantized_facts, quantized_inputs as inputs, u8s, Rng};
use tract_onnx::tract_core::axes::AxesMapping;
use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};

/// Ours against tract's own operator on the same inputs: equal, element for element.
fn check(op: &dyn TypedOp, ins: TVec<TValue>) {
    let facts = quantized_facts(&ins);
    let refs: Vec<&TypedFact> = facts.iter().collect();
    let ours = IntegerConv::replacing(op, &refs).unwrap_or_else(|| panic!("{op:?} not taken"));
    // Our arithmetic ran, not the fallback to tract's operator.
    assert!(
        ours.convolve(&ins[0], &ins[3]).is_some(),
        "{op:?} fell back"
    );
    let ctx = EvalContext::out_of_plan();
    let want = op.eval(&ctx, ins.clone()).unwrap().remove(0);
    let got = ours.eval(&ctx, ins.clone()).unwrap().remove(0);
    assert_eq!(got.into_tensor(), want.into_tensor(), "{op:?}");
}

fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize) -> Conv {
    let spec = PoolSpec {
        data_format: DataFormat::NCHW,
        kernel_shape: tvec![k, k],
        padding: PaddingSpec::Explicit(tvec![pad, pad], tvec![pad, pad]),
        dilations: None,
        strides: Some(tvec![stride, stride]),
        input_channels: c_in,
        output_channels: c_out,
    };
    Conv::new(spec, KernelFormat::OIHW, 1, Some(DatumType::I32))
}

#[test]
fn convolutions_equal_tracts_at_the_patch_sizes_and_odd_ones() {
    let mut rng = Rng(0xc0);
    // (batch, c_in, c_out, size, kernel, stride, padding)
    for (n, ci, co, hw, k, s, p) in [
        (1usize, 32usize, 64usize, 8usize, 3usize, 1usize, 1usize),
        (2, 4, 32, 16, 3, 2, 1),
        (1, 3, 5, 7, 3, 2, 1),
        (1, 5, 3, 6, 3, 1, 0),
        (1, 8, 8, 5, 1, 1, 0),
        // Wide enough to be read in place: panels of 16, a narrower last one, odd channels,
        // fewer output channels than a tile, 1×1 and unpadded kernels.
        (1, 32, 32, 32, 3, 1, 1),
        (2, 5, 7, 17, 3, 1, 1),
        (1, 16, 3, 20, 3, 1, 1),
        (1, 3, 13, 18, 3, 1, 0),
        (1, 7, 9, 18, 1, 1, 0),
        (1, 4, 6, 16, 3, 1, 2),
    ] {
        for x0 in [0u8, 131, 255] {
            let x = u8s(&mut rng, &[n, ci, hw, hw]);
            // The converter's layout: symmetric int8 values stored as u8 with zero point 128.
            let w = u8s(&mut rng, &[co, ci, k, k]);
            let ins = inputs(x.clone(), tensor0(x0), w.clone(), tensor0(128u8));
            check(&conv(ci, co, k, s, p), ins);
            // The zero points as tract's ONNX import hands them to its convolutions: i32.
            let ins = inputs(x, tensor0(i32::from(x0)), w, tensor0(128i32));
            check(&conv(ci, co, k, s, p), ins);
        }
    }
}

#[test]
fn outputs_8_wide_are_read_two_rows_a_panel_and_an_odd_last_row_alone() {
    let mut rng = Rng(0x8);
    // (c_in, c_out, height, width, kernel, padding): outputs 8 wide, 7 or 8 high.
    for (ci, co, h, w, k, p) in [
        (6usize, 5usize, 7usize, 8usize, 3usize, 1usize),
        (64, 64, 8, 8, 3, 1),
        (3, 8, 9, 10, 3, 0),
        (5, 7, 7, 8, 1, 0),
    ] {
        let x = u8s(&mut rng, &[1, ci, h, w]);
        let wt = u8s(&mut rng, &[co, ci, k, k]);
        let ins = inputs(x, tensor0(77u8), wt, tensor0(128u8));
        check(&conv(ci, co, k, 1, p), ins);
    }
}

#[test]
fn a_1x1_convolution_as_tract_declutters_it() {
    let mut rng = Rng(3);
    let einsum = EinSum::newq(
        "NIHW,OI,,,,,,,->NOHW".parse::<AxesMapping>().unwrap(),
        DatumType::I32,
        DatumType::I32,
    );
    // Through the patch matrix (4 wide) and read in place (16 and 8 wide).
    for shape in [[1, 24, 4, 4], [1, 24, 4, 16], [1, 24, 8, 8]] {
        let x = u8s(&mut rng, &shape);
        let w = u8s(&mut rng, &[40, 24]);
        check(&einsum, inputs(x, tensor0(77u8), w, tensor0(128u8)));
    }
}

#[test]
fn uneven_padding_is_read_in_place_as_tract_pads() {
    let mut rng = Rng(0xa5);
    // 2×2 kernels padded (before, after) = (0, 1) on one axis and (1, 0) on the other: outputs
    // 16 and 8 wide.
    for size in [16usize, 8] {
        let x = u8s(&mut rng, &[1, 5, size, size]);
        let wt = u8s(&mut rng, &[7, 5, 2, 2]);
        let mut op = conv(5, 7, 2, 1, 0);
        op.pool_spec.padding = PaddingSpec::Explicit(tvec![0, 1], tvec![1, 0]);
        check(&op, inputs(x, tensor0(200u8), wt, tensor0(128u8)));
    }
}

/// The in-place walk against the patch matrix, both ours, at the sizes where it applies: any
/// difference is a layout error of one of them.
#[test]
fn the_image_read_in_place_equals_the_patch_matrix_product() {
    let mut rng = Rng(0x1d);
    // (c_in, c_out, height, width, padding): 16, 17, 32 and 8 wide, odd channels and rows.
    for (c, c_out, h, w, pad) in [
        (4usize, 6usize, 16usize, 16usize, 1usize),
        (5, 13, 17, 17, 1),
        (9, 3, 32, 34, 0),
        (7, 8, 7, 8, 1),
    ] {
        let op = conv(c, c_out, 3, 1, pad);
        let x = u8s(&mut rng, &[1, c, h, w]);
        let wt = u8s(&mut rng, &[c_out, c, 3, 3]);
        let ins = inputs(x.clone(), tensor0(50u8), wt, tensor0(128u8));
        let facts = quantized_facts(&ins);
        let refs: Vec<&TypedFact> = facts.iter().collect();
        let ours = IntegerConv::replacing(&op, &refs).unwrap();
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let g = Geometry {
            c,
            h,
            w,
            oh,
            ow,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            top: pad,
            left: pad,
        };
        let plain = x.try_as_plain_ram().unwrap();
        let image = plain.as_slice::<u8>().unwrap();
        let mut walked = vec![0i32; c_out * oh * ow];
        g.in_place(image, 50, ours.tap_weights.as_deref().unwrap(), &mut walked);
        let mut patched = vec![0i32; c_out * oh * ow];
        product(&g.patches(image, 50), &ours.weights, &mut patched, &Sums);
        assert_eq!(walked, patched, "{c}→{c_out} at {h}×{w}, padding {pad}");
    }
}

#[test]
fn grouped_or_dilated_convolutions_stay_on_tract() {
    let mut rng = Rng(4);
    let x = u8s(&mut rng, &[1, 4, 6, 6]);
    let w = u8s(&mut rng, &[4, 2, 3, 3]);
    let ins = inputs(x, tensor0(1u8), w, tensor0(128u8));
    let facts = quantized_facts(&ins);
    let refs: Vec<&TypedFact> = facts.iter().collect();
    let mut grouped = conv(4, 4, 3, 1, 1);
    grouped.group = 2;
    assert!(IntegerConv::replacing(&grouped, &refs).is_none());
    let mut dilated = conv(4, 4, 3, 1, 1);
    dilated.pool_spec.dilations = Some(tvec![2, 2]);
    assert!(IntegerConv::replacing(&dilated, &refs).is_none());
}

#[test]
fn output_channels_split_between_threads_give_tracts_values() {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    let mut rng = Rng(0x3);
    // Read in place (16 and 8 wide) and through the patch matrix (4 wide).
    for (ci, co, hw) in [(16usize, 40usize, 16usize), (32, 64, 8), (8, 20, 4)] {
        let x = u8s(&mut rng, &[1, ci, hw, hw]);
        let w = u8s(&mut rng, &[co, ci, 3, 3]);
        let ins = inputs(x, tensor0(9u8), w, tensor0(128u8));
        multithread_tract_scope(Executor::multithread(3), || {
            check(&conv(ci, co, 3, 1, 1), ins)
        });
    }
}
