//! The etcd v3 gRPC API.

pub mod codec;
pub mod pb;
