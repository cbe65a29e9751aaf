//! The fixed set of buckets (tables) the state machine stores its data in.

/// A named, ordered map from byte keys to byte values inside the backend.
///
/// The names are etcd's bucket names so that dumps and docs read the same. The numeric
/// [`Bucket::id`] is what snapshot images record; it is part of the on-disk format
/// (`docs/storage-format.md`) and must never be reused for another bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    /// MVCC history: revision key (`docs/storage-format.md`) -> encoded key-value record.
    Key,
    /// Bookkeeping of the apply layer and MVCC: consistent index, term, compaction revisions.
    Meta,
    /// Leases: lease id -> lease record.
    Lease,
    /// Active alarms (NOSPACE, CORRUPT).
    Alarm,
    /// Auth enabled flag and auth revision.
    Auth,
    /// Auth users.
    AuthUsers,
    /// Auth roles.
    AuthRoles,
    /// Cluster members.
    Members,
    /// Ids of removed members.
    MembersRemoved,
    /// Cluster-wide settings such as the cluster version.
    Cluster,
}

impl Bucket {
    /// Number of buckets.
    pub const COUNT: usize = 10;

    /// Every bucket, in id order.
    pub const ALL: [Bucket; Bucket::COUNT] = [
        Bucket::Key,
        Bucket::Meta,
        Bucket::Lease,
        Bucket::Alarm,
        Bucket::Auth,
        Bucket::AuthUsers,
        Bucket::AuthRoles,
        Bucket::Members,
        Bucket::MembersRemoved,
        Bucket::Cluster,
    ];

    /// etcd's name for the bucket; also the redb table name.
    pub const fn name(self) -> &'static str {
        match self {
            Bucket::Key => "key",
            Bucket::Meta => "meta",
            Bucket::Lease => "lease",
            Bucket::Alarm => "alarm",
            Bucket::Auth => "auth",
            Bucket::AuthUsers => "authUsers",
            Bucket::AuthRoles => "authRoles",
            Bucket::Members => "members",
            Bucket::MembersRemoved => "members_removed",
            Bucket::Cluster => "cluster",
        }
    }

    /// Stable numeric id used in snapshot images; equal to the position in [`Bucket::ALL`].
    pub const fn id(self) -> u8 {
        match self {
            Bucket::Key => 0,
            Bucket::Meta => 1,
            Bucket::Lease => 2,
            Bucket::Alarm => 3,
            Bucket::Auth => 4,
            Bucket::AuthUsers => 5,
            Bucket::AuthRoles => 6,
            Bucket::Members => 7,
            Bucket::MembersRemoved => 8,
            Bucket::Cluster => 9,
        }
    }

    /// The bucket with the given id, if any.
    pub fn from_id(id: u8) -> Option<Bucket> {
        Bucket::ALL.get(usize::from(id)).copied()
    }

    /// Position of the bucket in per-bucket arrays.
    pub(crate) const fn index(self) -> usize {
        self.id() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_positions_and_names_are_unique() {
        for (position, bucket) in Bucket::ALL.iter().enumerate() {
            assert_eq!(usize::from(bucket.id()), position, "{bucket:?}");
            assert_eq!(Bucket::from_id(bucket.id()), Some(*bucket));
        }
        assert_eq!(Bucket::from_id(Bucket::COUNT as u8), None);
        let mut names: Vec<&str> = Bucket::ALL.iter().map(|b| b.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Bucket::COUNT);
    }
}
