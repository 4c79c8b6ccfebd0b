//! The etcd v3 gRPC API.

pub mod pb;
