//! The configuration's tests: the flag table walked row by row through every source
//! (here), Go's flag-package rules and etcd's validation (`rules.rs`), the `ETCD_*`
//! variables and the config file (`sources.rs`), kubeadm's command lines
//! (`kubeadm.rs`), and Go's value syntaxes (`values.rs`).

mod kubeadm;
mod rules;
mod sources;
mod values;

use std::collections::BTreeSet;

use super::flags::{Disposition, FLAGS, Flag, GATES, Shape, lookup};
use super::value::{Kind, parse_go_duration_nanos};
use super::{Command, Config, ConfigError, Level, Parsed, parse};

pub(super) fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Parsed, ConfigError> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match parse(&args, &env)? {
        Command::Run(p) => Ok(*p),
        other => panic!("expected a configuration, got {other:?}"),
    }
}

pub(super) fn ok(args: &[&str]) -> Config {
    run(args, &[])
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .config
}

pub(super) fn err(args: &[&str], env: &[(&str, &str)]) -> ConfigError {
    match run(args, env) {
        Ok(p) => panic!("{args:?} {env:?} should fail, parsed {:?}", p.config),
        Err(e) => e,
    }
}

/// A valid value that differs from etcd's default, and the other flags it needs.
fn sample(f: &Flag) -> (String, Vec<(&'static str, &'static str)>) {
    let alone = |v: &str| (v.to_string(), Vec::new());
    match f.name {
        "initial-cluster" => alone("default=http://localhost:2380,b=http://127.0.0.1:9"),
        "election-timeout" => alone("2000"),
        "auth-token" => alone("jwt,priv-key=/k,sign-method=RS256"),
        "log-level" => alone("debug"),
        "cipher-suites" => alone("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
        "auto-compaction-mode" => alone("revision"),
        "auto-compaction-retention" => alone("1"),
        "metrics" => alone("extensive"),
        "logger" => alone("capnslog"),
        "feature-gates" => alone("InitialCorruptCheck=true"),
        "listen-client-urls" => (
            "http://127.0.0.1:12379".into(),
            vec![("advertise-client-urls", "http://127.0.0.1:12379")],
        ),
        "initial-advertise-peer-urls" => (
            "http://127.0.0.1:12380".into(),
            vec![("initial-cluster", "default=http://127.0.0.1:12380")],
        ),
        "experimental-enable-lease-checkpoint-persist" => (
            "true".into(),
            vec![("experimental-enable-lease-checkpoint", "true")],
        ),
        _ => alone(&match f.kind {
            Kind::Bool => if f.default == "true" { "false" } else { "true" }.to_string(),
            Kind::Uint | Kind::Millis | Kind::Uint32 | Kind::Int => "7".into(),
            Kind::Duration => "7s".into(),
            Kind::Str | Kind::List | Kind::Set => "x".into(),
            Kind::Urls { .. } => "http://127.0.0.1:12999".into(),
            Kind::Enum(words) => words.iter().find(|w| **w != f.default).unwrap().to_string(),
            Kind::Ignored => "1".into(),
            Kind::Gates => unreachable!("feature-gates has its own sample"),
        }),
    }
}

/// The flag's value as its config-file key holds it.
fn yaml_value(f: &Flag, text: &str) -> String {
    match (f.shape, f.kind) {
        (Shape::List | Shape::ListOrScalar, _) => {
            let items: Vec<String> = text.split(',').map(|s| format!("{s:?}")).collect();
            format!("[{}]", items.join(", "))
        }
        (_, Kind::Bool | Kind::Uint | Kind::Millis | Kind::Uint32 | Kind::Int) => text.to_string(),
        (_, Kind::Duration) => parse_go_duration_nanos(text).unwrap().to_string(),
        _ => format!("{text:?}"),
    }
}

/// A config file setting `pairs` (flag name, flag text), nested keys in their blocks.
pub(super) fn yaml_file(dir: &std::path::Path, pairs: &[(&Flag, String)]) -> String {
    let mut top = String::new();
    let mut blocks: Vec<(String, String)> = Vec::new();
    for (f, text) in pairs {
        let key = f.yaml_key().expect("a key");
        let value = yaml_value(f, text);
        match key.split_once('.') {
            Some((block, sub)) => match blocks.iter_mut().find(|(b, _)| b == block) {
                Some((_, body)) => body.push_str(&format!("  {sub}: {value}\n")),
                None => blocks.push((block.to_string(), format!("  {sub}: {value}\n"))),
            },
            None => top.push_str(&format!("{key}: {value}\n")),
        }
    }
    for (block, body) in blocks {
        top.push_str(&format!("{block}:\n{body}"));
    }
    let path = dir.join(format!("c{}.yml", top.len()));
    std::fs::write(&path, &top).unwrap();
    path.display().to_string()
}

/// Checks one outcome: acted on (the field differs from the default's), accepted (a
/// notice names the flag), ignored (etcd's warning) or refused (an error naming the flag
/// and the source). Never silently ignored.
fn check(
    f: &Flag,
    how: &str,
    outcome: Result<Parsed, ConfigError>,
    baseline: &Config,
    source_words: &str,
) {
    let name = f.name;
    match (f.disposition, outcome) {
        (Disposition::On { read, .. }, Ok(p)) => assert_ne!(
            read(&p.config),
            read(baseline),
            "--{name} {how}: acted on, yet its field kept the default"
        ),
        (Disposition::Accepted { .. }, Ok(p)) => assert!(
            p.notices.iter().any(|n| n
                .message
                .contains(&format!("--{name} given {source_words}"))),
            "--{name} {how}: accepted without a notice: {:?}",
            p.notices
        ),
        (Disposition::Ignored, Ok(p)) => assert!(
            p.notices.iter().any(|n| n.level == Level::Warn
                && n.message == format!("flag \"-{name}\" is no longer supported - ignoring.")),
            "--{name} {how}: ignored without etcd's warning: {:?}",
            p.notices
        ),
        (Disposition::Refused { .. }, Err(e @ ConfigError::Unsupported { .. })) => {
            let text = e.to_string();
            assert!(
                text.contains(&format!("--{name} (")),
                "--{name} {how}: {text}"
            );
            assert!(
                text.contains(source_words),
                "--{name} {how}: {text} should say {source_words}"
            );
        }
        (Disposition::Gates, Ok(p)) => assert!(p.config.initial_corrupt_check, "{how}"),
        (_, outcome) => panic!("--{name} {how}: unexpected outcome {outcome:?}"),
    }
}

// Goal: the table holds every etcd 3.4 and 3.5 flag, the 15 ignored legacy flags and
// the two etcd 3.6 flags kubeadm passes, once each, with distinct variables; every
// default parses, and a refused flag accepts its default.
#[test]
fn the_table_is_complete_and_consistent() {
    assert_eq!(FLAGS.len(), 116 + 15 + 2);
    let names: BTreeSet<&str> = FLAGS.iter().map(|f| f.name).collect();
    assert_eq!(names.len(), FLAGS.len(), "no flag twice");
    let envs: BTreeSet<String> = FLAGS.iter().map(Flag::env).collect();
    assert_eq!(envs.len(), FLAGS.len());
    assert_eq!(
        lookup("test.coverprofile").unwrap().env(),
        "ETCD_TEST.COVERPROFILE"
    );
    let ignored = FLAGS
        .iter()
        .filter(|f| matches!(f.disposition, Disposition::Ignored))
        .count();
    assert_eq!(ignored, 15);
    for f in FLAGS {
        f.kind
            .parse(f.default)
            .unwrap_or_else(|e| panic!("--{}'s default: {e}", f.name));
        if matches!(f.disposition, Disposition::Refused { .. }) {
            let arg = format!("--{}={}", f.name, f.default);
            ok(&[arg.as_str()]);
        }
    }
    for g in GATES {
        if let Some(flag) = g.flag {
            assert!(lookup(flag).is_some(), "gate {} names --{flag}", g.name);
        }
    }
}

// Goal (issue 14): every flag, given as a flag, as its ETCD_* variable and as its
// config-file key, is acted on, accepted with a notice, ignored with etcd's warning, or
// refused by name; none is silently ignored.
#[test]
fn every_flag_from_every_source_is_acted_on_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let flag_default = Config::default();
    let file_default = Config {
        auto_compaction_mode: String::new(),
        ..Config::default()
    };
    for f in FLAGS
        .iter()
        .filter(|f| !matches!(f.disposition, Disposition::Special))
    {
        let (value, companions) = sample(f);
        let mut args: Vec<String> = companions
            .iter()
            .map(|(n, v)| format!("--{n}={v}"))
            .collect();
        args.push(format!("--{}={value}", f.name));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check(
            f,
            "as a flag",
            run(&args, &[]),
            &flag_default,
            "on the command line",
        );

        let mut env: Vec<(String, String)> = companions
            .iter()
            .map(|(n, v)| (lookup(n).unwrap().env(), v.to_string()))
            .collect();
        env.push((f.env(), value.clone()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        check(
            f,
            "as a variable",
            run(&[], &env),
            &flag_default,
            &format!("as {}", f.env()),
        );

        let Some(key) = f.yaml_key() else { continue };
        let mut pairs: Vec<(&Flag, String)> = companions
            .iter()
            .map(|(n, v)| (lookup(n).unwrap(), v.to_string()))
            .collect();
        pairs.push((f, value.clone()));
        let file = yaml_file(dir.path(), &pairs);
        let arg = format!("--config-file={file}");
        let words = format!("as key {key:?} in {file}");
        check(
            f,
            "in a config file",
            run(&[arg.as_str()], &[]),
            &file_default,
            &words,
        );
    }
}

// Goal: each etcd 3.6 feature gate does what its etcd 3.5 flag does (InitialCorruptCheck
// is acted on), a gate retcd lacks is refused by its name, an unknown one fails as
// Kubernetes' parser fails, and a gate with its old flag is an error, as in etcd 3.6.
#[test]
fn feature_gates_follow_their_flags() {
    assert!(ok(&["--feature-gates=InitialCorruptCheck=true"]).initial_corrupt_check);
    assert!(!ok(&["--feature-gates=InitialCorruptCheck=false"]).initial_corrupt_check);
    for gate in [
        "StopGRPCServiceOnDefrag",
        "CompactHashCheck",
        "DistributedTracing",
        "SetMemberLocalAddr",
        "AllAlpha",
    ] {
        let arg = format!("--feature-gates=InitialCorruptCheck=true,{gate}=true");
        let text = err(&[arg.as_str()], &[]).to_string();
        assert!(text.contains(&format!("feature gate {gate}")), "{text}");
        assert!(
            text.contains("in --feature-gates on the command line"),
            "{text}"
        );
        let off = format!("--feature-gates={gate}=false");
        ok(&[off.as_str()]);
    }
    let p = run(
        &["--feature-gates=LeaseCheckpoint=true,TxnModeWriteWithSharedBuffer=false"],
        &[],
    )
    .unwrap();
    assert_eq!(
        p.notices.iter().filter(|n| n.level == Level::Info).count(),
        2,
        "{:?}",
        p.notices
    );
    let e = err(&["--feature-gates=Bogus=true"], &[]);
    assert_eq!(
        e.to_string(),
        "invalid value \"Bogus=true\" for flag -feature-gates: unrecognized feature gate: Bogus"
    );
    assert_eq!(e.exit_code(), 2);
    let e = err(
        &[
            "--experimental-initial-corrupt-check",
            "--feature-gates=InitialCorruptCheck=true",
        ],
        &[],
    );
    assert!(
        e.to_string()
            .contains("cannot specify both --experimental-initial-corrupt-check"),
        "{e}"
    );
    let e = err(
        &[
            "--experimental-watch-progress-notify-interval=5s",
            "--watch-progress-notify-interval=5s",
        ],
        &[],
    );
    assert!(
        e.to_string()
            .starts_with("cannot set --experimental-watch-progress-notify-interval and"),
        "{e}"
    );
    let e = err(&["--feature-gates=LeaseCheckpointPersist=true"], &[]);
    assert!(
        e.to_string()
            .contains("requires experimental-enable-lease-checkpoint"),
        "{e}"
    );
}

// Goal: the walk's checker fails on a flag that is silently ignored, or on a refusal
// that never comes (a checker that cannot fail proves nothing).
#[test]
fn the_walk_catches_a_silently_ignored_flag() {
    let metrics = lookup("metrics").unwrap();
    let reads_another_field = Flag {
        disposition: Disposition::On {
            set: |_, _| {},
            read: |c| format!("{:?}", c.name),
        },
        ..*metrics
    };
    let caught = std::panic::catch_unwind(|| {
        check(
            &reads_another_field,
            "as a flag",
            run(&["--metrics=extensive"], &[]),
            &Config::default(),
            "on the command line",
        )
    });
    assert!(
        caught.is_err(),
        "a flag whose value lands nowhere is caught"
    );
    let refused = Flag {
        disposition: Disposition::Refused {
            what: "x",
            also_default: None,
        },
        ..*metrics
    };
    let caught = std::panic::catch_unwind(|| {
        check(
            &refused,
            "as a flag",
            run(&["--metrics=extensive"], &[]),
            &Config::default(),
            "on the command line",
        )
    });
    assert!(caught.is_err(), "a refusal that does not come is caught");
    check(
        metrics,
        "as a flag",
        run(&["--metrics=extensive"], &[]),
        &Config::default(),
        "on the command line",
    );
}
