//! etcd's checks on a parsed configuration (`embed.Config.Validate`, and the start-up
//! checks that need no file or socket), with etcd's messages. Files named by the TLS
//! flags are not opened here: a missing one fails at server start, as in etcd.

use std::collections::BTreeSet;

use super::value::{GoUrl, check_bind_url, parse_go_duration_nanos};
use super::{Config, ConfigError, Notice};

/// etcd's largest election timeout.
const MAX_ELECTION_MS: u64 = 50_000;
/// etcd warns above this backend quota: 8 GiB.
const MAX_RECOMMENDED_QUOTA_BYTES: i64 = 8 * 1024 * 1024 * 1024;
/// etcd warns above this request size: 10 MiB.
const MAX_RECOMMENDED_REQUEST_BYTES: u64 = 10 * 1024 * 1024;

/// Go's TLS cipher suite names (`tls.CipherSuites()` and `tls.InsecureCipherSuites()`),
/// plus the two names etcd 3.4 also accepted.
const CIPHER_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// JWT signing methods etcd's `--auth-token=jwt,sign-method=...` knows.
const JWT_METHODS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

impl Config {
    /// Checks the values with etcd's rules and messages.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(ConfigError::Invalid)
    }

    fn check(&self) -> Result<(), String> {
        for url in self
            .listen_peer_urls
            .iter()
            .chain(&self.listen_client_urls)
            .chain(&self.listen_client_http_urls)
            .chain(&self.listen_metrics_urls)
        {
            check_bind_url(url)?;
        }
        for url in self
            .initial_advertise_peer_urls
            .iter()
            .chain(&self.advertise_client_urls)
        {
            let u = GoUrl::parse(url)?;
            if u.split_host_port().is_some_and(|(host, _)| host.is_empty()) {
                return Err(format!("unexpected empty host ({url})"));
            }
        }
        if !matches!(self.initial_cluster_state.as_str(), "new" | "existing") {
            return Err(format!(
                "unexpected clusterState {:?}",
                self.initial_cluster_state
            ));
        }
        if self.heartbeat_interval_ms == 0 {
            return Err("--heartbeat-interval must be >0 (set to 0ms)".into());
        }
        if self.election_timeout_ms == 0 {
            return Err("--election-timeout must be >0 (set to 0ms)".into());
        }
        if 5 * self.heartbeat_interval_ms > self.election_timeout_ms {
            return Err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_ms > MAX_ELECTION_MS {
            return Err(format!(
                "--election-timeout[{}ms] is too long, and should be set less than {MAX_ELECTION_MS}ms",
                self.election_timeout_ms
            ));
        }
        if !self.listen_client_urls.is_empty() && self.advertise_client_urls.is_empty() {
            return Err(
                "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                    .into(),
            );
        }
        if !matches!(
            self.auto_compaction_mode.as_str(),
            "" | "periodic" | "revision"
        ) {
            return Err(format!(
                "unknown auto-compaction-mode {:?}",
                self.auto_compaction_mode
            ));
        }
        super::compaction::policy(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        if self.max_request_bytes > i32::MAX as u64 {
            return Err(format!(
                "--max-request-bytes {} is out of range",
                self.max_request_bytes
            ));
        }
        if self.logger != "zap" {
            return Err(format!("unknown logger option {:?}", self.logger));
        }
        if self.log_filter().is_none() {
            return Err(format!("unknown log level {:?}", self.log_level));
        }
        self.check_log_outputs()?;
        self.check_tls()?;
        check_auth_token(&self.auth_token)?;
        self.check_initial_cluster()
    }

    /// etcd 3.5's zap logger setup.
    fn check_log_outputs(&self) -> Result<(), String> {
        let outputs = &self.log_outputs;
        if outputs.iter().any(String::is_empty) {
            return Err(format!("--log-outputs {outputs:?} has an empty value"));
        }
        if outputs.len() > 1 && outputs.iter().any(|o| o == "default") {
            return Err("multi logoutput for \"default\" is not supported yet".into());
        }
        if outputs.len() > 1 && outputs.iter().any(|o| o == "systemd/journal") {
            return Err(format!(
                "running with systemd/journal but other '--log-outputs' values ({outputs:?}) are configured; only set systemd/journal"
            ));
        }
        Ok(())
    }

    fn check_tls(&self) -> Result<(), String> {
        let version = |v: &Option<String>| match v.as_deref() {
            None | Some("") => Ok(None),
            Some("TLS1.2") => Ok(Some(2)),
            Some("TLS1.3") => Ok(Some(3)),
            Some(other) => Err(format!(
                "unexpected TLS version {other:?} (supported: TLS1.2, TLS1.3)"
            )),
        };
        let (min, max) = (
            version(&self.tls_min_version)?,
            version(&self.tls_max_version)?,
        );
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            return Err(format!(
                "min version ({}) is greater than max version ({})",
                self.tls_min_version.as_deref().unwrap_or_default(),
                self.tls_max_version.as_deref().unwrap_or_default()
            ));
        }
        if min == Some(3) && !self.cipher_suites.is_empty() {
            return Err(
                "cipher suites cannot be configured when only TLS1.3 or greater is supported"
                    .into(),
            );
        }
        if let Some(bad) = self
            .cipher_suites
            .iter()
            .find(|c| !CIPHER_SUITES.contains(&c.as_str()))
        {
            return Err(format!("unexpected TLS cipher suite {bad:?}"));
        }
        let client_tls = self.client_tls.auto_tls
            || self.client_tls.cert_file.is_some() && self.client_tls.key_file.is_some();
        for url in self
            .listen_client_urls
            .iter()
            .chain(&self.listen_client_http_urls)
            .chain(&self.listen_metrics_urls)
        {
            if (url.starts_with("https://") || url.starts_with("unixs://")) && !client_tls {
                return Err(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url {url} with HTTPS scheme"
                ));
            }
        }
        let peer_tls = self.peer_tls.auto_tls
            || self.peer_tls.cert_file.is_some() && self.peer_tls.key_file.is_some();
        let https = |u: &&String| u.starts_with("https://") || u.starts_with("unixs://");
        if let Some(url) = self.listen_peer_urls.iter().find(https)
            && !peer_tls
        {
            return Err(format!(
                "cannot listen on TLS for {url}: KeyFile and CertFile are not presented (--peer-cert-file, --peer-key-file)"
            ));
        }
        Ok(())
    }

    /// etcd's `VerifyBootstrap` / `VerifyJoinExisting`, on the configuration alone.
    pub(crate) fn check_initial_cluster(&self) -> Result<(), String> {
        let members = self.initial_cluster_members().map_err(|e| e.to_string())?;
        if members.is_empty() {
            return Err("initial cluster unset and no discovery URL found".into());
        }
        let Some((name, urls)) = members.iter().find(|(n, _)| n == &self.name) else {
            return Err(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            ));
        };
        let mut seen = BTreeSet::new();
        if !members.iter().flat_map(|(_, u)| u).all(|u| seen.insert(u)) {
            return Err(format!(
                "initial cluster {} has duplicate url",
                self.initial_cluster
            ));
        }
        if self.initial_cluster_state == "existing" {
            return Ok(());
        }
        let mut mine = self.initial_advertise_peer_urls.clone();
        mine.sort();
        if &mine == urls {
            return Ok(());
        }
        let missing: Vec<String> = urls
            .iter()
            .filter(|u| !mine.contains(u))
            .map(|u| format!("{name}={u}"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "--initial-cluster has {} but missing from --initial-advertise-peer-urls={}",
                missing.join(","),
                mine.join(",")
            ));
        }
        let extra: Vec<&str> = mine
            .iter()
            .filter(|u| !urls.contains(u))
            .map(String::as_str)
            .collect();
        Err(format!(
            "--initial-advertise-peer-urls has {} but missing from --initial-cluster={}",
            extra.join(","),
            urls.iter()
                .map(|u| format!("{name}={u}"))
                .collect::<Vec<_>>()
                .join(",")
        ))
    }

    /// What etcd warns about in a configuration it accepts.
    pub(super) fn advisories(&self) -> Vec<Notice> {
        let mut out = Vec::new();
        if self.quota_backend_bytes > MAX_RECOMMENDED_QUOTA_BYTES {
            out.push(Notice::warn(format!(
                "quota-backend-bytes {} exceeds the maximum recommended size ({MAX_RECOMMENDED_QUOTA_BYTES})",
                self.quota_backend_bytes
            )));
        }
        if self.max_request_bytes > MAX_RECOMMENDED_REQUEST_BYTES {
            out.push(Notice::warn(format!(
                "max-request-bytes {} exceeds the maximum recommended size ({MAX_RECOMMENDED_REQUEST_BYTES})",
                self.max_request_bytes
            )));
        }
        for (urls, tls, flag) in [
            (
                &self.listen_client_urls,
                &self.client_tls,
                "--client-cert-auth",
            ),
            (
                &self.listen_peer_urls,
                &self.peer_tls,
                "--peer-client-cert-auth",
            ),
        ] {
            for url in urls
                .iter()
                .filter(|u| u.starts_with("http://") || u.starts_with("unix://"))
            {
                if tls.cert_file.is_some() || tls.key_file.is_some() {
                    out.push(Notice::warn(format!(
                        "scheme is HTTP while key and cert files are present; ignoring key and cert files for {url}"
                    )));
                }
                if tls.client_cert_auth {
                    out.push(Notice::warn(format!(
                        "scheme is HTTP while {flag} is enabled; ignoring client cert auth for {url}"
                    )));
                }
            }
        }
        out
    }
}

