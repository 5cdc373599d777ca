//! Wire types for the KServe v2 / Triton inference protocol.
//!
//! `inference` holds the prost messages and tonic service stubs generated from
//! `proto/`; [`DESCRIPTOR_SET`] is the encoded file descriptor set, used by gRPC
//! server reflection and to parse Triton `config.pbtxt` text protobuf.
#![allow(clippy::all)]

pub mod inference {
    tonic::include_proto!("inference");
}

/// Feast's online serving API (`feast.serving.ServingService`) and value messages.
pub mod feast {
    pub mod types {
        tonic::include_proto!("feast.types");
    }
    pub mod serving {
        tonic::include_proto!("feast.serving");
    }
}

/// Encoded `FileDescriptorSet` for `grpc_service.proto`, `model_config.proto` and Feast's serving API.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));

/// The descriptor pool over [`DESCRIPTOR_SET`].
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(DESCRIPTOR_SET).expect("descriptor set generated at build time is valid")
    })
}
