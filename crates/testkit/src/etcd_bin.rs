//! etcd's own binaries, `etcd` and `etcdctl`, for the tests that compare retcd with them.
//!
//! Such a test cannot run without them, and a test that passes by skipping proves
//! nothing. So every one of them asks here, and the same rule holds for all: [`etcd`] and
//! [`etcdctl`] return the binary's path when it is installed. When it is not:
//! - with `CI=true` in the environment (as CI services set it), they panic, naming the
//!   binary and the Debian package that has it: a CI run never passes a differential test
//!   by skipping it (`.ci/run` installs the packages, and fails when it cannot);
//! - otherwise they print `skipping: <why> (apt-get install <package>)` and return `None`,
//!   and the test returns at once.
//!
//! Lookup: `etcd` is `$ETCD_BIN` when that is set (another build, say), else the first
//! `etcd` on `PATH`; `etcdctl` is the first on `PATH` (Debian's `etcd-server` and
//! `etcd-client` put them in `/usr/bin`). A file that is there but not executable counts
//! as missing. A binary that is there but fails to run is not a reason to skip: the test
//! that runs it fails. There is no override for etcdctl: etcdctl takes every `ETCDCTL_*`
//! variable of its environment as a flag and warns about the others, which would change
//! the transcripts the tests compare.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One of etcd's binaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Etcd,
    Etcdctl,
}

impl Binary {
    /// The file name.
    pub fn name(self) -> &'static str {
        match self {
            Binary::Etcd => "etcd",
            Binary::Etcdctl => "etcdctl",
        }
    }

    /// The Debian package that installs it.
    pub fn package(self) -> &'static str {
        match self {
            Binary::Etcd => "etcd-server",
            Binary::Etcdctl => "etcd-client",
        }
    }

    /// The environment variable that names the binary instead of the `PATH` lookup.
    pub fn override_var(self) -> Option<&'static str> {
        match self {
            Binary::Etcd => Some("ETCD_BIN"),
            Binary::Etcdctl => None,
        }
    }
}

/// The `etcd` binary, or `None` when the test is to skip (see the module docs; panics
/// instead under `CI=true`).
pub fn etcd() -> Option<PathBuf> {
    require(Binary::Etcd)
}

/// The `etcdctl` binary, or `None` when the test is to skip (see the module docs; panics
/// instead under `CI=true`).
pub fn etcdctl() -> Option<PathBuf> {
    require(Binary::Etcdctl)
}

/// `binary`'s path, or `None` after printing why the test skips; panics under `CI=true`
/// when it is missing.
pub fn require(binary: Binary) -> Option<PathBuf> {
    let override_value = binary.override_var().and_then(std::env::var_os);
    let found = locate(binary, override_value, std::env::var_os("PATH"));
    decide(binary, found, in_ci())
}

/// Whether this is a CI run: `CI=true`, as CI services (GitHub Actions, GitLab, ...) set it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Where `binary` is, given the value of its override variable and of `PATH`, or why it
/// is not there (a sentence naming what was looked at).
pub fn locate(
    binary: Binary,
    override_value: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf, String> {
    let name = binary.name();
    if let Some(value) = override_value {
        let file = PathBuf::from(&value);
        let var = binary.override_var().unwrap_or("the override");
        return if is_executable(&file) {
            Ok(file)
        } else {
            Err(format!(
                "{var}={} is not an executable file",
                file.display()
            ))
        };
    }
    let path = path.unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("{name} is not on PATH"))
}

/// What a test does with the outcome of [`locate`]: go on with the path, skip (printing
/// why), or, in CI, fail.
pub fn decide(binary: Binary, found: Result<PathBuf, String>, ci: bool) -> Option<PathBuf> {
    let package = binary.package();
    match found {
        Ok(path) => Some(path),
        Err(why) if ci => panic!(
            "{} is required when CI=true, but {why}: install Debian's {package} \
             (apt-get install {package})",
            binary.name()
        ),
        Err(why) => {
            eprintln!("skipping: {why} (apt-get install {package})");
            None
        }
    }
}

fn is_executable(file: &Path) -> bool {
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory holding `etcd` (executable) and `etcdctl` (not executable).
    fn bin_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, mode) in [("etcd", 0o755), ("etcdctl", 0o644)] {
            let file = dir.path().join(name);
            std::fs::write(&file, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        dir
    }

    #[test]
    fn finds_an_executable_on_path_and_skips_a_file_that_is_not() {
        let dir = bin_dir();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(
            locate(Binary::Etcd, None, Some(path.clone())),
            Ok(dir.path().join("etcd"))
        );
        assert_eq!(
            locate(Binary::Etcdctl, None, Some(path)),
            Err("etcdctl is not on PATH".to_string())
        );
        assert_eq!(
            locate(Binary::Etcdctl, None, None),
            Err("etcdctl is not on PATH".to_string())
        );
    }

    #[test]
    fn the_override_wins_and_is_never_silently_replaced() {
        let dir = bin_dir();
        let etcd = dir.path().join("etcd");
        assert_eq!(
            locate(Binary::Etcd, Some(etcd.clone().into_os_string()), None),
            Ok(etcd)
        );
        // A wrong override is missing, even with an etcd on PATH.
        let path = Some(dir.path().as_os_str().to_owned());
        assert_eq!(
            locate(Binary::Etcd, Some("/nonexistent/etcd".into()), path),
            Err("ETCD_BIN=/nonexistent/etcd is not an executable file".to_string())
        );
    }

    #[test]
    fn outside_ci_a_missing_binary_skips() {
        assert_eq!(
            decide(Binary::Etcd, Err("etcd is not on PATH".into()), false),
            None
        );
        let found = PathBuf::from("/usr/bin/etcd");
        assert_eq!(decide(Binary::Etcd, Ok(found.clone()), true), Some(found));
    }

    #[test]
    #[should_panic(
        expected = "etcdctl is required when CI=true, but etcdctl is not on PATH: install \
                    Debian's etcd-client (apt-get install etcd-client)"
    )]
    fn in_ci_a_missing_binary_fails() {
        decide(Binary::Etcdctl, Err("etcdctl is not on PATH".into()), true);
    }
}
