//! Element casts between fixed-size protocol datatypes, on little-endian bytes:
//! used only where a configuration names a different datatype than the ONNX
//! graph has (the tract engine casts the same way, with `as` semantics).

use flotilla_core::{DataType, Error, Result};
use half::{bf16, f16};
use num_traits::AsPrimitive;

/// An element that can be read from and written to little-endian bytes.
trait Le: Copy + 'static {
    const SIZE: usize;
    fn read(b: &[u8]) -> Self;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! le {
    ($($t:ty),*) => {$(
        impl Le for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
le!(u8, u16, u32, u64, i8, i16, i32, i64, f16, bf16, f32, f64);

fn convert<S: Le + AsPrimitive<D>, D: Le>(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / S::SIZE * D::SIZE);
    for chunk in data.chunks_exact(S::SIZE) {
        S::read(chunk).as_().write(&mut out);
    }
    out
}

/// Elements read as f64, for casts to BOOL (non-zero is true).
fn to_bool<S: Le + AsPrimitive<f64>>(data: &[u8]) -> Vec<u8> {
    data.chunks_exact(S::SIZE).map(|c| u8::from(S::read(c).as_() != 0.0)).collect()
}

macro_rules! dispatch_target {
    ($S:ty, $data:expr, $to:expr) => {
        match $to {
            DataType::U8 => Some(convert::<$S, u8>($data)),
            DataType::U16 => Some(convert::<$S, u16>($data)),
            DataType::U32 => Some(convert::<$S, u32>($data)),
            DataType::U64 => Some(convert::<$S, u64>($data)),
            DataType::I8 => Some(convert::<$S, i8>($data)),
            DataType::I16 => Some(convert::<$S, i16>($data)),
            DataType::I32 => Some(convert::<$S, i32>($data)),
            DataType::I64 => Some(convert::<$S, i64>($data)),
            DataType::F16 => Some(convert::<$S, f16>($data)),
            DataType::BF16 => Some(convert::<$S, bf16>($data)),
            DataType::F32 => Some(convert::<$S, f32>($data)),
            DataType::F64 => Some(convert::<$S, f64>($data)),
            DataType::Bool => Some(to_bool::<$S>($data)),
            DataType::Bytes => None,
        }
    };
}

/// Whether [`cast`] converts `from` to `to` (every pair of fixed-size datatypes).
pub fn castable(from: DataType, to: DataType) -> bool {
    from == to || (from != DataType::Bytes && to != DataType::Bytes)
}

/// Casts little-endian elements of `from` into little-endian elements of `to`; `what` names the tensor in errors.
pub fn cast(data: &[u8], from: DataType, to: DataType, what: &str) -> Result<Vec<u8>> {
    let size = from.size().unwrap_or(1);
    if !data.len().is_multiple_of(size) {
        return Err(Error::invalid(format!("{what}: {} bytes is not a whole number of {from} elements", data.len())));
    }
    let out = match from {
        // BOOL reads as 0/1 bytes.
        DataType::Bool | DataType::U8 => dispatch_target!(u8, data, to),
        DataType::U16 => dispatch_target!(u16, data, to),
        DataType::U32 => dispatch_target!(u32, data, to),
        DataType::U64 => dispatch_target!(u64, data, to),
        DataType::I8 => dispatch_target!(i8, data, to),
        DataType::I16 => dispatch_target!(i16, data, to),
        DataType::I32 => dispatch_target!(i32, data, to),
        DataType::I64 => dispatch_target!(i64, data, to),
        DataType::F16 => dispatch_target!(f16, data, to),
        DataType::BF16 => dispatch_target!(bf16, data, to),
        DataType::F32 => dispatch_target!(f32, data, to),
        DataType::F64 => dispatch_target!(f64, data, to),
        DataType::Bytes => None,
    };
    out.ok_or_else(|| Error::invalid(format!("{what}: cannot cast {from} to {to}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts_follow_as_semantics() {
        let data: Vec<u8> = [1.5f32, -2.0, 300.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = cast(&data, DataType::F32, DataType::I32, "x").unwrap();
        let ints: Vec<i32> = out.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(ints, [1, -2, 300]);
        let out = cast(&data, DataType::F32, DataType::U8, "x").unwrap();
        assert_eq!(out, [1, 0, 255]);
        let out = cast(&data, DataType::F32, DataType::Bool, "x").unwrap();
        assert_eq!(out, [1, 1, 1]);
        let out = cast(&[0, 1], DataType::Bool, DataType::F64, "x").unwrap();
        assert_eq!(out, [0.0f64.to_le_bytes(), 1.0f64.to_le_bytes()].concat());
        let out = cast(&data, DataType::F32, DataType::F16, "x").unwrap();
        assert_eq!(f16::from_le_bytes([out[0], out[1]]), f16::from_f32(1.5));
    }

    #[test]
    fn bytes_and_ragged_data_are_refused() {
        assert!(!castable(DataType::Bytes, DataType::F32));
        assert!(castable(DataType::Bytes, DataType::Bytes));
        assert!(cast(&[0, 0, 0], DataType::F32, DataType::I32, "x").unwrap_err().message.contains("whole number"));
        assert!(cast(&[0; 4], DataType::F32, DataType::Bytes, "x").is_err());
    }
}
