use super::*;
use flotilla_core::datatype::ALL_DATATYPES;
use flotilla_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use proptest::prelude::*;

fn input(name: &str, dt: &str, shape: Vec<i64>, contents: Option<InferTensorContents>) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: dt.into(), shape, parameters: HashMap::new(), contents }
}

#[test]
fn raw_count_mismatch_is_invalid_argument() {
    let req = ModelInferRequest {
        inputs: vec![input("a", "INT32", vec![1], None), input("b", "INT32", vec![1], None)],
        raw_input_contents: vec![Bytes::from_static(&[0, 0, 0, 0])],
        ..Default::default()
    };
    let e = request_from_proto(req).unwrap_err();
    assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument);
    assert!(e.message.contains("raw_input_contents has 1 entries"), "{e}");
}

#[test]
fn typed_contents_are_checked() {
    let c = InferTensorContents { fp32_contents: vec![1.0], ..Default::default() };
    let req = ModelInferRequest { inputs: vec![input("a", "INT32", vec![1], Some(c))], ..Default::default() };
    let e = request_from_proto(req).unwrap_err();
    assert!(e.message.contains("expects int_contents, got fp32_contents"), "{e}");
    let c = InferTensorContents { int_contents: vec![300], ..Default::default() };
    let req = ModelInferRequest { inputs: vec![input("a", "INT8", vec![1], Some(c))], ..Default::default() };
    assert!(request_from_proto(req).unwrap_err().message.contains("out of range"));
    let req = ModelInferRequest {
        inputs: vec![input("a", "FP16", vec![1], Some(InferTensorContents::default()))],
        ..Default::default()
    };
    assert!(request_from_proto(req).unwrap_err().message.contains("raw_input_contents"));
    let mut p = HashMap::new();
    p.insert(
        "classification".to_string(),
        InferParameter { parameter_choice: Some(ParameterChoice::StringParam("x".into())) },
    );
    let req = ModelInferRequest {
        outputs: vec![InferRequestedOutputTensor { name: "o".into(), parameters: p }],
        ..Default::default()
    };
    assert!(request_from_proto(req).unwrap_err().message.contains("classification"));
}

fn arb_tensor() -> impl Strategy<Value = Tensor> {
    (0..ALL_DATATYPES.len(), proptest::collection::vec(0i64..4, 0..3)).prop_flat_map(|(i, shape)| {
        let dt = ALL_DATATYPES[i];
        let n = shape.iter().product::<i64>() as usize;
        let data: BoxedStrategy<Vec<u8>> = match dt {
            DataType::Bool => proptest::collection::vec(0u8..=1, n).boxed(),
            DataType::Bytes => proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), n)
                .prop_map(|v| join_bytes_elements(v.iter().map(|e| &e[..])))
                .boxed(),
            // NaN payloads do not survive f32 -> proto -> f32 bit-exactly in every case; keep floats finite.
            DataType::F32 => proptest::collection::vec(-1e30f32..1e30, n)
                .prop_map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
                .boxed(),
            DataType::F64 => proptest::collection::vec(-1e300f64..1e300, n)
                .prop_map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
                .boxed(),
            other => proptest::collection::vec(any::<u8>(), n * other.size().unwrap_or(1)).boxed(),
        };
        data.prop_map(move |d| Tensor::new("t", dt, shape.clone(), d))
    })
}

proptest! {
    #[test]
    fn raw_contents_round_trip_every_datatype(t in arb_tensor()) {
        let resp = response_to_proto(InferResponse { outputs: vec![t.clone()], ..Default::default() });
        let encoded = prost::Message::encode_to_vec(&resp);
        let back: ModelInferResponse = prost::Message::decode(&encoded[..]).unwrap();
        let o = &back.outputs[0];
        let req = ModelInferRequest {
            inputs: vec![input("t", &o.datatype, o.shape.clone(), None)],
            raw_input_contents: back.raw_output_contents.clone(),
            ..Default::default()
        };
        let req: ModelInferRequest = prost::Message::decode(&prost::Message::encode_to_vec(&req)[..]).unwrap();
        prop_assert_eq!(&request_from_proto(req).unwrap().inputs[0], &t);
    }

    #[test]
    fn typed_contents_round_trip(t in arb_tensor()) {
        prop_assume!(contents_field(t.datatype).is_some());
        let c = bytes_to_contents(&t).unwrap();
        let req = ModelInferRequest { inputs: vec![input("t", t.datatype.as_str(), t.shape.clone(), Some(c))], ..Default::default() };
        let req: ModelInferRequest = prost::Message::decode(&prost::Message::encode_to_vec(&req)[..]).unwrap();
        prop_assert_eq!(&request_from_proto(req).unwrap().inputs[0], &t);
    }

    #[test]
    fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(req) = <ModelInferRequest as prost::Message>::decode(&bytes[..]) {
            let _ = request_from_proto(req);
        }
    }
}
