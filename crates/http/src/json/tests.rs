use super::*;
use flotilla_core::testing::arb_tensor;
use proptest::prelude::*;

fn decode(body: &str) -> Result<DecodedRequest> {
    decode_request("m", "", Bytes::from(body.to_string()), None)
}

#[test]
fn nested_and_flat_data_decode_the_same() {
    let flat = decode(r#"{"inputs":[{"name":"a","shape":[2,2],"datatype":"INT32","data":[1,2,3,4]}]}"#).unwrap();
    let nested = decode(r#"{"inputs":[{"name":"a","shape":[2,2],"datatype":"INT32","data":[[1,2],[3,4]]}]}"#).unwrap();
    assert_eq!(flat.request.inputs, nested.request.inputs);
    let want: Vec<u8> = [1i32, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(&flat.request.inputs[0].data[..], &want[..]);
}

#[test]
fn binary_inputs_and_output_options() {
    let header = r#"{"id":"7","inputs":[{"name":"a","shape":[2],"datatype":"UINT8","parameters":{"binary_data_size":2}}],"outputs":[{"name":"o","parameters":{"binary_data":true,"classification":2}}],"parameters":{"binary_data_output":false}}"#;
    let mut body = header.as_bytes().to_vec();
    body.extend([9u8, 8]);
    let d = decode_request("m", "1", Bytes::from(body), Some(header.len())).unwrap();
    assert_eq!(d.request.id, "7");
    assert_eq!(&d.request.inputs[0].data[..], &[9, 8]);
    assert_eq!(d.binary_outputs.get("o"), Some(&true));
    assert_eq!(d.request.outputs[0].classification, Some(2));
    assert!(!d.default_binary);
}

#[test]
fn malformed_requests_name_the_problem() {
    let cases = [
        (r#"{"inputs":[{"name":"a""#, "malformed"),
        (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FLOAT","data":[1]}]}"#, "unknown datatype"),
        (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT8","data":[300]}]}"#, "out of range"),
        (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":["x"]}]}"#, "got the string"),
        (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":[1.5]}]}"#, "expected INT32"),
        (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"BOOL","data":[1]}]}"#, "expected BOOL"),
        (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32"}]}"#, "no 'data'"),
        (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[null]}]}"#, "null"),
        (
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#,
            "both",
        ),
        (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#, "exceeds"),
        (r#"{"inputs":[{"name":"a","shape":"x","datatype":"FP32","data":[1]}]}"#, "malformed"),
        (r#"{"model_name":"m","inputs":{}}"#, "malformed"),
        (r#"[1,2]"#, "malformed"),
    ];
    for (body, want) in cases {
        let e = decode(body).unwrap_err();
        assert_eq!(e.http_status(), 400, "{body}");
        assert!(e.message.contains(want), "{body}: {e}");
    }
    let e = decode_request("m", "", Bytes::from_static(b"{}"), Some(10)).unwrap_err();
    assert!(e.message.contains("Inference-Header-Content-Length"), "{e}");
    let header = r#"{"inputs":[{"name":"a","shape":[1],"datatype":"UINT8","parameters":{"binary_data_size":1}}]}"#;
    let mut body = header.as_bytes().to_vec();
    body.extend([1u8, 2, 3]);
    let e = decode_request("m", "", Bytes::from(body), Some(header.len())).unwrap_err();
    assert!(e.message.contains("binary bytes follow"), "{e}");
}

#[test]
fn response_binary_layout() {
    let resp = InferResponse {
        model_name: "m".into(),
        model_version: "1".into(),
        id: "x".into(),
        parameters: Default::default(),
        outputs: vec![
            Tensor::new("a", DataType::U8, vec![2], vec![1u8, 2]),
            Tensor::new("b", DataType::I32, vec![1], 5i32.to_le_bytes().to_vec()),
        ],
    };
    let (body, n) = encode_response(&resp, |n| n == "a").unwrap();
    let n = n.unwrap();
    let header: serde_json::Value = serde_json::from_slice(&body[..n]).unwrap();
    assert_eq!(header["id"], "x");
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 2);
    assert_eq!(header["outputs"][1]["data"][0], 5);
    assert_eq!(&body[n..], &[1, 2]);
    let (body, n) = encode_response(&resp, |_| false).unwrap();
    assert!(n.is_none());
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([1, 2]));
}

#[test]
fn nan_and_infinity_literals_as_triton_reads_and_writes_them() {
    let d = decode(
        r#"{"id":"NaN","inputs":[{"name":"a","shape":[4],"datatype":"FP32","data":[NaN,Infinity,-Infinity,1.5]},
            {"name":"s","shape":[1],"datatype":"BYTES","data":["NaN Infinity"]}]}"#,
    )
    .unwrap();
    let v: Vec<f32> =
        d.request.inputs[0].data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(v[0].is_nan() && v[1] == f32::INFINITY && v[2] == f32::NEG_INFINITY && v[3] == 1.5);
    assert_eq!(&d.request.inputs[1].data[4..], b"NaN Infinity");
    assert_eq!(d.request.id, "NaN");
    // NaN in an integer tensor is still an error that names the type.
    let e = decode(r#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","data":[NaN]}]}"#).unwrap_err();
    assert!(e.message.contains("INT32"), "{e}");
    let t = Tensor { data: d.request.inputs[0].data.clone(), ..d.request.inputs[0].clone() };
    let mut out = Vec::new();
    write_data(&t, &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "[NaN,Infinity,-Infinity,1.5]");
}

proptest! {
    #[test]
    fn json_data_round_trips_every_datatype(t in arb_tensor()) {
        let mut data = Vec::new();
        write_data(&t, &mut data).unwrap();
        let body = format!(
            r#"{{"inputs":[{{"name":"t","shape":{},"datatype":"{}","data":{}}}]}}"#,
            serde_json::to_string(&t.shape).unwrap(), t.datatype, String::from_utf8(data).unwrap()
        );
        let d = decode(&body).unwrap();
        prop_assert_eq!(&d.request.inputs[0], &t);
    }

    #[test]
    fn binary_round_trips_every_datatype(t in arb_tensor()) {
        let resp = InferResponse { outputs: vec![t.clone()], ..Default::default() };
        let (body, n) = encode_response(&resp, |_| true).unwrap();
        let n = n.unwrap();
        let header: serde_json::Value = serde_json::from_slice(&body[..n]).unwrap();
        let req = serde_json::json!({"inputs": [{
            "name": "t", "shape": header["outputs"][0]["shape"], "datatype": header["outputs"][0]["datatype"],
            "parameters": {"binary_data_size": header["outputs"][0]["parameters"]["binary_data_size"]}
        }]}).to_string();
        let mut wire = req.clone().into_bytes();
        wire.extend_from_slice(&body[n..]);
        let d = decode_request("m", "", Bytes::from(wire), Some(req.len())).unwrap();
        prop_assert_eq!(&d.request.inputs[0], &t);
    }

    #[test]
    fn decoder_never_panics_on_garbage(body in proptest::collection::vec(any::<u8>(), 0..200), split in 0usize..250) {
        let _ = decode_request("m", "", Bytes::from(body), Some(split));
    }
}
