//! Engine tests against the real ONNX Runtime library: `ORT_DYLIB_PATH`, else the
//! wheel in the workspace's `.venv` (scripts/test.sh creates it). Without either
//! each test prints why and passes without checking anything.

use super::*;
use crate::library::Origin;
use bytes::Bytes;
use flotilla_core::config::parse_pbtxt;
use flotilla_core::engine::Phases;
use flotilla_core::{DataType, ErrorKind, Tensor};
use prost::Message;
use std::path::PathBuf;
use tract_onnx::pb;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn runtime() -> Option<Arc<Runtime>> {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| library::wheel_library(&workspace().join(".venv")));
    let Some(path) = path else {
        eprintln!("skipped: no ONNX Runtime library (set ORT_DYLIB_PATH, or pip install onnxruntime into .venv)");
        return None;
    };
    Some(library::load(&path, Origin::Env).expect("the ONNX Runtime library loads"))
}

fn backend() -> Option<OrtBackend> {
    runtime().map(|rt| OrtBackend::new(rt, 2))
}

fn example(name: &str) -> (ModelConfig, PathBuf) {
    let dir = workspace().join("examples/repository").join(name);
    let text = std::fs::read_to_string(dir.join("config.pbtxt")).unwrap();
    let mut config = parse_pbtxt(&text, name).unwrap();
    flotilla_core::config::validate(&mut config, name).unwrap();
    (config, dir.join("1/model.onnx"))
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|v| f(*v)).collect()
}

fn i32s(t: &Tensor) -> Vec<i32> {
    t.data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn find<'a>(outputs: &'a [Tensor], name: &str) -> &'a Tensor {
    outputs.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no output {name}"))
}

/// An ONNX model with one Identity per (name, ONNX element type), shape [batch, 3].
fn identity_model(dir: &Path, types: &[(&str, i32)]) -> PathBuf {
    let info = |name: String, elem_type: i32| pb::ValueInfoProto {
        name,
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimParam("batch".into())),
                            ..Default::default()
                        },
                        pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(3)),
                            ..Default::default()
                        },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "identity".into(),
        node: types
            .iter()
            .map(|(n, _)| pb::NodeProto {
                op_type: "Identity".into(),
                input: vec![format!("IN_{n}")],
                output: vec![format!("OUT_{n}")],
                ..Default::default()
            })
            .collect(),
        input: types.iter().map(|(n, t)| info(format!("IN_{n}"), *t)).collect(),
        output: types.iter().map(|(n, t)| info(format!("OUT_{n}"), *t)).collect(),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(graph),
        ..Default::default()
    };
    let file = dir.join("model.onnx");
    std::fs::write(&file, model.encode_to_vec()).unwrap();
    file
}

/// ONNX element types (TensorProto.DataType) of every protocol datatype.
const TYPES: &[(&str, i32, DataType)] = &[
    ("FP32", 1, DataType::F32),
    ("UINT8", 2, DataType::U8),
    ("INT8", 3, DataType::I8),
    ("UINT16", 4, DataType::U16),
    ("INT16", 5, DataType::I16),
    ("INT32", 6, DataType::I32),
    ("INT64", 7, DataType::I64),
    ("BYTES", 8, DataType::Bytes),
    ("BOOL", 9, DataType::Bool),
    ("FP16", 10, DataType::F16),
    ("FP64", 11, DataType::F64),
    ("UINT32", 12, DataType::U32),
    ("UINT64", 13, DataType::U64),
    ("BF16", 16, DataType::BF16),
];

fn sample(dt: DataType, n: usize) -> Vec<u8> {
    match dt {
        DataType::Bytes => flotilla_core::tensor::join_bytes_elements((0..n).map(|i| {
            if i % 2 == 0 {
                &b"caf\xc3\xa9"[..]
            } else {
                &b""[..]
            }
        })),
        DataType::Bool => (0..n).map(|i| (i % 2) as u8).collect(),
        dt => (0..n * dt.size().unwrap()).map(|i| (i * 37 % 251) as u8 & 0x3f).collect(),
    }
}

