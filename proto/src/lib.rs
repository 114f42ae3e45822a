//! Arbiter's public gRPC API (`arbiter.v1`), generated from the `.proto` files in
//! this crate's directory. Both sides use it: the coordinator serves
//! `Coordinator` and calls the participant services; the SDK does the reverse.

/// Package `arbiter.v1`: messages, enums, clients and servers.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("arbiter.v1");
}
