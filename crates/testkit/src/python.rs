//! A Python interpreter with python-etcd3 for the tests that drive retcd (and etcd) from
//! python-etcd3, the most used Python client, as a Python user would.
//!
//! The same rule as [`crate::etcd_bin`]: [`etcd3`] returns the interpreter when it can
//! import `etcd3` and `grpc`. When it cannot, under `CI=true` it panics with what to
//! install (`.ci/run` installs the pinned packages into a virtual environment and names its
//! interpreter in `RETCD_TEST_PYTHON`); elsewhere it prints `skipping: <why>` and returns
//! `None`, and the test returns at once.
//!
//! Lookup: `$RETCD_TEST_PYTHON` when set, else the first `python3` on `PATH`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The variable that names the interpreter instead of the `PATH` lookup.
pub const OVERRIDE_VAR: &str = "RETCD_TEST_PYTHON";

/// What to install, as `.ci/run` installs it (python-etcd3 0.12's generated code needs a
/// protobuf runtime older than 4).
pub const PACKAGES: &str = "etcd3==0.12.0 protobuf==3.20.3";

/// A Python that imports python-etcd3, or `None` when the test is to skip (panics
/// instead under `CI=true`).
pub fn etcd3() -> Option<PathBuf> {
    let python = std::env::var_os(OVERRIDE_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let found = match Command::new(&python)
        .args(["-c", "import etcd3, grpc"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(python),
        Ok(out) => Err(format!(
            "{} cannot import etcd3: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Err(format!("cannot run {}: {e}", python.display())),
    };
    match found {
        Ok(python) => Some(python),
        Err(why) if crate::etcd_bin::in_ci() => panic!(
            "python-etcd3 is required when CI=true, but {why}: pip install {PACKAGES} \
             and name the interpreter in {OVERRIDE_VAR}"
        ),
        Err(why) => {
            eprintln!("skipping: {why} (pip install {PACKAGES}; {OVERRIDE_VAR}=/path/to/python)");
            None
        }
    }
}
