//! Tensor element types, with their KServe v2 names and Triton config names.

use crate::error::{Error, Result};
use flotilla_proto::inference::DataType as ConfigType;

/// A tensor element type of the KServe v2 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    /// Variable-length bytes; on the wire each element is a 4-byte little-endian length, then the bytes.
    Bytes,
}

pub const ALL_DATATYPES: [DataType; 14] = [
    DataType::Bool,
    DataType::U8,
    DataType::U16,
    DataType::U32,
    DataType::U64,
    DataType::I8,
    DataType::I16,
    DataType::I32,
    DataType::I64,
    DataType::F16,
    DataType::BF16,
    DataType::F32,
    DataType::F64,
    DataType::Bytes,
];

// === impl DataType ===

impl DataType {
    /// The protocol name (`"FP32"`, `"BYTES"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::BF16 => "BF16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a protocol name; the error lists the accepted names.
    pub fn parse(name: &str) -> Result<Self> {
        ALL_DATATYPES.into_iter().find(|d| d.as_str() == name).ok_or_else(|| {
            let names: Vec<&str> = ALL_DATATYPES.iter().map(|d| d.as_str()).collect();
            Error::invalid(format!("unknown datatype '{name}', expected one of {}", names.join(", ")))
        })
    }

    /// Whether this is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, DataType::F16 | DataType::BF16 | DataType::F32 | DataType::F64)
    }

    /// Whether this is a signed or unsigned integer type.
    pub const fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::U8
                | DataType::U16
                | DataType::U32
                | DataType::U64
                | DataType::I8
                | DataType::I16
                | DataType::I32
                | DataType::I64
        )
    }

    /// Bytes per element, or `None` for BYTES.
    pub const fn size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => Some(1),
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::BF16 => Some(2),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(4),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(8),
            DataType::Bytes => None,
        }
    }

    /// From a Triton model-config `DataType` (TYPE_STRING is BYTES).
    pub fn from_config(t: i32) -> Result<Self> {
        let t = ConfigType::try_from(t).map_err(|_| Error::invalid(format!("unknown config data_type {t}")))?;
        Ok(match t {
            ConfigType::TypeBool => DataType::Bool,
            ConfigType::TypeUint8 => DataType::U8,
            ConfigType::TypeUint16 => DataType::U16,
            ConfigType::TypeUint32 => DataType::U32,
            ConfigType::TypeUint64 => DataType::U64,
            ConfigType::TypeInt8 => DataType::I8,
            ConfigType::TypeInt16 => DataType::I16,
            ConfigType::TypeInt32 => DataType::I32,
            ConfigType::TypeInt64 => DataType::I64,
            ConfigType::TypeFp16 => DataType::F16,
            ConfigType::TypeBf16 => DataType::BF16,
            ConfigType::TypeFp32 => DataType::F32,
            ConfigType::TypeFp64 => DataType::F64,
            ConfigType::TypeString => DataType::Bytes,
            ConfigType::TypeInvalid => return Err(Error::invalid("data_type TYPE_INVALID is not a tensor type")),
        })
    }

    /// To a Triton model-config `DataType`.
    pub fn to_config(self) -> ConfigType {
        match self {
            DataType::Bool => ConfigType::TypeBool,
            DataType::U8 => ConfigType::TypeUint8,
            DataType::U16 => ConfigType::TypeUint16,
            DataType::U32 => ConfigType::TypeUint32,
            DataType::U64 => ConfigType::TypeUint64,
            DataType::I8 => ConfigType::TypeInt8,
            DataType::I16 => ConfigType::TypeInt16,
            DataType::I32 => ConfigType::TypeInt32,
            DataType::I64 => ConfigType::TypeInt64,
            DataType::F16 => ConfigType::TypeFp16,
            DataType::BF16 => ConfigType::TypeBf16,
            DataType::F32 => ConfigType::TypeFp32,
            DataType::F64 => ConfigType::TypeFp64,
            DataType::Bytes => ConfigType::TypeString,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_config_types_round_trip() {
        for d in ALL_DATATYPES {
            assert_eq!(DataType::parse(d.as_str()).unwrap(), d);
            assert_eq!(DataType::from_config(d.to_config() as i32).unwrap(), d);
        }
        assert!(DataType::parse("FLOAT").unwrap_err().message.contains("FP32"));
    }
}
