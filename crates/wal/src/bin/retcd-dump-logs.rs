//! Prints the records of a retcd WAL directory, like etcd-dump-logs.
//!
//! Usage: `retcd-dump-logs [--hex] [--start-index N] <wal-dir>`
//!
//! Columns: term, index, type, data. Entry data is shown as text when printable and as hex
//! otherwise (`--hex`: always hex). Exits with status 1 if the WAL is corrupt, after
//! printing every record before the damage.

use std::path::PathBuf;
use std::process::ExitCode;

use retcd_wal::dump::{format_record, header_line, hex_data, read_records, text_or_hex};
use retcd_wal::{Record, WalOptions};

const USAGE: &str = "usage: retcd-dump-logs [--hex] [--start-index N] <wal-dir>";

fn main() -> ExitCode {
    let mut hex = false;
    let mut start_index = 0u64;
    let mut dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hex" => hex = true,
            "--start-index" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => start_index = n,
                None => {
                    eprintln!("--start-index needs a number\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if dir.is_none() && !arg.starts_with('-') => dir = Some(PathBuf::from(arg)),
            _ => {
                eprintln!("unexpected argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let decode: &dyn Fn(&[u8]) -> String = if hex { &hex_data } else { &text_or_hex };
    println!("WAL dir: {}", dir.display());
    println!("{}", header_line());
    let (mut entries, mut last_index) = (0u64, 0u64);
    let mut print = |r: retcd_wal::dump::DumpRecord| {
        if let Record::Entry(e) = &r.record {
            if e.index < start_index {
                return;
            }
            entries += 1;
            last_index = e.index;
        }
        println!("{}", format_record(&r, decode));
    };
    let result = read_records(&dir, &WalOptions::default(), &mut print);
    println!("\nEntry records: {entries}, last entry index: {last_index}");
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(torn)) => {
            println!(
                "torn tail (never fsynced) in {} at offset {}: {}",
                torn.file.display(),
                torn.offset,
                torn.reason
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
