//! Where values come from, and in what order, exactly as etcd's `etcdmain` decides.
//!
//! 1. The command line, with Go's `flag` package rules (syntax and type errors exit 2,
//!    and stop at the first one). `-h`/`--help` prints the help; parsing stops at the
//!    first argument that is not a flag, and any left over is an error (exit 1).
//! 2. `--version` prints the version and exits, whatever else is given.
//! 3. With `--config-file` (or else `ETCD_CONFIG_FILE`), the YAML file alone: every other
//!    flag and every `ETCD_*` variable is ignored, as etcd ignores them (with a warning
//!    naming them, where etcd is silent).
//! 4. Otherwise the flags, then every `ETCD_*` variable of a flag not on the command line
//!    (same value syntax; an error exits 1). A flag given both ways is fatal, an
//!    unknown `ETCD_*` variable a warning.
//! 5. etcd's after-rules (`--name` alone rewrites the default `--initial-cluster`;
//!    `--listen-client-urls` without `--advertise-client-urls` is an error; ...), then
//!    validation.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

use super::flags::{Disposition, Draft, FLAGS, Flag, Group, lookup};
use super::value::Value;
use super::{Config, ConfigError, DEFAULT_INITIAL_CLUSTER, Notice, SERVER_VERSION, Source};

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Serve with this configuration.
    Run(Box<Parsed>),
    /// Print this (the flags' help) and exit 0.
    Help(String),
    /// Print this (the version) and exit 0.
    Version(String),
}

/// A configuration ready to serve, and what to log about it once logging is set up.
#[derive(Debug)]
pub struct Parsed {
    pub config: Config,
    pub notices: Vec<Notice>,
}

/// Reads `args` (the first is the program's name) and `env` (the process environment).
pub fn load(args: &[OsString], env: &[(OsString, OsString)]) -> Result<Command, ConfigError> {
    let args = args
        .iter()
        .skip(1)
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| ConfigError::Syntax(format!("argument {a:?} is not valid UTF-8")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let env: Vec<(String, String)> = env
        .iter()
        .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v.to_string_lossy().into_owned())))
        .collect();
    parse(&args, &env)
}

/// [`load`] on strings: `args` without the program's name.
pub fn parse(args: &[String], env: &[(String, String)]) -> Result<Command, ConfigError> {
    if let Some(sub @ ("gateway" | "grpc-proxy")) = args.first().map(String::as_str) {
        return Err(ConfigError::Unsupported {
            flag: format!("`etcd {sub}`"),
            what: "etcd's proxy subcommands".into(),
            given: Source::CommandLine.to_string(),
            accepted: None,
        });
    }
    let Some(argv) = parse_argv(args)? else {
        return Ok(Command::Help(help()));
    };
    if let Some(first) = argv.rest.first() {
        return Err(ConfigError::Invalid(format!(
            "error verifying flags, '{first}' is not a valid flag. See 'retcd --help'."
        )));
    }
    if argv.last("version") == Some(&Value::Bool(true)) {
        return Ok(Command::Version(version()));
    }
    let config_file = match argv.last("config-file") {
        Some(Value::Str(path)) if !path.is_empty() => Some(path.clone()),
        _ => env
            .iter()
            .rev()
            .find(|(k, v)| k == "ETCD_CONFIG_FILE" && !v.is_empty())
            .map(|(_, v)| v.clone()),
    };
    let draft = match config_file {
        Some(path) => from_file(&path, &argv, env)?,
        None => from_flags_and_env(&argv, env)?,
    };
    finish(draft).map(|p| Command::Run(Box::new(p)))
}

/// The command line as Go's flag package reads it.
struct Argv {
    given: Vec<(&'static Flag, Value)>,
    /// Arguments after the flags (parsing stops at the first non-flag, or after `--`).
    rest: Vec<String>,
}

impl Argv {
    fn last(&self, name: &str) -> Option<&Value> {
        self.given
            .iter()
            .rev()
            .find(|(f, _)| f.name == name)
            .map(|(_, v)| v)
    }
}

/// Go's `FlagSet.Parse`; `None` for `-h`/`-help`/`--help`.
fn parse_argv(args: &[String]) -> Result<Option<Argv>, ConfigError> {
    let syntax = |s: String| Err(ConfigError::Syntax(s));
    let mut given = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg.len() < 2 || !arg.starts_with('-') {
            break;
        }
        let body = match arg.strip_prefix("--") {
            Some("") => {
                i += 1;
                break;
            }
            Some(rest) => rest,
            None => &arg[1..],
        };
        if body.starts_with('-') || body.starts_with('=') {
            return syntax(format!("bad flag syntax: {arg}"));
        }
        i += 1;
        let (name, inline) = match body.char_indices().skip(1).find(|(_, c)| *c == '=') {
            Some((at, _)) => (&body[..at], Some(&body[at + 1..])),
            None => (body, None),
        };
        let Some(flag) = lookup(name) else {
            if name == "help" || name == "h" {
                return Ok(None);
            }
            return syntax(format!("flag provided but not defined: -{name}"));
        };
        let value = if flag.kind.is_bool() {
            let text = inline.unwrap_or("true");
            match flag.parse(text) {
                Ok(v) => v,
                Err(e) if inline.is_some() => {
                    return syntax(format!("invalid boolean value {text:?} for -{name}: {e}"));
                }
                Err(e) => return syntax(format!("invalid boolean flag {name}: {e}")),
            }
        } else {
            let text = match inline {
                Some(t) => t.to_string(),
                None if i < args.len() => {
                    i += 1;
                    args[i - 1].clone()
                }
                None => return syntax(format!("flag needs an argument: -{name}")),
            };
            match flag.parse(&text) {
                Ok(v) => v,
                Err(e) => return syntax(format!("invalid value {text:?} for flag -{name}: {e}")),
            }
        };
        given.push((flag, value));
    }
    Ok(Some(Argv {
        given,
        rest: args[i..].to_vec(),
    }))
}

