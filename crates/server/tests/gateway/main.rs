//! The HTTP/JSON gateway's tests (issue 17), in one test binary (each binary links the
//! whole server, which CI pays for): [`vs_etcd`], the same HTTP session against etcd
//! 3.4.23 and retcd; [`streams`], watch delivery, stalled streams' memory, hostile
//! requests, prefixes and access rules; [`patroni`], Patroni with PostgreSQL on retcd.

#[path = "../common/mod.rs"]
mod common;

mod patroni;
mod streams;
mod vs_etcd;
