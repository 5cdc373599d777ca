//! Proptest strategies for tensors, shared by the codec tests of every adapter
//! (feature `test-support`).

use crate::datatype::{DataType, ALL_DATATYPES};
use crate::tensor::{join_bytes_elements, Tensor};
use half::{bf16, f16};
use proptest::prelude::*;

/// Random finite data of `dt` with `n` elements, in wire bytes (finite so JSON can carry it).
pub fn arb_data(dt: DataType, n: usize) -> BoxedStrategy<Vec<u8>> {
    fn floats<T: 'static + std::fmt::Debug>(
        range: impl Strategy<Value = T> + 'static,
        n: usize,
        bytes: fn(&T) -> Vec<u8>,
    ) -> BoxedStrategy<Vec<u8>> {
        proptest::collection::vec(range, n).prop_map(move |v| v.iter().flat_map(bytes).collect()).boxed()
    }
    match dt {
        DataType::Bool => proptest::collection::vec(0u8..=1, n).boxed(),
        DataType::F32 => floats(-1e30f32..1e30, n, |x| x.to_le_bytes().to_vec()),
        DataType::F64 => floats(-1e300f64..1e300, n, |x| x.to_le_bytes().to_vec()),
        DataType::F16 => floats(-60000f32..60000.0, n, |x| f16::from_f32(*x).to_le_bytes().to_vec()),
        DataType::BF16 => floats(-1e30f32..1e30, n, |x| bf16::from_f32(*x).to_le_bytes().to_vec()),
        DataType::Bytes => proptest::collection::vec("[a-zA-Z0-9 _\\-éü]{0,12}", n)
            .prop_map(|v| join_bytes_elements(v.iter().map(|s| s.as_bytes())))
            .boxed(),
        other => proptest::collection::vec(any::<u8>(), n * other.size().unwrap_or(1)).boxed(),
    }
}

/// A tensor named `t` of any datatype, rank 0 to 2, dims 0 to 3.
pub fn arb_tensor() -> impl Strategy<Value = Tensor> {
    (0..ALL_DATATYPES.len(), proptest::collection::vec(0i64..4, 0..3)).prop_flat_map(|(i, shape)| {
        let dt = ALL_DATATYPES[i];
        let n = shape.iter().product::<i64>() as usize;
        arb_data(dt, n).prop_map(move |data| Tensor::new("t", dt, shape.clone(), data))
    })
}
