//! The text backend end to end over a fake ONNX backend whose "encoder" states
//! are a function of token id, position and type id, so pooling, masking and
//! padding can be checked exactly.

use super::*;
use crate::encode::tests::TINY_TOKENIZER;
use flotilla_core::engine::Phases;
use flotilla_core::tensor::join_bytes_elements;
use flotilla_core::{ErrorKind, Tensor};
use flotilla_proto::inference::ModelParameter;
use std::sync::Mutex;

const HIDDEN: usize = 3;

/// Completes an encoder with inputs input_ids / attention_mask / token_type_ids and outputs
/// `last_hidden_state` [N, L, 3] = (id, position, type id) and `logits` [N, 2] = (sum of kept ids, kept).
#[derive(Default)]
struct FakeOnnx {
    loaded: Mutex<Vec<ModelConfig>>,
}

struct FakeEncoder;

fn ints(t: &Tensor) -> Vec<i64> {
    t.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

fn floats(t: &Tensor) -> Vec<f32> {
    t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn f32_tensor(name: &str, shape: Vec<i64>, values: &[f32]) -> Tensor {
    Tensor::new(name, DataType::F32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

impl Engine for FakeEncoder {
    fn infer(&self, inputs: &[Tensor], _: &mut Phases) -> Result<Vec<Tensor>> {
        let [ids, mask, types] = inputs else { panic!("three inputs expected, got {inputs:?}") };
        assert_eq!(
            (ids.name.as_str(), mask.name.as_str(), types.name.as_str()),
            ("input_ids", "attention_mask", "token_type_ids")
        );
        let (n, l) = (ids.shape[0] as usize, ids.shape[1] as usize);
        let (ids, mask, types) = (ints(ids), ints(mask), ints(types));
        let mut states = Vec::new();
        let mut logits = Vec::new();
        for r in 0..n {
            let (mut sum, mut kept) = (0.0, 0.0);
            for t in 0..l {
                let i = r * l + t;
                states.extend([ids[i] as f32, t as f32, types[i] as f32]);
                sum += (ids[i] * mask[i]) as f32;
                kept += mask[i] as f32;
            }
            logits.extend([sum, kept]);
        }
        Ok(vec![
            f32_tensor("logits", vec![n as i64, 2], &logits),
            f32_tensor("last_hidden_state", vec![n as i64, l as i64, HIDDEN as i64], &states),
        ])
    }
}

impl Backend for FakeOnnx {
    fn name(&self) -> &'static str {
        "fake_onnx"
    }
    fn platform(&self) -> &'static str {
        "fake_onnx_platform"
    }
    fn serves(&self, c: &ModelConfig) -> bool {
        c.backend == "fake_onnx"
    }
    fn default_filenames(&self) -> &'static [&'static str] {
        &["model.onnx"]
    }
    fn autocomplete(&self, c: &mut ModelConfig, _: &Path, o: &AutocompleteOptions) -> Result<()> {
        assert_eq!(o.default_max_batch_size, 0, "the encoder is completed unbatched");
        let input = |name: &str| ModelInput {
            name: name.into(),
            data_type: DataType::I64.to_config() as i32,
            dims: vec![-1, -1],
            ..Default::default()
        };
        let output = |name: &str, dims: Vec<i64>| ModelOutput {
            name: name.into(),
            data_type: DataType::F32.to_config() as i32,
            dims,
            ..Default::default()
        };
        c.input = vec![input("input_ids"), input("attention_mask"), input("token_type_ids")];
        c.output = vec![output("logits", vec![-1, 2]), output("last_hidden_state", vec![-1, -1, HIDDEN as i64])];
        Ok(())
    }
    fn load(&self, c: &ModelConfig, _: &Path) -> Result<Arc<dyn Engine>> {
        self.loaded.lock().unwrap().push(c.clone());
        Ok(Arc::new(FakeEncoder))
    }
}

/// A model folder `m/` with `1/model.onnx` and the tiny tokenizer in the model folder.
fn model_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("m").join("1");
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(version.join("model.onnx"), b"fake").unwrap();
    std::fs::write(dir.path().join("m").join(TOKENIZER_FILE), TINY_TOKENIZER).unwrap();
    let file = version.join("model.onnx");
    (dir, file)
}

