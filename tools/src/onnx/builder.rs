//! A small ONNX graph builder over tract's protobuf types (`tract_onnx::pb`).
//!
//! It knows nothing about Transfusion: it names values, stores initializers in the graph's float
//! type, declares inputs/outputs with symbolic dims and serialises the model (opset 17, IR 8).

use half::f16;
use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use transfusion_sdk::manifest::{FloatDtype, IoDtype, TensorInfo};

/// ONNX opset the graphs are written for.
pub const OPSET: i64 = 17;
/// ONNX IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// A dimension of a graph input or output: a number or a symbol such as `S` or `P+S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl Dim {
    /// A symbolic dimension.
    pub fn sym(s: &str) -> Dim {
        Dim::Sym(s.to_string())
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

/// A node attribute value.
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(&'static str),
}

/// Accumulates nodes, initializers and the interface of one graph.
pub struct GraphBuilder {
    float: FloatDtype,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    input_infos: Vec<TensorInfo>,
    output_infos: Vec<TensorInfo>,
    next_id: usize,
}

/// A finished graph: serialised model and its interface.
pub struct BuiltGraph {
    pub bytes: Vec<u8>,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// Op types used, for the manifest's `int8_ops` flag and `inspect`.
    pub op_types: Vec<String>,
}

fn float_data_type(float: FloatDtype) -> DataType {
    match float {
        FloatDtype::Float32 => DataType::Float,
        FloatDtype::Float16 => DataType::Float16,
    }
}

impl GraphBuilder {
    /// An empty graph whose float tensors are `float`.
    pub fn new(float: FloatDtype) -> Self {
        GraphBuilder {
            float,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            input_infos: Vec::new(),
            output_infos: Vec::new(),
            next_id: 0,
        }
    }

    /// The graph's float type.
    pub fn float(&self) -> FloatDtype {
        self.float
    }

    /// A fresh value name starting with `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.next_id += 1;
        format!("{hint}#{}", self.next_id)
    }

    /// Adds a node with `N` outputs and returns their names.
    pub fn node_n<const N: usize>(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) -> [String; N] {
        let outputs: [String; N] = std::array::from_fn(|_| self.fresh(op));
        let attribute = attrs
            .into_iter()
            .map(|(name, value)| attribute(name, value))
            .collect();
        let name = self.fresh(&format!("{op}_node"));
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            name,
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        outputs
    }

    /// Adds a single-output node and returns its output name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let [output] = self.node_n(op, inputs, attrs);
        output
    }

    fn push_initializer(
        &mut self,
        hint: &str,
        dt: DataType,
        shape: &[usize],
        raw: Vec<u8>,
    ) -> String {
        let name = self.fresh(hint);
        self.initializers.push(pb::TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: dt as i32,
            name: name.clone(),
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    /// A constant in the graph's float type.
    pub fn const_float(&mut self, hint: &str, shape: &[usize], data: &[f32]) -> String {
        match self.float {
            FloatDtype::Float32 => self.const_f32(hint, shape, data),
            FloatDtype::Float16 => {
                let raw = data
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect();
                self.push_initializer(hint, DataType::Float16, shape, raw)
            }
        }
    }

    /// A float32 constant, whatever the graph's float type.
    pub fn const_f32(&mut self, hint: &str, shape: &[usize], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(hint, DataType::Float, shape, raw)
    }

    /// An int64 constant (shapes, axes, indices).
    pub fn const_i64(&mut self, hint: &str, shape: &[usize], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_initializer(hint, DataType::Int64, shape, raw)
    }

    /// A 1-D int64 constant.
    pub fn ints(&mut self, hint: &str, data: &[i64]) -> String {
        self.const_i64(hint, &[data.len()], data)
    }

    /// An int8 constant (quantized weights).
    pub fn const_i8(&mut self, hint: &str, shape: &[usize], data: &[i8]) -> String {
        let raw = data.iter().map(|&v| v as u8).collect();
        self.push_initializer(hint, DataType::Int8, shape, raw)
    }

    /// A uint8 constant (quantized conv weights and zero points).
    pub fn const_u8(&mut self, hint: &str, shape: &[usize], data: &[u8]) -> String {
        self.push_initializer(hint, DataType::Uint8, shape, data.to_vec())
    }

    fn value_info(name: &str, dt: DataType, shape: &[Dim]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dim = shape
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::Fixed(n) => Value::DimValue(*n as i64),
                    Dim::Sym(s) => Value::DimParam(s.clone()),
                }),
                ..Default::default()
            })
            .collect();
        pb::ValueInfoProto {
            name: name.to_string(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: dt as i32,
                    shape: Some(pb::TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn io_data_type(&self, dtype: IoDtype) -> DataType {
        match dtype {
            IoDtype::Float => float_data_type(self.float),
            IoDtype::Int64 => DataType::Int64,
        }
    }

    /// Declares a graph input and returns its name.
    pub fn input(&mut self, name: &str, dtype: IoDtype, shape: &[Dim]) -> String {
        let dt = self.io_data_type(dtype);
        self.inputs.push(Self::value_info(name, dt, shape));
        self.input_infos.push(info(name, dtype, shape));
        name.to_string()
    }

    /// Declares `value` as the graph output `name`.
    pub fn output(&mut self, name: &str, value: &str, dtype: IoDtype, shape: &[Dim]) {
        let dt = self.io_data_type(dtype);
        self.nodes.push(pb::NodeProto {
            input: vec![value.to_string()],
            output: vec![name.to_string()],
            name: format!("{name}_output"),
            op_type: "Identity".into(),
            ..Default::default()
        });
        self.outputs.push(Self::value_info(name, dt, shape));
        self.output_infos.push(info(name, dtype, shape));
    }

    /// Serialises the graph as an ONNX model named `name`.
    pub fn finish(self, name: &str, producer_version: &str) -> BuiltGraph {
        let mut op_types: Vec<String> = self.nodes.iter().map(|n| n.op_type.clone()).collect();
        op_types.sort();
        op_types.dedup();
        let model = pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "transfusion-tools".into(),
            producer_version: producer_version.into(),
            graph: Some(pb::GraphProto {
                node: self.nodes,
                name: name.to_string(),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        };
        BuiltGraph {
            bytes: model.encode_to_vec(),
            inputs: self.input_infos,
            outputs: self.output_infos,
            op_types,
        }
    }
}

fn info(name: &str, dtype: IoDtype, shape: &[Dim]) -> TensorInfo {
    TensorInfo {
        name: name.to_string(),
        dtype,
        shape: shape.iter().map(|d| d.to_string()).collect(),
    }
}

fn attribute(name: &str, value: Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    let mut a = pb::AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.i = i;
            a.r#type = AttributeType::Int as i32;
        }
        Attr::Float(f) => {
            a.f = f;
            a.r#type = AttributeType::Float as i32;
        }
        Attr::Ints(v) => {
            a.ints = v;
            a.r#type = AttributeType::Ints as i32;
        }
        Attr::Str(s) => {
            a.s = s.as_bytes().to_vec();
            a.r#type = AttributeType::String as i32;
        }
    }
    a
}
