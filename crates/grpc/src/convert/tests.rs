use super::*;
use flotilla_core::testing::arb_tensor;
use flotilla_core::RequestedOutput;
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
    fn a_forwarded_request_and_its_answer_come_back_unchanged(t in arb_tensor(), k in 1usize..5) {
        // The router's hop: request -> protobuf -> worker's decoder, response -> protobuf -> router.
        let mut p = Parameters::new();
        p.insert("timeout".into(), ParamValue::Uint(5));
        p.insert("idempotent".into(), ParamValue::Bool(false));
        let mut out_params = Parameters::new();
        out_params.insert("custom".into(), ParamValue::String("x".into()));
        let request = InferRequest {
            model: "m".into(),
            version: "2".into(),
            id: "r".into(),
            parameters: p,
            inputs: vec![t.clone()],
            outputs: vec![RequestedOutput { name: "o".into(), classification: Some(k), parameters: out_params }],
        };
        let wire = prost::Message::encode_to_vec(&request_to_proto(&request));
        let back = request_from_proto(prost::Message::decode(&wire[..]).unwrap()).unwrap();
        prop_assert_eq!(back, request);
        let response = InferResponse { model_name: "m".into(), model_version: "2".into(), id: "r".into(), outputs: vec![t], ..Default::default() };
        let wire = prost::Message::encode_to_vec(&response_to_proto(response.clone()));
        prop_assert_eq!(response_from_proto(prost::Message::decode(&wire[..]).unwrap()).unwrap(), response);
    }

    #[test]
    fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(req) = <ModelInferRequest as prost::Message>::decode(&bytes[..]) {
            let _ = request_from_proto(req);
        }
        if let Ok(resp) = <ModelInferResponse as prost::Message>::decode(&bytes[..]) {
            let _ = response_from_proto(resp);
        }
    }
}
