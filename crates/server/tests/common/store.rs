//! What a server holds, read whole for comparison: every key with its revisions,
//! version and lease; every lease id. For tests that compare two servers (a snapshot's
//! source and the member restored from it, say).

use etcd_client::GetOptions;

/// A key as a comparison sees it: key, value, create and mod revisions, version, lease.
pub type KeyFields = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// Every key at the current revision (linearizable), however many: the read may be
/// larger than tonic's default 4 MiB message.
pub async fn all_keys(c: &mut etcd_client::Client) -> Vec<KeyFields> {
    c.kv_client()
        .max_decoding_message_size(256 << 20)
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect()
}

/// Every lease id, sorted.
pub async fn lease_ids(c: &mut etcd_client::Client) -> Vec<i64> {
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    ids
}
