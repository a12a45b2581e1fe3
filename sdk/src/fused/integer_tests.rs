use super::*;
use crate::fused::test_util::{i8s, quantized_facts as facts, quantized_inputs, u8s, Rng};
use tract_onnx::tract_core::axes::AxesMapping;

fn inputs(a: Tensor, a0: u8, w: Tensor, w0: Tensor) -> TVec<TValue> {
    quantized_inputs(a, tensor0(a0), w, w0)
}

/// Ours against tract's own `EinSum` on the same inputs: equal, element for element.
fn check(expr: &str, a: Tensor, a0: u8, w: Tensor, w0: Tensor) {
    let einsum = EinSum::newq(
        expr.parse::<AxesMapping>().unwrap(),
        DatumType::I32,
        DatumType::I32,
    );
    let ins = inputs(a, a0, w, w0);
    let fs = facts(&ins);
    let refs: Vec<&TypedFact> = fs.iter().collect();
    let ours = IntegerProduct::replacing(&einsum, &refs)
        .unwrap_or_else(|| panic!("{expr} {:?} not taken", ins[0].shape()));
    let ctx = EvalContext::out_of_plan();
    let want = einsum.eval(&ctx, ins.clone()).unwrap().remove(0);
    let got = ours.eval(&ctx, ins.clone()).unwrap().remove(0);
    assert_eq!(got.shape(), want.shape(), "{expr}");
    assert_eq!(
        got.into_tensor(),
        want.into_tensor(),
        "{expr} {:?}",
        ins[0].shape()
    );
}

#[test]
fn products_equal_tracts_at_the_backbone_sizes_and_odd_ones() {
    let mut rng = Rng(0x5eed);
    for (m, k, n) in [
        (1usize, 256usize, 256usize),
        (17, 256, 704),
        (34, 704, 256),
        (5, 13, 7),
        (4, 1, 1),
        (3, 33, 17),
    ] {
        for a0 in [0u8, 128, 255] {
            let a = u8s(&mut rng, &[1, m, k]);
            let w = i8s(&mut rng, &[k, n]);
            check("amk,kn,,,,,,,->amn", a, a0, w, tensor0(0i8));
        }
        let a = u8s(&mut rng, &[m, k]);
        let w = i8s(&mut rng, &[k, n]);
        check("mk,kn,,,,,,,->mn", a, 97, w, tensor0(-3i8));
    }
}

#[test]
fn u8_weights_with_their_zero_point_and_an_empty_batch() {
    let mut rng = Rng(77);
    let a = u8s(&mut rng, &[6, 40]);
    let w = u8s(&mut rng, &[40, 20]);
    check("mk,kn,,,,,,,->mn", a, 200, w, tensor0(128u8));
    let a = u8s(&mut rng, &[1, 0, 40]);
    let w = i8s(&mut rng, &[40, 20]);
    check("amk,kn,,,,,,,->amn", a, 3, w, tensor0(0i8));
}

#[test]
fn other_quantized_products_stay_on_tract() {
    let mut rng = Rng(5);
    let einsum = |expr: &str| {
        EinSum::newq(
            expr.parse::<AxesMapping>().unwrap(),
            DatumType::I32,
            DatumType::I32,
        )
    };
    let taken = |e: &EinSum, ins: &TVec<TValue>| {
        let fs = facts(ins);
        let refs: Vec<&TypedFact> = fs.iter().collect();
        IntegerProduct::replacing(e, &refs).is_some()
    };
    let base = || {
        inputs(
            u8s(&mut Rng(3), &[4, 8]),
            1,
            i8s(&mut Rng(4), &[8, 6]),
            tensor0(0i8),
        )
    };
    assert!(taken(&einsum("mk,kn,,,,,,,->mn"), &base()));
    // Weights transposed (`nk`), and the reduced axis not last in the activations.
    let t = inputs(
        u8s(&mut rng, &[4, 8]),
        1,
        i8s(&mut rng, &[6, 8]),
        tensor0(0i8),
    );
    assert!(!taken(&einsum("mk,nk,,,,,,,->mn"), &t));
    let t = inputs(
        u8s(&mut rng, &[8, 4]),
        1,
        i8s(&mut rng, &[8, 6]),
        tensor0(0i8),
    );
    assert!(!taken(&einsum("km,kn,,,,,,,->mn"), &t));
    // A scale that is not 1, a bias that is not 0.
    let mut t = base();
    t[4] = tensor0(0.5f32).into_tvalue();
    assert!(!taken(&einsum("mk,kn,,,,,,,->mn"), &t));
    let mut t = base();
    t[2] = tensor0(7i32).into_tvalue();
    assert!(!taken(&einsum("mk,kn,,,,,,,->mn"), &t));
    // Not quantized.
    let f = EinSum::new("mk,kn->mn".parse::<AxesMapping>().unwrap(), DatumType::F32);
    let ff = [f32::fact([4usize, 8]), f32::fact([8usize, 6])];
    assert!(IntegerProduct::replacing(&f, &[&ff[0], &ff[1]]).is_none());
}

/// A product, its `Cast` to f32 and a `Mul` by `scale` (a constant of `scale_shape`), as the
/// decluttered INT8 graphs have them; the model and its activations' input.
fn dequantized_product(rng: &mut Rng, m: usize, scale_shape: &[usize]) -> (TypedModel, Tensor) {
    dequantized_product_with(rng, m, scale_shape, false)
}

