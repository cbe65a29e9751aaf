//! kubeadm's etcd command lines (research notes §7.2 and §7.3), in etcd 3.4/3.5's
//! spellings and etcd 3.6's.

use std::path::PathBuf;
use std::time::Duration;

use super::run;
use crate::config::{Config, Level};

/// kubeadm's manifest arguments for `name` at `ip` (§7.2/§7.3 of the research notes),
/// with etcd 3.4/3.5's spellings or etcd 3.6's.
fn kubeadm(name: &str, ip: &str, cluster: &str, v36: bool) -> Vec<String> {
    let pki = "/etc/kubernetes/pki/etcd";
    let mut args = vec![
        format!("--advertise-client-urls=https://{ip}:2379"),
        format!("--cert-file={pki}/server.crt"),
        "--client-cert-auth=true".into(),
        "--data-dir=/var/lib/etcd".into(),
        format!("--initial-advertise-peer-urls=https://{ip}:2380"),
        format!("--initial-cluster={cluster}"),
        format!("--key-file={pki}/server.key"),
        format!("--listen-client-urls=https://127.0.0.1:2379,https://{ip}:2379"),
        "--listen-metrics-urls=http://127.0.0.1:2381".into(),
        format!("--listen-peer-urls=https://{ip}:2380"),
        format!("--name={name}"),
        format!("--peer-cert-file={pki}/peer.crt"),
        "--peer-client-cert-auth=true".into(),
        format!("--peer-key-file={pki}/peer.key"),
        format!("--peer-trusted-ca-file={pki}/ca.crt"),
        "--snapshot-count=10000".into(),
        format!("--trusted-ca-file={pki}/ca.crt"),
    ];
    if v36 {
        args.push("--feature-gates=InitialCorruptCheck=true".into());
        args.push("--watch-progress-notify-interval=5s".into());
    } else {
        args.push("--experimental-initial-corrupt-check=true".into());
        args.push("--experimental-watch-progress-notify-interval=5s".into());
    }
    args.sort();
    args
}

fn check_kubeadm(c: &Config, name: &str, ip: &str) {
    let pki = PathBuf::from("/etc/kubernetes/pki/etcd");
    assert_eq!(c.name, name);
    assert_eq!(c.data_dir(), PathBuf::from("/var/lib/etcd"));
    assert_eq!(
        c.listen_client_urls,
        vec![
            "https://127.0.0.1:2379".to_string(),
            format!("https://{ip}:2379")
        ]
    );
    assert_eq!(c.advertise_client_urls, vec![format!("https://{ip}:2379")]);
    assert_eq!(c.listen_peer_urls, vec![format!("https://{ip}:2380")]);
    assert_eq!(
        c.initial_advertise_peer_urls,
        vec![format!("https://{ip}:2380")]
    );
    assert_eq!(c.listen_metrics_urls, vec!["http://127.0.0.1:2381"]);
    assert_eq!(c.client_tls.cert_file, Some(pki.join("server.crt")));
    assert_eq!(c.client_tls.key_file, Some(pki.join("server.key")));
    assert_eq!(c.client_tls.trusted_ca_file, Some(pki.join("ca.crt")));
    assert!(c.client_tls.client_cert_auth);
    assert_eq!(c.peer_tls.cert_file, Some(pki.join("peer.crt")));
    assert_eq!(c.peer_tls.key_file, Some(pki.join("peer.key")));
    assert_eq!(c.peer_tls.trusted_ca_file, Some(pki.join("ca.crt")));
    assert!(c.peer_tls.client_cert_auth);
    assert_eq!(c.snapshot_count, 10_000);
    assert!(c.initial_corrupt_check);
    assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(5));
}

// Goal: kubeadm's exact etcd command lines, for `kubeadm init` and for a third control
// plane joining, in both spellings, parse into the configuration they ask for.
#[test]
fn kubeadm_command_lines() {
    for v36 in [false, true] {
        let args = kubeadm("cp1", "192.168.0.10", "cp1=https://192.168.0.10:2380", v36);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = run(&args, &[]).unwrap_or_else(|e| panic!("{e}"));
        check_kubeadm(&p.config, "cp1", "192.168.0.10");
        assert_eq!(p.config.initial_cluster_state, "new");
        assert!(
            p.notices.iter().all(|n| n.level == Level::Info),
            "{:?}",
            p.notices
        );

        let cluster = "cp1=https://192.168.0.10:2380,cp3=https://192.168.0.12:2380,cp2=https://192.168.0.11:2380";
        let mut args = kubeadm("cp3", "192.168.0.12", cluster, v36);
        args.push("--initial-cluster-state=existing".into());
        args.sort();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let c = run(&args, &[]).unwrap_or_else(|e| panic!("{e}")).config;
        check_kubeadm(&c, "cp3", "192.168.0.12");
        assert_eq!(c.initial_cluster_state, "existing");
        let names: Vec<String> = c
            .initial_cluster_members()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["cp1", "cp3", "cp2"]);
    }
}