/// etcd's `configFromCmdLine`: the flags in order, then the environment.
fn from_flags_and_env(argv: &Argv, env: &[(String, String)]) -> Result<Draft, ConfigError> {
    let mut d = Draft::new(Config::default());
    for (flag, value) in &argv.given {
        d.apply(flag, value, &Source::CommandLine)?;
    }
    apply_env(&mut d, argv, env)?;
    // etcd drops the default advertise URLs when listen URLs were given, so that
    // validation asks for them (no v2 proxy mode here to excuse their absence).
    if d.set.contains("listen-client-urls") && !d.set.contains("advertise-client-urls") {
        d.c.advertise_client_urls.clear();
    }
    Ok(d)
}

/// etcd's `flags.SetFlagsFromEnv` with its `verifyEnv`.
fn apply_env(d: &mut Draft, argv: &Argv, env: &[(String, String)]) -> Result<(), ConfigError> {
    let on_command_line: BTreeSet<String> = argv.given.iter().map(|(f, _)| f.env()).collect();
    let values: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut by_name: Vec<&'static Flag> = FLAGS.iter().collect();
    by_name.sort_by_key(|f| f.name);
    let mut used = BTreeSet::new();
    let mut first_error = None;
    for flag in by_name {
        let key = flag.env();
        // etcd 3.5 sets ETCD_VERSION aside before reading the environment.
        if flag.name == "version" || on_command_line.contains(&key) {
            continue;
        }
        let Some(text) = values.get(key.as_str()).filter(|v| !v.is_empty()) else {
            continue;
        };
        used.insert(key.clone());
        let applied = flag
            .parse(text)
            .map_err(|e| ConfigError::Invalid(format!("invalid value {text:?} for {key}: {e}")))
            .and_then(|v| d.apply(flag, &v, &Source::Env(key.clone())));
        match applied {
            Ok(()) => d.notices.push(Notice::info(format!(
                "recognized and used environment variable {key}"
            ))),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    for (key, _) in env {
        if used.contains(key) {
            continue;
        }
        match key.as_str() {
            "ETCD_VERSION" => d.notices.push(Notice::warn(
                "cannot set special environment variable ETCD_VERSION; ignoring it",
            )),
            "ETCD_UNSUPPORTED_ARCH" => d.notices.push(Notice::info(
                "ETCD_UNSUPPORTED_ARCH is not needed: retcd supports every architecture it builds for",
            )),
            k if on_command_line.contains(k) => {
                return Err(ConfigError::Invalid(format!(
                    "conflicting environment variable {k:?} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
                )));
            }
            k if k.starts_with("ETCD_") => {
                d.notices.push(Notice::warn(format!("unrecognized environment variable {k}")));
            }
            _ => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// etcd's `configFromFile`: the file alone, over etcd's defaults.
fn from_file(path: &str, argv: &Argv, env: &[(String, String)]) -> Result<Draft, ConfigError> {
    let mut d = super::yaml::load(path)?;
    d.notices.insert(
        0,
        Notice::info(format!(
            "loaded server configuration from {path}; other configuration command line flags and environment variables will be ignored if provided"
        )),
    );
    let flags: BTreeSet<String> = argv
        .given
        .iter()
        .filter(|(f, _)| !matches!(f.name, "config-file" | "version"))
        .map(|(f, _)| format!("--{}", f.name))
        .collect();
    if !flags.is_empty() {
        let list = flags.into_iter().collect::<Vec<_>>().join(", ");
        d.notices.push(Notice::warn(format!(
            "--config-file is in use, so these flags are ignored, as etcd ignores them: {list}"
        )));
    }
    let vars: BTreeSet<&str> = env
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("ETCD_") && *k != "ETCD_CONFIG_FILE")
        .collect();
    if !vars.is_empty() {
        let list = vars.into_iter().collect::<Vec<_>>().join(", ");
        d.notices.push(Notice::warn(format!(
            "--config-file is in use, so these variables are ignored, as etcd ignores them: {list}"
        )));
    }
    Ok(d)
}

/// etcd's rules after the sources are read, then validation.
fn finish(mut d: Draft) -> Result<Parsed, ConfigError> {
    let invalid = |s: String| Err(ConfigError::Invalid(s));
    if let Some(e) = d.errors.first() {
        return invalid(e.clone());
    }
    if d.set
        .contains("experimental-watch-progress-notify-interval")
        && d.set.contains("watch-progress-notify-interval")
    {
        return invalid(
            "cannot set --experimental-watch-progress-notify-interval and --watch-progress-notify-interval at the same time, please use --watch-progress-notify-interval only".into(),
        );
    }
    if let Some(both) = d.via_gate.intersection(&d.set).next() {
        return invalid(format!(
            "cannot specify both --{both} and its feature gate in --feature-gates; use --feature-gates only"
        ));
    }
    if d.lease_checkpoint_persist && !d.lease_checkpoint {
        return invalid(
            "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint".into(),
        );
    }
    resolve_log_output(&mut d)?;
    if d.debug {
        d.notices.push(Notice::warn(
            "--debug is deprecated: use --log-level=debug (logging at debug level)",
        ));
        d.c.log_level = "debug".into();
    }
    // `--name` alone names this member in the default initial cluster (an empty name
    // as "default", so that etcd's "couldn't find local name" follows).
    if d.c.name != "default" && d.c.initial_cluster == DEFAULT_INITIAL_CLUSTER {
        let name = if d.c.name.is_empty() {
            "default"
        } else {
            &d.c.name
        };
        d.c.initial_cluster =
            d.c.initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{name}={u}"))
                .collect::<Vec<_>>()
                .join(",");
    }
    d.c.validate()?;
    let mut notices = d.notices;
    notices.extend(d.c.advisories());
    Ok(Parsed {
        config: d.c,
        notices,
    })
}

/// etcd 3.4's `--log-output` against `--log-outputs`: the longer list wins; two equal
/// lengths above one are an error; a lone `--log-output` stands in for the other.
fn resolve_log_output(d: &mut Draft) -> Result<(), ConfigError> {
    let Some(old) = d.log_output.take() else {
        return Ok(());
    };
    d.notices.push(Notice::warn(
        "'--log-output' flag has been deprecated! Please use '--log-outputs'!",
    ));
    if !d.set.contains("log-outputs") || old.len() > d.c.log_outputs.len() {
        d.c.log_outputs = old;
    } else if old.len() == d.c.log_outputs.len() && old != d.c.log_outputs {
        return Err(ConfigError::Invalid(
            "both '--log-output' and '--log-outputs' are set; only set '--log-outputs'".into(),
        ));
    }
    Ok(())
}

/// The lines `--version` prints.
fn version() -> String {
    format!(
        "retcd Version: {}\netcd API Version: {SERVER_VERSION}\nOS/Arch: {}/{}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// `--help`, from the table: every flag with its default and, for those retcd does not
/// act on, what it does instead.
pub fn help() -> String {
    let mut out = String::from(
        "Usage:\n\n  retcd [flags]\n    Start a retcd member: etcd's flags and ETCD_* variables, etcd's defaults.\n  retcd --version\n  retcd -h | --help\n\n\
         Flags take Go's syntax: -flag or --flag, --flag=value or --flag value (bools only\n\
         --flag or --flag=false). ETCD_<FLAG> variables set flags not on the command line.\n",
    );
    let sections = [
        (Group::Member, "Member"),
        (Group::Clustering, "Clustering"),
        (Group::Security, "Security"),
        (Group::Auth, "Auth"),
        (Group::Logging, "Logging"),
        (Group::Monitoring, "Profiling and Monitoring"),
        (Group::Proxy, "v2 Proxy (not supported by retcd)"),
        (Group::Experimental, "Experimental"),
        (Group::Unsafe, "Unsafe"),
        (Group::Etcd36, "etcd 3.6"),
    ];
    for (group, title) in sections {
        out.push_str(&format!("\n{title}:\n"));
        for f in FLAGS.iter().filter(|f| f.group == group) {
            out.push_str(&format!(
                "\n  --{} '{}'\n      {}\n",
                f.name, f.default, f.help
            ));
            match f.disposition {
                Disposition::Accepted { why } => {
                    out.push_str(&format!("      retcd: any value; {why}.\n"))
                }
                Disposition::Refused { what, .. } => out.push_str(&format!(
                    "      retcd: not supported yet ({what}); only the default is accepted.\n"
                )),
                _ => {}
            }
        }
    }
    let legacy: Vec<String> = FLAGS
        .iter()
        .filter(|f| f.group == Group::Legacy)
        .map(|f| format!("--{}", f.name))
        .collect();
    out.push_str(&format!(
        "\nIgnored legacy flags (accepted with a warning, as etcd does):\n  {}\n",
        legacy.join(" ")
    ));
    out
}