/// etcd's `auth.NewTokenProvider`, without reading the key files: `simple`, `""`, or
/// `jwt` with `key=value` options, a known `sign-method` and a key.
fn check_auth_token(spec: &str) -> Result<(), String> {
    let invalid = || "auth: invalid auth options".to_string();
    let mut parts = spec.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut options = std::collections::BTreeMap::new();
    for part in parts {
        let mut kv = part.split('=');
        let (Some(k), Some(v), None) = (kv.next(), kv.next(), kv.next()) else {
            return Err(invalid());
        };
        if options.insert(k, v).is_some() {
            return Err(invalid());
        }
    }
    match kind {
        "simple" | "" => Ok(()),
        "jwt" => {
            if let Some(ttl) = options.get("ttl") {
                parse_go_duration_nanos(ttl)?;
            }
            let method = options.get("sign-method").copied().unwrap_or_default();
            if !JWT_METHODS.contains(&method) {
                return Err("auth: invalid auth signature method".into());
            }
            let has_key = if method.starts_with("HS") {
                options.contains_key("priv-key")
            } else {
                options.contains_key("priv-key") || options.contains_key("pub-key")
            };
            if has_key {
                Ok(())
            } else {
                Err("auth: missing key data".into())
            }
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::check_auth_token;

    // Goal: --auth-token is checked as etcd's token provider checks it, without files.
    #[test]
    fn auth_token_specs() {
        assert_eq!(check_auth_token("simple"), Ok(()));
        assert_eq!(check_auth_token(""), Ok(()));
        assert_eq!(
            check_auth_token("jwt,pub-key=/k.pub,priv-key=/k,sign-method=RS256,ttl=5m"),
            Ok(())
        );
        assert_eq!(
            check_auth_token("jwt,priv-key=/k,sign-method=HS256"),
            Ok(())
        );
        assert_eq!(
            check_auth_token("bogus").unwrap_err(),
            "auth: invalid auth options"
        );
        assert_eq!(
            check_auth_token("jwt").unwrap_err(),
            "auth: invalid auth signature method"
        );
        assert_eq!(
            check_auth_token("jwt,sign-method=RS256").unwrap_err(),
            "auth: missing key data"
        );
        assert_eq!(
            check_auth_token("jwt,pub-key=/k,sign-method=HS256").unwrap_err(),
            "auth: missing key data"
        );
        assert_eq!(
            check_auth_token("jwt,priv-key").unwrap_err(),
            "auth: invalid auth options"
        );
        assert_eq!(
            check_auth_token("jwt,ttl=1,ttl=2").unwrap_err(),
            "auth: invalid auth options"
        );
        assert!(check_auth_token("jwt,priv-key=/k,sign-method=RS256,ttl=5").is_err());
    }
}
