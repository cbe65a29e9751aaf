//! `--auto-compaction-mode` and `--auto-compaction-retention`, read by etcd's rules into
//! a [`Policy`] (`crate::compactor` acts on it).

use std::time::Duration;

pub const HOUR: Duration = Duration::from_secs(3600);

/// What to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Compact away what is older than this window.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// The policy the flags ask for, by etcd's rules (`parseCompactionRetention`): an empty
/// retention is 0; an integer is hours (periodic) or revisions (revision); anything else
/// is a Go duration; zero is off. Refused beyond etcd: a negative window (etcd runs a
/// compactor with a negative period) and a duration in revision mode (etcd takes its
/// nanoseconds as a revision count).
pub fn policy(mode: &str, retention: &str) -> Result<Option<Policy>, String> {
    let retention = if retention.is_empty() { "0" } else { retention };
    if let Ok(n) = retention.parse::<i64>()
        && n >= 0
    {
        return Ok(match (mode, n) {
            (_, 0) => None,
            ("revision", n) => Some(Policy::Revision(n)),
            ("periodic", n) => Some(Policy::Periodic(
                HOUR.saturating_mul(n.min(u32::MAX as i64) as u32),
            )),
            // etcd's embed config leaves the mode empty; an integer retention then
            // compacts nothing.
            _ => {
                tracing::warn!(
                    retention,
                    "--auto-compaction-mode is empty: auto compaction is off"
                );
                None
            }
        });
    }
    let nanos = super::value::parse_go_duration_nanos(retention)
        .map_err(|e| format!("error parsing CompactionRetention: {e}"))?;
    if nanos < 0 {
        return Err(format!(
            "--auto-compaction-retention {retention:?} is negative"
        ));
    }
    if nanos == 0 {
        return Ok(None);
    }
    match mode {
        "periodic" => Ok(Some(Policy::Periodic(Duration::from_nanos(nanos as u64)))),
        "revision" => Err(format!(
            "--auto-compaction-retention {retention:?}: revision mode takes a number of revisions"
        )),
        other => Err(format!("unsupported compaction mode {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: etcd's parsing of the flags, and refusals with a message.
    #[test]
    fn flags_parse_as_etcd() {
        let h = |n| Some(Policy::Periodic(HOUR * n));
        assert_eq!(policy("periodic", "0"), Ok(None));
        assert_eq!(policy("periodic", ""), Ok(None));
        assert_eq!(policy("periodic", "0s"), Ok(None));
        assert_eq!(policy("periodic", "1"), Ok(h(1)));
        assert_eq!(policy("periodic", "72"), Ok(h(72)));
        assert_eq!(
            policy("periodic", "30m"),
            Ok(Some(Policy::Periodic(Duration::from_secs(1800))))
        );
        assert_eq!(
            policy("periodic", "1.5h"),
            Ok(Some(Policy::Periodic(Duration::from_secs(5400))))
        );
        assert_eq!(policy("revision", "1000"), Ok(Some(Policy::Revision(1000))));
        assert_eq!(policy("", "5"), Ok(None));
        assert_eq!(
            policy("periodic", "abc"),
            Err("error parsing CompactionRetention: time: invalid duration \"abc\"".into())
        );
        assert_eq!(
            policy("periodic", "-1"),
            Err("error parsing CompactionRetention: time: missing unit in duration \"-1\"".into())
        );
        assert_eq!(
            policy("periodic", "-1h"),
            Err("--auto-compaction-retention \"-1h\" is negative".into())
        );
        assert_eq!(
            policy("revision", "1h"),
            Err(
                "--auto-compaction-retention \"1h\": revision mode takes a number of revisions"
                    .into()
            )
        );
    }
}
