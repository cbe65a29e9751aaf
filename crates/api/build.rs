//! Generates the wire types, clients and servers from `proto/`.
//!
//! `protox` parses the `.proto` files in pure Rust, so a machine with only
//! cargo can build this crate: no `protoc` binary is involved.

use std::{env, fs, path::PathBuf};

use prost::Message;

/// Every file we compile, relative to `proto/`. Imports are resolved against
/// the same root, so the paths here are also the import paths.
const PROTO_FILES: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "membershippb/membership.proto",
    "etcdserverpb/raft_internal.proto",
    "peerpb/peer.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "grpc/health/v1/health.proto",
];

const PROTO_ROOT: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{file}");
    }

    let files: Vec<String> = PROTO_FILES
        .iter()
        .map(|file| format!("{PROTO_ROOT}/{file}"))
        .collect();
    let fds = protox::compile(&files, [PROTO_ROOT])?;

    // Kept for gRPC reflection and the JSON gateway, which need the schema at
    // run time.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    // The member-to-member protocol (peerpb) is not part of the client-facing schema.
    let mut client_facing = fds.clone();
    client_facing.file.retain(|f| f.package() != "peerpb");
    fs::write(
        out_dir.join("retcd_descriptor.bin"),
        client_facing.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // `bytes::Bytes` for every `bytes` field: keys and values are decoded
        // without a copy out of the request buffer, and a value fanned out to
        // many watchers is shared instead of cloned.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