fn config(params: &[(&str, &str)]) -> ModelConfig {
    let mut c = ModelConfig { name: "m".into(), backend: "text".into(), ..Default::default() };
    for (k, v) in params {
        c.parameters.insert(k.to_string(), ModelParameter { string_value: v.to_string() });
    }
    c
}

fn load(params: &[(&str, &str)]) -> (tempfile::TempDir, Arc<dyn Engine>, ModelConfig) {
    let (dir, file) = model_dir();
    let backend = TextBackend::new(Arc::new(FakeOnnx::default()));
    let mut c = config(params);
    backend.autocomplete(&mut c, &file, &AutocompleteOptions::default()).unwrap();
    let engine = backend.load(&c, &file).unwrap();
    (dir, engine, c)
}

fn text_input(strings: &[&str]) -> Tensor {
    let data = join_bytes_elements(strings.iter().map(|s| s.as_bytes()));
    Tensor::new("TEXT", DataType::Bytes, vec![strings.len() as i64, 1], data)
}

fn run(engine: &dyn Engine, strings: &[&str]) -> Result<Tensor> {
    let mut out = engine.infer(&[text_input(strings)], &mut Phases::start())?;
    assert_eq!(out.len(), 1);
    Ok(out.remove(0))
}

#[test]
fn recognises_a_tokenizer_beside_the_model_or_in_the_model_folder() {
    let backend = TextBackend::new(Arc::new(FakeOnnx::default()));
    let (dir, file) = model_dir();
    let version = file.parent().unwrap();
    assert!(backend.recognises(version));
    std::fs::rename(dir.path().join("m").join(TOKENIZER_FILE), version.join(TOKENIZER_FILE)).unwrap();
    assert!(backend.recognises(version));
    std::fs::remove_file(version.join(TOKENIZER_FILE)).unwrap();
    assert!(!backend.recognises(version), "a plain ONNX model is left to the ONNX backend");
    std::fs::write(version.join(TOKENIZER_FILE), TINY_TOKENIZER).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(!backend.recognises(version));
    assert!(backend.serves(&config(&[])));
    assert!(!backend.serves(&ModelConfig { platform: "onnxruntime_onnx".into(), ..Default::default() }));
}

#[test]
fn completes_the_configuration() {
    let (_dir, _, c) = load(&[]);
    assert_eq!(c.max_batch_size, DEFAULT_MAX_BATCH_SIZE);
    assert_eq!((c.input.len(), c.input[0].name.as_str(), c.input[0].dims.as_slice()), (1, "TEXT", &[1i64][..]));
    assert_eq!(input_datatype(&c.input[0]), DataType::Bytes);
    assert_eq!((c.output.len(), c.output[0].name.as_str(), c.output[0].dims.as_slice()), (1, "embedding", &[3i64][..]));
    let (_dir, _, c) = load(&[("pooling", "none")]);
    assert_eq!((c.output[0].name.as_str(), c.output[0].dims.as_slice()), ("logits", &[2i64][..]));
}

#[test]
fn the_encoder_is_loaded_unbatched_through_the_onnx_backend() {
    let (_dir, file) = model_dir();
    let onnx = Arc::new(FakeOnnx::default());
    let backend = TextBackend::new(onnx.clone());
    let mut c = config(&[]);
    backend.autocomplete(&mut c, &file, &AutocompleteOptions::default()).unwrap();
    backend.load(&c, &file).unwrap();
    let loaded = onnx.loaded.lock().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!((loaded[0].backend.as_str(), loaded[0].platform.as_str()), ("fake_onnx", "fake_onnx_platform"));
    assert_eq!(loaded[0].max_batch_size, 0);
}

