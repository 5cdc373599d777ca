//! Joining requests into one batch along the first dimension, and splitting
//! the batch's outputs back into per-request tensors.

use crate::datatype::DataType;
use crate::error::{Error, Result};
use crate::tensor::{element_count, Tensor};
use bytes::{Bytes, BytesMut};

/// Rows a request holds: its first dimension when the model batches, else 1.
pub fn rows(inputs: &[Tensor], batching: bool) -> usize {
    match inputs.first().and_then(|t| t.shape.first()) {
        Some(&b) if batching => usize::try_from(b).unwrap_or(0).max(1),
        _ => 1,
    }
}

/// Whether two requests' inputs can share a batch: the same inputs in the same order, with the
/// same datatypes and the same dimensions after the first.
pub fn compatible(a: &[Tensor], b: &[Tensor]) -> bool {
    !a.is_empty()
        && a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.datatype == y.datatype
                && !x.shape.is_empty()
                && x.shape.len() == y.shape.len()
                && x.shape[1..] == y.shape[1..]
        })
}

/// Concatenates compatible requests' inputs along the first dimension.
pub fn join(requests: &[&[Tensor]]) -> Vec<Tensor> {
    let first = requests[0];
    first
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let rows: i64 = requests.iter().map(|r| r[i].shape[0]).sum();
            let mut data = BytesMut::with_capacity(requests.iter().map(|r| r[i].data.len()).sum());
            for r in requests {
                data.extend_from_slice(&r[i].data);
            }
            let mut shape = t.shape.clone();
            shape[0] = rows;
            Tensor::new(t.name.clone(), t.datatype, shape, data.freeze())
        })
        .collect()
}

/// Splits a batch's outputs into per-request outputs of `rows` rows each; every output must
/// carry the batch dimension first. `model` names the model in errors.
pub fn split(outputs: Vec<Tensor>, rows: &[usize], model: &str) -> Result<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut per_request: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for t in outputs {
        if t.shape.first().and_then(|d| usize::try_from(*d).ok()) != Some(total) {
            return Err(Error::internal(format!(
                "model {model}: output '{}' has shape {:?}, which cannot be split back to the {} requests of a \
                 {total}-row dynamic batch (the first dimension must be the batch)",
                t.name,
                t.shape,
                rows.len()
            )));
        }
        let what = format!("model {model}: output '{}'", t.name);
        let per_row = element_count(&t.shape[1..], &what)?;
        let bounds = row_bounds(&t, total, per_row, &what)?;
        let mut row = 0;
        for (slot, &n) in per_request.iter_mut().zip(rows) {
            let mut shape = t.shape.clone();
            shape[0] = n as i64;
            let data: Bytes = t.data.slice(bounds[row]..bounds[row + n]);
            let mut part = Tensor::new(t.name.clone(), t.datatype, shape, data);
            part.parameters = t.parameters.clone();
            slot.push(part);
            row += n;
        }
    }
    Ok(per_request)
}

/// Byte offset of the start of each row, plus the end.
fn row_bounds(t: &Tensor, total: usize, per_row: usize, what: &str) -> Result<Vec<usize>> {
    if let Some(size) = t.datatype.size() {
        let row_bytes = per_row * size;
        if t.data.len() != row_bytes * total {
            return Err(Error::internal(format!("{what}: {} bytes do not match shape {:?}", t.data.len(), t.shape)));
        }
        return Ok((0..=total).map(|r| r * row_bytes).collect());
    }
    debug_assert_eq!(t.datatype, DataType::Bytes);
    let mut bounds = Vec::with_capacity(total + 1);
    let mut at = 0usize;
    let data = &t.data[..];
    for _ in 0..total {
        bounds.push(at);
        for _ in 0..per_row {
            let len = data
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| Error::internal(format!("{what}: BYTES data ends early")))?;
            at = at
                .checked_add(4 + len)
                .filter(|end| *end <= data.len())
                .ok_or_else(|| Error::internal(format!("{what}: BYTES element overruns the data")))?;
        }
    }
    if at != data.len() {
        return Err(Error::internal(format!("{what}: BYTES data longer than shape {:?}", t.shape)));
    }
    bounds.push(at);
    Ok(bounds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::join_bytes_elements;

    fn f32s(name: &str, shape: Vec<i64>, v: &[f32]) -> Tensor {
        Tensor::new(name, DataType::F32, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    #[test]
    fn join_then_split_gives_each_request_its_rows() {
        let a = vec![f32s("x", vec![1, 2], &[1., 2.])];
        let b = vec![f32s("x", vec![2, 2], &[3., 4., 5., 6.])];
        assert!(compatible(&a, &b));
        let joined = join(&[&a, &b]);
        assert_eq!(joined[0].shape, vec![3, 2]);
        assert_eq!(joined[0], f32s("x", vec![3, 2], &[1., 2., 3., 4., 5., 6.]));
        let parts = split(joined, &[1, 2], "m").unwrap();
        assert_eq!(parts[0][0], a[0]);
        assert_eq!(parts[1][0], b[0]);
    }

    #[test]
    fn bytes_outputs_split_on_element_boundaries() {
        let words: Vec<&[u8]> = vec![b"a", b"", b"ccc", b"dd"];
        let t = Tensor::new("s", DataType::Bytes, vec![4, 1], join_bytes_elements(words.iter().copied()));
        let parts = split(vec![t], &[3, 1], "m").unwrap();
        assert_eq!(parts[0][0].data.as_ref(), join_bytes_elements(words[..3].iter().copied()).as_slice());
        assert_eq!(parts[1][0].shape, vec![1, 1]);
        assert_eq!(parts[1][0].data.as_ref(), join_bytes_elements([&b"dd"[..]]).as_slice());
    }

    #[test]
    fn incompatible_requests_and_unsplittable_outputs_are_refused() {
        let a = vec![f32s("x", vec![1, 2], &[1., 2.])];
        assert!(!compatible(&a, &[f32s("x", vec![1, 3], &[1., 2., 3.])]));
        assert!(!compatible(&a, &[f32s("y", vec![1, 2], &[1., 2.])]));
        assert!(!compatible(&[], &[]));
        let e = split(vec![f32s("o", vec![2], &[1., 2.])], &[1, 2], "m/1").unwrap_err();
        assert!(e.message.contains("output 'o'") && e.message.contains("3-row"), "{e}");
        let lying = Tensor::new("s", DataType::Bytes, vec![2], join_bytes_elements([&b"a"[..]]));
        assert!(split(vec![lying], &[1, 1], "m").is_err());
    }
}
