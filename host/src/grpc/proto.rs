//! Generated `chassis.v1` messages, client and server.
#![allow(
    missing_docs,
    unreachable_pub,
    reason = "generated code; documented in proto/chassis/v1/chassis.proto"
)]
#![allow(clippy::all, reason = "generated code")]

tonic::include_proto!("chassis.v1");

/// The encoded file descriptor set served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chassis_v1_descriptor");
