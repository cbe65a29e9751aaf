//! retcd's wire contract: etcd v3's protobuf messages, its gRPC services, and
//! its gRPC errors, byte for byte.
//!
//! Every etcd v3 client (etcdctl, Go `clientv3`, the Rust `etcd-client`
//! crate, Kubernetes) matches on package, service, method and message names,
//! on field numbers and on the text of error messages. This crate is the one
//! place where all of those are written down, so every other crate speaks the
//! same contract and a mistake shows up here, in one test, rather than in a
//! client in production.
//!
//! # Place in the data flow
//!
//! ```text
//! client --gRPC (etcdserverpb, v3lockpb, v3electionpb, grpc.health.v1)--> server::grpc::<service>
//!            validate, authenticate; errors leave as errors::EtcdError -> tonic::Status
//!   write:   etcdserverpb::InternalRaftRequest --encode--> raft propose --> WAL record
//!   apply:   WAL / Raft entry --decode--> InternalRaftRequest --> mvcc / lease / auth
//!   read:    mvcc --> mvccpb::KeyValue in RangeResponse; mvccpb::Event in WatchResponse
//! ```
//!
//! The WAL stores `InternalRaftRequest`s in etcd's own encoding, so the dump
//! tool decodes them with this crate too.
//!
//! # Modules
//!
//! - [`etcdserverpb`] holds the KV, Watch, Lease, Cluster, Maintenance and
//!   Auth services (clients in `*_client`, servers in `*_server`), their
//!   messages, and the Raft-internal `InternalRaftRequest`.
//! - [`mvccpb`] holds `KeyValue` and `Event`.
//! - [`authpb`] holds `User`, `Role` and `Permission`.
//! - [`v3lockpb`] and [`v3electionpb`] hold the Lock and Election services.
//! - [`health`] holds the standard `grpc.health.v1.Health` service.
//! - [`errors`] holds [`errors::EtcdError`], every gRPC error etcd sends, with
//!   its exact code and message.
//! - [`FILE_DESCRIPTOR_SET`] is the compiled schema, for reflection and the
//!   JSON gateway.
//!
//! # Conventions of the generated code
//!
//! Every protobuf `bytes` field is a [`bytes::Bytes`], so keys and values are
//! shared rather than copied. Field names are etcd's, converted to snake case
//! by prost: `TTL` becomes `ttl`, `ID` becomes `id`, and `peerURLs` becomes
//! `peer_ur_ls`. The proto names themselves are untouched because the JSON
//! gateway emits them.

pub mod errors;

// Generated code: its shape is fixed by the .proto files and prost, not by
// our style, so lints that would ask to change it are silenced here only.
macro_rules! generated_module {
    ($(#[$attr:meta])* $name:ident, $file:literal) => {
        $(#[$attr])*
        #[allow(clippy::all, clippy::pedantic)]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

generated_module!(
    /// etcd's client API (`etcdserverpb`): KV, Watch, Lease, Cluster,
    /// Maintenance and Auth, plus the Raft-internal request that the WAL holds.
    etcdserverpb,
    "etcdserverpb.rs"
);
generated_module!(
    /// MVCC records as clients see them (`mvccpb`).
    mvccpb,
    "mvccpb.rs"
);
generated_module!(
    /// Users, roles and permissions (`authpb`).
    authpb,
    "authpb.rs"
);
generated_module!(
    /// The Lock service (`v3lockpb`).
    v3lockpb,
    "v3lockpb.rs"
);
generated_module!(
    /// The Election service (`v3electionpb`).
    v3electionpb,
    "v3electionpb.rs"
);
generated_module!(
    /// Cluster membership records proposed through Raft (`membershippb`).
    membershippb,
    "membershippb.rs"
);
generated_module!(
    /// retcd's member-to-member protocol: Raft messages and snapshots (`peerpb`).
    peerpb,
    "peerpb.rs"
);
generated_module!(
    /// The standard gRPC health service (`grpc.health.v1`).
    health,
    "grpc.health.v1.rs"
);

/// The encoded `google.protobuf.FileDescriptorSet` of every `.proto` file in
/// this crate, source comments included. gRPC reflection and the JSON gateway
/// read the schema from it at run time.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/retcd_descriptor.bin"));
