//! Tensors as they travel through the service: a name, a datatype, a shape and
//! row-major little-endian bytes. BYTES tensors keep the protocol's binary form
//! (4-byte little-endian length before each element) so binary REST and gRPC
//! raw contents pass through without a copy.

use crate::datatype::DataType;
use crate::error::{Error, Result};
use crate::request::Parameters;
use bytes::Bytes;
use half::{bf16, f16};

/// A tensor with owned (reference-counted) data.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
    pub parameters: Parameters,
}

/// Number of elements of `shape`, rejecting negative dims and overflow; `what` names the tensor.
pub fn element_count(shape: &[i64], what: &str) -> Result<usize> {
    let mut n: usize = 1;
    for &d in shape {
        if d < 0 {
            return Err(Error::invalid(format!(
                "{what}: shape {shape:?} has a negative dimension; dimensions must be >= 0"
            )));
        }
        let d = usize::try_from(d).map_err(|_| Error::invalid(format!("{what}: dimension {d} is too large")))?;
        n = n
            .checked_mul(d)
            .ok_or_else(|| Error::invalid(format!("{what}: shape {shape:?} overflows the element count")))?;
    }
    Ok(n)
}

/// Byte size of a fixed-size tensor with `shape`, with overflow checks.
pub fn byte_size(datatype: DataType, shape: &[i64], what: &str) -> Result<Option<usize>> {
    let n = element_count(shape, what)?;
    match datatype.size() {
        None => Ok(None),
        Some(s) => n
            .checked_mul(s)
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("{what}: shape {shape:?} overflows the byte size"))),
    }
}

/// Splits BYTES binary form into its elements; errors on a truncated length prefix or element.
pub fn split_bytes_elements<'a>(data: &'a [u8], what: &str) -> Result<Vec<&'a [u8]>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(Error::invalid(format!(
                "{what}: BYTES data ends inside a 4-byte length prefix (element {})",
                out.len()
            )));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if rest.len() < len {
            return Err(Error::invalid(format!(
                "{what}: BYTES element {} declares {len} bytes but only {} remain",
                out.len(),
                rest.len()
            )));
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(out)
}

/// Encodes elements into BYTES binary form.
pub fn join_bytes_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

// === impl Tensor ===

impl Tensor {
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>, data: impl Into<Bytes>) -> Self {
        Self { name: name.into(), datatype, shape, data: data.into(), parameters: Parameters::default() }
    }

    /// Checks that the data holds exactly the elements the shape declares
    /// (and, for BOOL, that every byte is 0 or 1).
    pub fn validate(&self, what: &str) -> Result<()> {
        match byte_size(self.datatype, &self.shape, what)? {
            Some(expected) => {
                if self.data.len() != expected {
                    return Err(Error::invalid(format!(
                        "{what}: shape {:?} of {} needs {expected} bytes, got {}",
                        self.shape,
                        self.datatype,
                        self.data.len()
                    )));
                }
                if self.datatype == DataType::Bool {
                    if let Some(b) = self.data.iter().find(|b| **b > 1) {
                        return Err(Error::invalid(format!("{what}: BOOL element byte {b} is not 0 or 1")));
                    }
                }
            }
            None => {
                let n = element_count(&self.shape, what)?;
                let got = split_bytes_elements(&self.data, what)?.len();
                if got != n {
                    return Err(Error::invalid(format!(
                        "{what}: shape {:?} needs {n} BYTES elements, got {got}",
                        self.shape
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Every element of a fixed-size tensor as f64 (classification, drift monitoring, profiles);
/// trailing bytes short of an element are ignored: callers compare the count with the shape.
pub fn to_f64(datatype: DataType, data: &[u8]) -> Result<Vec<f64>> {
    macro_rules! read {
        ($t:ty, $n:expr) => {
            data.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])) as f64).collect()
        };
    }
    Ok(match datatype {
        DataType::Bool | DataType::U8 => data.iter().map(|b| *b as f64).collect(),
        DataType::I8 => data.iter().map(|b| *b as i8 as f64).collect(),
        DataType::U16 => read!(u16, 2),
        DataType::I16 => read!(i16, 2),
        DataType::U32 => read!(u32, 4),
        DataType::I32 => read!(i32, 4),
        DataType::U64 => read!(u64, 8),
        DataType::I64 => read!(i64, 8),
        DataType::F32 => read!(f32, 4),
        DataType::F64 => read!(f64, 8),
        DataType::F16 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        DataType::BF16 => data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        DataType::Bytes => return Err(Error::invalid("BYTES elements are not numbers")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_rejects_negative_and_overflow() {
        assert_eq!(element_count(&[2, 3], "x").unwrap(), 6);
        assert_eq!(element_count(&[], "x").unwrap(), 1);
        assert!(element_count(&[-1, 3], "x").unwrap_err().message.contains("negative"));
        let e = element_count(&[i64::MAX, i64::MAX], "x").unwrap_err();
        assert!(e.message.contains("overflow"), "{e}");
        let e = byte_size(DataType::F64, &[1 << 61, 2], "x").unwrap_err();
        assert!(e.message.contains("overflow"), "{e}");
    }

    #[test]
    fn bytes_elements_round_trip_and_truncation() {
        let joined = join_bytes_elements([&b"ab"[..], b"", b"xyz"]);
        assert_eq!(split_bytes_elements(&joined, "x").unwrap(), vec![&b"ab"[..], b"", b"xyz"]);
        assert!(split_bytes_elements(&joined[..joined.len() - 1], "x").is_err());
        assert!(split_bytes_elements(&[1, 0], "x").unwrap_err().message.contains("prefix"));
    }

    #[test]
    fn validate_checks_sizes_and_bools() {
        let t = Tensor::new("a", DataType::I32, vec![2], vec![0u8; 8]);
        t.validate("a").unwrap();
        let t = Tensor::new("a", DataType::I32, vec![3], vec![0u8; 8]);
        assert!(t.validate("a").unwrap_err().message.contains("needs 12 bytes"));
        let t = Tensor::new("a", DataType::Bool, vec![2], vec![1u8, 2]);
        assert!(t.validate("a").is_err());
        let t = Tensor::new("a", DataType::Bytes, vec![2], join_bytes_elements([&b"a"[..]]));
        assert!(t.validate("a").unwrap_err().message.contains("needs 2 BYTES"));
    }
}
