//! Arbiter's public gRPC API (`arbiter.v1`), generated from the `.proto` files in
//! this crate's directory. Both sides use it: the coordinator serves
//! `Coordinator` and calls the participant services; the SDK does the reverse.

/// Package `arbiter.v1`: messages, enums, clients and servers.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("arbiter.v1");
}

/// The encoded `FileDescriptorSet` of `arbiter.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/arbiter_descriptor.bin"));
