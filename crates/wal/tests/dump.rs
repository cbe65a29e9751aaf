//! The dump library and the `retcd-dump-logs` binary.

mod common;

use std::process::Command;

use bytes::Bytes;
use common::*;
use retcd_raft::{Entry, EntryType, HardState};
use retcd_wal::dump::{format_record, read_records};
use retcd_wal::{Record, RecordType, SnapshotMarker, Wal};

fn sample_wal(dir: &std::path::Path) {
    let mut wal = Wal::create_with(dir, META, std_opts(1024)).unwrap();
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 3,
    };
    let entries = vec![
        Entry {
            term: 2,
            index: 1,
            entry_type: EntryType::Normal,
            data: Bytes::from_static(b"put foo bar"),
        },
        Entry {
            term: 2,
            index: 2,
            entry_type: EntryType::ConfChange,
            data: Bytes::from_static(b"\x08\x01"),
        },
        Entry {
            term: 2,
            index: 3,
            entry_type: EntryType::Normal,
            data: Bytes::new(),
        },
    ];
    wal.save(&hs, &entries).unwrap();
    wal.save_snapshot_marker(&SnapshotMarker::new(3, 2))
        .unwrap();
}

#[test]
fn read_records_yields_every_record_in_order_with_a_pluggable_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    sample_wal(tmp.path());
    let mut recs = Vec::new();
    let torn = read_records(tmp.path(), &std_opts(1024), &mut |r| recs.push(r)).unwrap();
    assert!(torn.is_none());
    let kinds: Vec<RecordType> = recs.iter().map(|r| r.record.record_type()).collect();
    use RecordType::*;
    assert_eq!(
        kinds,
        vec![
            SegmentHeader,
            Metadata,
            Snapshot,
            Entry,
            Entry,
            Entry,
            HardState,
            Snapshot
        ]
    );
    assert!(recs.windows(2).all(|w| w[0].offset < w[1].offset));
    let decoder = |d: &[u8]| format!("<{} bytes>", d.len());
    let lines: Vec<String> = recs.iter().map(|r| format_record(r, &decoder)).collect();
    assert!(
        lines[3].contains("norm") && lines[3].ends_with("<11 bytes>"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].contains("conf") && lines[4].ends_with("<2 bytes>"),
        "{}",
        lines[4]
    );
    assert!(
        lines[6].contains("hardstate") && lines[6].ends_with("vote=1 commit=3"),
        "{}",
        lines[6]
    );
    assert!(
        lines[7].contains("snapshot") && lines[7].contains("voters=[]"),
        "{}",
        lines[7]
    );
    assert!(matches!(&recs[1].record, Record::Metadata(m) if &m[..] == META));
}

#[test]
fn the_binary_prints_etcd_style_columns() {
    let tmp = tempfile::tempdir().unwrap();
    sample_wal(tmp.path());
    let out = Command::new(env!("CARGO_BIN_EXE_retcd-dump-logs"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.split('\t').map(str::trim).collect::<Vec<_>>()
                == ["term", "index", "type", "data"])
    );
    let row = |index: &str| {
        lines
            .iter()
            .map(|l| l.split('\t').map(str::trim).collect::<Vec<_>>())
            .find(|cols| {
                cols.len() == 4 && cols[1] == index && (cols[2] == "norm" || cols[2] == "conf")
            })
            .unwrap_or_else(|| panic!("no entry row for index {index} in\n{stdout}"))
    };
    assert_eq!(row("1"), ["2", "1", "norm", "\"put foo bar\""]);
    assert_eq!(row("2"), ["2", "2", "conf", "0801"]);
    assert!(
        stdout.contains("Entry records: 3, last entry index: 3"),
        "{stdout}"
    );
    let hex = Command::new(env!("CARGO_BIN_EXE_retcd-dump-logs"))
        .args(["--hex", "--start-index", "2"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let hex = String::from_utf8(hex.stdout).unwrap();
    assert!(
        !hex.contains("7075742066"),
        "entries below --start-index are skipped: {hex}"
    );
    assert!(hex.contains("Entry records: 2"), "{hex}");
}

#[test]
fn the_binary_fails_on_corruption_after_printing_what_came_before() {
    let tmp = tempfile::tempdir().unwrap();
    sample_wal(tmp.path());
    let mut recs = Vec::new();
    read_records(tmp.path(), &std_opts(1024), &mut |r| recs.push(r)).unwrap();
    let victim = &recs[4];
    let mut bytes = std::fs::read(&victim.file).unwrap();
    bytes[victim.offset as usize + 25] ^= 0xff;
    std::fs::write(&victim.file, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_retcd-dump-logs"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stdout.contains("\"put foo bar\""), "{stdout}");
    assert!(
        stderr.contains("corrupt") && stderr.contains(&format!("offset {}", victim.offset)),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_retcd-dump-logs"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "usage error without a directory"
    );
}