#[test]
fn serves_onnx_platforms_but_not_tract() {
    let Some(b) = backend() else { return };
    let cfg = |platform: &str, backend: &str| ModelConfig {
        platform: platform.into(),
        backend: backend.into(),
        ..Default::default()
    };
    assert!(b.serves(&cfg("onnxruntime_onnx", "")));
    assert!(b.serves(&cfg("", "onnxruntime")));
    assert!(b.serves(&cfg("onnxruntime_onnx", "onnxruntime")));
    assert!(!b.serves(&cfg("", "tract")));
    assert!(!b.serves(&cfg("onnxruntime_onnx", "tract")));
    assert!(!b.serves(&cfg("tensorrt_plan", "")));
    assert!(!b.serves(&cfg("", "")));
}

#[test]
fn simple_adds_and_subtracts_with_aligned_and_unaligned_inputs() {
    let Some(b) = backend() else { return };
    let (config, file) = example("simple");
    let engine = b.load(&config, &file).unwrap();
    let a: Vec<i32> = (0..32).collect();
    let c: Vec<i32> = (0..32).map(|i| 100 - 3 * i).collect();
    // One input at an odd offset: not aligned for i32, so it is copied rather than borrowed.
    let mut shifted = vec![0u8];
    shifted.extend(le_bytes(&c, i32::to_le_bytes));
    let inputs = [
        Tensor::new("INPUT0", DataType::I32, vec![2, 16], le_bytes(&a, i32::to_le_bytes)),
        Tensor::new("INPUT1", DataType::I32, vec![2, 16], Bytes::from(shifted).slice(1..)),
    ];
    let out = engine.infer(&inputs, &mut Phases::start()).unwrap();
    let sum = find(&out, "OUTPUT0");
    assert_eq!((sum.datatype, sum.shape.as_slice()), (DataType::I32, &[2, 16][..]));
    assert_eq!(i32s(sum), a.iter().zip(&c).map(|(x, y)| x + y).collect::<Vec<_>>());
    assert_eq!(i32s(find(&out, "OUTPUT1")), a.iter().zip(&c).map(|(x, y)| x - y).collect::<Vec<_>>());
}

#[test]
fn every_datatype_round_trips_through_an_autocompleted_identity_model() {
    let Some(b) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let types: Vec<(&str, i32)> = TYPES.iter().map(|(n, t, _)| (*n, *t)).collect();
    let file = identity_model(dir.path(), &types);
    let mut config = ModelConfig { name: "identity".into(), ..Default::default() };
    b.autocomplete(&mut config, &file, &AutocompleteOptions::default()).unwrap();
    assert_eq!(config.max_batch_size, 4);
    let engine = b.load(&config, &file).unwrap();
    let inputs: Vec<Tensor> =
        TYPES.iter().map(|(n, _, dt)| Tensor::new(format!("IN_{n}"), *dt, vec![2, 3], sample(*dt, 6))).collect();
    let out = engine.infer(&inputs, &mut Phases::start()).unwrap();
    assert_eq!(out.len(), TYPES.len());
    for (n, _, dt) in TYPES {
        let got = find(&out, &format!("OUT_{n}"));
        assert_eq!((got.datatype, got.shape.as_slice()), (*dt, &[2, 3][..]), "{n}");
        assert_eq!(got.data, sample(*dt, 6), "{n}");
    }
}

