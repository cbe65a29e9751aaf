//! Proposals committed per second in a 3-node in-memory cluster: the cost of the
//! consensus core itself (no disk, no network), measured through the same host loop the
//! tests use. Run: `cargo bench -p retcd-raft --bench propose`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use retcd_raft::sim::Network;

const BATCH: u64 = 1000;

fn cluster() -> Network {
    let mut net = Network::new(&[1, 2, 3], |_| {});
    net.campaign(1);
    assert_eq!(net.leader(), Some(1));
    net
}

fn propose_and_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_3_nodes");
    group.throughput(Throughput::Elements(BATCH));
    let payload = vec![7u8; 128];
    group.bench_function("propose_commit_apply_1000x128B", |b| {
        b.iter_batched(
            cluster,
            |mut net| {
                let start = net.committed(1);
                for _ in 0..BATCH {
                    // Proposals accumulate in one Ready and replicate as a batch, as they
                    // do under load in the server.
                    net.raw(1)
                        .propose(payload.clone().into())
                        .expect("leader accepts");
                }
                net.drain();
                assert_eq!(net.committed(1), start + BATCH);
                net
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("propose_commit_apply_one_at_a_time_128B", |b| {
        b.iter_batched(
            cluster,
            |mut net| {
                for _ in 0..BATCH {
                    net.propose(1, &payload).expect("leader accepts");
                }
                net
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, propose_and_commit);
criterion_main!(benches);