#[test]
fn mean_pooling_over_the_mask_is_independent_of_padding() {
    let (_dir, engine, _) = load(&[]);
    let strings = ["hello world, hello", "hello", "", "CAFÉ"];
    let batched = run(engine.as_ref(), &strings).unwrap();
    assert_eq!(batched.shape, vec![4, HIDDEN as i64]);
    let rows = floats(&batched);
    for (i, s) in strings.iter().enumerate() {
        let alone = floats(&run(engine.as_ref(), &[s]).unwrap());
        assert_eq!(&rows[i * HIDDEN..(i + 1) * HIDDEN], alone.as_slice(), "{s:?}");
    }
    // "hello" is [CLS] hello [SEP] = ids 2, 4, 3 at positions 0, 1, 2
    assert_eq!(&rows[HIDDEN..2 * HIDDEN], &[3.0, 1.0, 0.0]);
    // the empty string is [CLS] [SEP]
    assert_eq!(&rows[2 * HIDDEN..3 * HIDDEN], &[2.5, 0.5, 0.0]);
}

#[test]
fn cls_pooling_and_normalisation() {
    let (_dir, engine, _) = load(&[("pooling", "cls")]);
    let rows = floats(&run(engine.as_ref(), &["hello", "world"]).unwrap());
    assert_eq!(rows, vec![2.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
    let (_dir, engine, _) = load(&[("normalize", "true")]);
    let rows = floats(&run(engine.as_ref(), &["hello world", "a"]).unwrap());
    for row in rows.chunks(HIDDEN) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "{row:?}");
    }
}

#[test]
fn logits_pass_through_and_truncation_applies() {
    let (_dir, engine, c) = load(&[("pooling", "none"), ("max_length", "3")]);
    assert_eq!(c.output[0].name, "logits");
    let out = run(engine.as_ref(), &["hello world", "a"]).unwrap();
    assert_eq!(out.name, "logits");
    // truncated to [CLS] hello [SEP] = 2 + 4 + 3; "a" = 2 + 7 + 3
    assert_eq!(floats(&out), vec![9.0, 3.0, 12.0, 3.0]);
}

#[test]
fn bad_requests_are_invalid_argument() {
    let (_dir, engine, _) = load(&[]);
    let bad_utf8 = Tensor::new("TEXT", DataType::Bytes, vec![1, 1], join_bytes_elements([&b"\xc3"[..]]));
    let empty = Tensor::new("TEXT", DataType::Bytes, vec![0, 1], Vec::<u8>::new());
    let wide = Tensor::new("TEXT", DataType::Bytes, vec![1, 2], join_bytes_elements([&b"a"[..], b"b"]));
    for t in [bad_utf8, empty, wide] {
        let e = engine.infer(&[t], &mut Phases::start()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    }
    let e = engine.infer(&[], &mut Phases::start()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
}

#[test]
fn configuration_errors_name_the_problem() {
    let (_dir, file) = model_dir();
    let backend = TextBackend::new(Arc::new(FakeOnnx::default()));
    let mut c = config(&[]);
    backend.autocomplete(&mut c, &file, &AutocompleteOptions::default()).unwrap();

    let mut wrong = c.clone();
    wrong.output[0].data_type = DataType::F16.to_config() as i32;
    assert!(backend.load(&wrong, &file).err().unwrap().message.contains("TYPE_FP32"));
    let mut wrong = c.clone();
    wrong.input[0].data_type = DataType::I64.to_config() as i32;
    assert!(backend.load(&wrong, &file).err().unwrap().message.contains("TYPE_STRING"));
    let mut wrong = c.clone();
    wrong.parameters.insert("encoder_output".into(), ModelParameter { string_value: "nope".into() });
    let e = backend.load(&wrong, &file).err().unwrap();
    assert!(e.message.contains("'nope'") && e.message.contains("last_hidden_state"), "{e}");

    std::fs::remove_file(file.parent().unwrap().parent().unwrap().join(TOKENIZER_FILE)).unwrap();
    let e = backend.load(&c, &file).err().unwrap();
    assert!(e.message.contains(TOKENIZER_FILE), "{e}");
}