#[test]
fn configured_datatypes_are_cast_and_impossible_ones_refused() {
    let Some(b) = backend() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = identity_model(dir.path(), &[("X", 1)]);
    let text = r#"name: "m" max_batch_size: 4
        input [ { name: "IN_X" data_type: TYPE_INT32 dims: [ 3 ] } ]
        output [ { name: "OUT_X" data_type: TYPE_FP64 dims: [ 3 ] } ]"#;
    let config = parse_pbtxt(text, "m").unwrap();
    let engine = b.load(&config, &file).unwrap();
    let input = Tensor::new("IN_X", DataType::I32, vec![1, 3], le_bytes(&[1i32, -2, 3], i32::to_le_bytes));
    let out = engine.infer(&[input], &mut Phases::start()).unwrap();
    assert_eq!(out[0].datatype, DataType::F64);
    assert_eq!(out[0].data, le_bytes(&[1f64, -2.0, 3.0], f64::to_le_bytes));

    let bytes_in = parse_pbtxt(&text.replace("TYPE_INT32", "TYPE_STRING"), "m").unwrap();
    let e = b.load(&bytes_in, &file).err().unwrap();
    assert!(e.message.contains("input 'IN_X' is configured as BYTES but the model takes FP32"), "{e}");
    let unknown = parse_pbtxt(&text.replace("\"OUT_X\"", "\"OUT_Y\""), "m").unwrap();
    let e = b.load(&unknown, &file).err().unwrap();
    assert!(e.message.contains("configured output 'OUT_Y' is not an output of the ONNX graph"), "{e}");
}

#[test]
fn bad_requests_are_client_errors() {
    let Some(b) = backend() else { return };
    let (config, file) = example("simple");
    let engine = b.load(&config, &file).unwrap();
    let x = Tensor::new("INPUT0", DataType::I32, vec![1, 15], vec![0u8; 60]);
    let e = engine.infer(std::slice::from_ref(&x), &mut Phases::start()).unwrap_err();
    assert!(e.message.contains("missing input 'INPUT1'"), "{e}");
    let y = Tensor::new("INPUT1", DataType::I32, vec![1, 15], vec![0u8; 60]);
    let e = engine.infer(&[x, y], &mut Phases::start()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
}

#[test]
fn gpu_instances_fall_back_to_cpu_without_cuda() {
    let Some(b) = backend() else { return };
    let (mut config, file) = example("mlp_iris");
    config.instance_group =
        parse_pbtxt(r#"instance_group [ { kind: KIND_GPU count: 2 } ]"#, "m").unwrap().instance_group;
    let engine = OrtEngine::load(b.runtime(), &config, &file, 1).unwrap();
    assert_eq!(engine.session_count(), 2);
    if !b.runtime().has_cuda() {
        assert_eq!(engine.provider(), "CPUExecutionProvider");
    }
    let input = Tensor::new("input", DataType::F32, vec![1, 4], le_bytes(&[5.1f32, 3.5, 1.4, 0.2], f32::to_le_bytes));
    let out = engine.infer(&[input], &mut Phases::start()).unwrap();
    let p: Vec<f32> = out[0].data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(out[0].shape, [1, 3]);
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{p:?}");
}

#[test]
fn sessions_run_concurrently_from_instance_threads() {
    let Some(b) = backend() else { return };
    let (config, file) = example("simple");
    let engine = b.load(&config, &file).unwrap();
    std::thread::scope(|s| {
        for k in 0..4i32 {
            let engine = engine.clone();
            s.spawn(move || {
                for _ in 0..20 {
                    let a = vec![k; 16];
                    let inputs = [
                        Tensor::new("INPUT0", DataType::I32, vec![1, 16], le_bytes(&a, i32::to_le_bytes)),
                        Tensor::new("INPUT1", DataType::I32, vec![1, 16], le_bytes(&a, i32::to_le_bytes)),
                    ];
                    let out = engine.infer(&inputs, &mut Phases::start()).unwrap();
                    assert_eq!(i32s(find(&out, "OUTPUT0")), vec![2 * k; 16]);
                }
            });
        }
    });
}

#[test]
fn a_missing_or_second_library_is_a_clear_error() {
    let e = library::load(Path::new("/nonexistent/libonnxruntime.so"), Origin::Flag).unwrap_err();
    assert!(
        e.0.contains("/nonexistent/libonnxruntime.so")
            && (e.0.contains("no such file") || e.0.contains("already loaded")),
        "{e}"
    );
    let e = library::init(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
    assert!(e.0.contains("/nonexistent/libonnxruntime.so"), "{e}");
}