/// [`dequantized_product`], with `split` the scale computed in the graph as the converter
/// writes it: a scalar `x_scale` input (what `DynamicQuantizeLinear` gives) times the constant.
fn dequantized_product_with(
    rng: &mut Rng,
    m: usize,
    scale_shape: &[usize],
    split: bool,
) -> (TypedModel, Tensor) {
    let (k, n) = (40, 24);
    let a = u8s(rng, &[1, m, k]);
    let ins = inputs(a.clone(), 131, i8s(rng, &[k, n]), tensor0(0i8));
    let fs = facts(&ins);
    let refs: Vec<&TypedFact> = fs.iter().collect();
    let einsum = EinSum::newq(
        "amk,kn,,,,,,,->amn".parse::<AxesMapping>().unwrap(),
        DatumType::I32,
        DatumType::I32,
    );
    let product = IntegerProduct::replacing(&einsum, &refs).unwrap();
    let mut model = TypedModel::default();
    let mut wires = tvec![model.add_source("a", u8::fact([1, m, k])).unwrap()];
    for (i, t) in ins.iter().enumerate().skip(1) {
        let t = t.clone().into_tensor();
        wires.push(model.add_const(format!("in{i}"), t).unwrap());
    }
    let c = model.wire_node("product", product, &wires).unwrap();
    let cast = model
        .wire_node("cast", Cast { to: DatumType::F32 }, &c)
        .unwrap();
    let scale = rng.tensor(scale_shape, |r| r.unit() * 0.01);
    let mut scale = model.add_const("scale", scale).unwrap();
    if split {
        // As the decluttered INT8 graphs have it: `x_scale [1] × w_scale [n]`, then leading axes
        // of length 1 up to the product's rank.
        let x_scale = model.add_source("x_scale", f32::fact([1usize])).unwrap();
        let n = *scale_shape.last().unwrap();
        let w_scale = rng.tensor(&[n], |r| r.unit() * 0.01);
        let w_scale = model.add_const("w_scale", w_scale).unwrap();
        let mul = TypedBinOp(Box::new(Mul), None);
        scale = model.wire_node("scales", mul, &[x_scale, w_scale]).unwrap()[0];
        for i in 1..scale_shape.len() {
            scale = model
                .wire_node(format!("scales.axis{i}"), AxisOp::Add(0), &[scale])
                .unwrap()[0];
        }
    }
    let mul = TypedBinOp(Box::new(Mul), None);
    let y = model.wire_node("mul", mul, &[cast[0], scale]).unwrap();
    model.select_output_outlets(&y).unwrap();
    (model, a)
}

#[test]
fn the_dequantization_folds_into_the_product_with_the_same_values() {
    let mut rng = Rng(0xf01d);
    for (m, scale_shape) in [
        (16, vec![1, 1, 24]),
        (1, vec![1, 1, 1]),
        (34, vec![1, 1, 24]),
    ] {
        let (model, a) = dequantized_product(&mut rng, m, &scale_shape);
        let mut folded = model.clone();
        assert_eq!(rescale_products(&mut folded).unwrap(), 1, "{scale_shape:?}");
        let run = |m: TypedModel| {
            let plan = TypedSimplePlan::new(m).unwrap();
            let casts = plan
                .order_without_consts()
                .iter()
                .filter(|&&n| plan.model().node(n).op_is::<Cast>())
                .count();
            let out = plan.run(tvec![a.clone().into_tvalue()]).unwrap();
            (casts, out[0].clone().into_tensor())
        };
        let ((casts_before, want), (casts_after, got)) = (run(model), run(folded));
        assert_eq!((casts_before, casts_after), (1, 0), "{scale_shape:?}");
        assert_eq!(got, want, "m {m} scale {scale_shape:?}");
    }
}

#[test]
fn a_scale_computed_in_the_graph_folds_with_its_factors() {
    let mut rng = Rng(0xf03d);
    for (m, scale_shape) in [(16, vec![1, 1, 24]), (1, vec![1, 1, 1])] {
        let (model, a) = dequantized_product_with(&mut rng, m, &scale_shape, true);
        let mut folded = model.clone();
        assert_eq!(rescale_products(&mut folded).unwrap(), 1, "{scale_shape:?}");
        let muls = |m: &TypedModel| {
            m.nodes()
                .iter()
                .filter(|n| n.op_as::<TypedBinOp>().is_some())
                .count()
        };
        assert_eq!((muls(&model), muls(&folded)), (2, 0), "{scale_shape:?}");
        let x_scale = tensor1(&[0.0123f32]);
        let run = |m: TypedModel| {
            let plan = TypedSimplePlan::new(m).unwrap();
            let ins = tvec![a.clone().into_tvalue(), x_scale.clone().into_tvalue()];
            plan.run(ins).unwrap()[0].clone().into_tensor()
        };
        assert_eq!(run(folded), run(model), "m {m} scale {scale_shape:?}");
    }
}

#[test]
fn a_product_read_elsewhere_or_a_scale_per_row_is_not_folded() {
    let mut rng = Rng(0xf02d);
    // One scale per row: not a per-column dequantization.
    let (mut model, _) = dequantized_product(&mut rng, 4, &[1, 4, 1]);
    assert_eq!(rescale_products(&mut model).unwrap(), 0);
    // The i32 product is also an output.
    let (mut model, _) = dequantized_product(&mut rng, 4, &[1, 1, 24]);
    let product = model.node_by_name("product").unwrap().id;
    let mut outputs = model.output_outlets().unwrap().to_vec();
    outputs.push(product.into());
    model.select_output_outlets(&outputs).unwrap();
    assert_eq!(rescale_products(&mut model).unwrap(), 0);
}
