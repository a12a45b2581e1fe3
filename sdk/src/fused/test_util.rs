//! What the operator tests of this module share: deterministic inputs and reading results.

use tract_onnx::prelude::*;

/// xorshift: deterministic inputs without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// An f32 tensor of `shape` with values from `value`.
    pub fn tensor(&mut self, shape: &[usize], value: impl Fn(&mut Rng) -> f32) -> Tensor {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| value(self)).collect();
        Tensor::from_shape(shape, &data).unwrap()
    }
}

/// The values of an f32 tensor.
pub fn f32s(t: &Tensor) -> Vec<f32> {
    t.try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

/// A u8 tensor of `shape`, uniform over 0..=255.
pub fn u8s(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
    Tensor::from_shape(shape, &v).unwrap()
}

/// An i8 tensor of `shape`, uniform over −128..=127 (both extremes included: they are where a
/// saturating kernel would go wrong).
pub fn i8s(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<i8> = (0..n)
        .map(|_| (rng.below(256) as i32 - 128) as i8)
        .collect();
    Tensor::from_shape(shape, &v).unwrap()
}

/// The nine inputs of a quantized tract product or convolution as tract reads ONNX
/// `MatMulInteger`/`ConvInteger`: activations, weights, bias 0, activation zero point, scale 1,
/// weight zero point, scale 1, output zero point 0, scale 1.
pub fn quantized_inputs(x: Tensor, x0: Tensor, w: Tensor, w0: Tensor) -> TVec<TValue> {
    tvec![
        x.into_tvalue(),
        w.into_tvalue(),
        tensor0(0i32).into_tvalue(),
        x0.into_tvalue(),
        tensor0(1f32).into_tvalue(),
        w0.into_tvalue(),
        tensor0(1f32).into_tvalue(),
        tensor0(0i32).into_tvalue(),
        tensor0(1f32).into_tvalue(),
    ]
}

/// Facts of [`quantized_inputs`]: every input but the activations and their zero point constant.
pub fn quantized_facts(inputs: &[TValue]) -> Vec<TypedFact> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == 0 || i == 3 {
                TypedFact::shape_and_dt_of(t)
            } else {
                TypedFact::try_from(t.clone().into_arc_tensor()).unwrap()
            }
        })
        .collect()
}

/// ONNX `TensorProto.DataType` values the tests write.
pub const FLOAT: i32 = 1;
pub const INT8: i32 = 3;
pub const INT64: i32 = 7;

/// An ONNX graph under construction, for the tests of the rewrites of decoded graphs.
#[derive(Default)]
pub struct OnnxGraph {
    pub graph: tract_onnx::pb::GraphProto,
    fresh: usize,
}

impl OnnxGraph {
    fn name(&mut self, hint: &str) -> String {
        self.fresh += 1;
        format!("{hint}#{}", self.fresh)
    }

    /// An integer attribute.
    pub fn int(name: &str, i: i64) -> tract_onnx::pb::AttributeProto {
        tract_onnx::pb::AttributeProto {
            name: name.into(),
            r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
            i,
            ..Default::default()
        }
    }

    /// An integer-list attribute.
    pub fn ints(name: &str, ints: &[i64]) -> tract_onnx::pb::AttributeProto {
        tract_onnx::pb::AttributeProto {
            name: name.into(),
            r#type: tract_onnx::pb::attribute_proto::AttributeType::Ints as i32,
            ints: ints.to_vec(),
            ..Default::default()
        }
    }

    /// A node of `op` with `outputs` fresh outputs, returned.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attribute: Vec<tract_onnx::pb::AttributeProto>,
    ) -> Vec<String> {
        let output: Vec<String> = (0..outputs).map(|_| self.name(op)).collect();
        let name = self.name(&format!("{op}_node"));
        self.graph.node.push(tract_onnx::pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: output.clone(),
            name,
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        output
    }

    /// An initializer of raw little-endian bytes.
    pub fn constant(&mut self, hint: &str, data_type: i32, dims: &[usize], raw: Vec<u8>) -> String {
        let name = self.name(hint);
        self.graph.initializer.push(tract_onnx::pb::TensorProto {
            name: name.clone(),
            data_type,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    /// An f32 initializer.
    pub fn floats(&mut self, hint: &str, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(hint, FLOAT, dims, raw)
    }

    /// An i64 initializer.
    pub fn int64s(&mut self, hint: &str, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(hint, INT64, &[values.len()], raw)
    }

    /// An f32 graph input of dimensions `dims`: a number, or the name of a symbol.
    pub fn input(&mut self, name: &str, dims: &[&str]) {
        use tract_onnx::pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d.parse::<i64>() {
                    Ok(n) => Value::DimValue(n),
                    Err(_) => Value::DimParam(d.to_string()),
                }),
                ..Default::default()
            })
            .collect();
        self.graph.input.push(tract_onnx::pb::ValueInfoProto {
            name: name.to_string(),
            r#type: Some(tract_onnx::pb::TypeProto {
                value: Some(tract_onnx::pb::type_proto::Value::TensorType(
                    tract_onnx::pb::type_proto::Tensor {
                        elem_type: FLOAT,
                        shape: Some(tract_onnx::pb::TensorShapeProto { dim }),
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    /// The model, with `outputs` as its outputs.
    pub fn model(mut self, outputs: &[String]) -> tract_onnx::pb::ModelProto {
        for o in outputs {
            self.graph.output.push(tract_onnx::pb::ValueInfoProto {
                name: o.clone(),
                ..Default::default()
            });
        }
        tract_onnx::pb::ModelProto {
            ir_version: 8,
            opset_import: vec![tract_onnx::pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

/// The f32 outputs of `proto` run by tract on `inputs`, after `prepare` (a rewrite, and the
/// registration of its parser) has run on a copy of it.
pub fn run_onnx(
    proto: &tract_onnx::pb::ModelProto,
    inputs: &[&Tensor],
    prepare: impl FnOnce(&mut tract_onnx::pb::ModelProto, &mut tract_onnx::model::Onnx),
) -> Vec<Vec<f32>> {
    let mut proto = proto.clone();
    let mut onnx = tract_onnx::onnx();
    prepare(&mut proto, &mut onnx);
    let model = onnx.model_for_proto_model(&proto).unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let inputs = inputs.iter().map(|t| (*t).clone().into_tvalue()).collect();
    let out = plan.run(inputs).unwrap();
    out.iter().map(|t| f32s(t)).collect()
}

/// The bits of f32 values, to compare them exactly.
pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}
