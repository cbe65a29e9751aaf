//! Enough of protoc's command line for prost-build: `--include_imports`,
//! `--include_source_info`, `-o FILE` / `--descriptor_set_out=FILE`, `-I DIR` /
//! `--proto_path=DIR`, `--version`, and the files to compile. Anything else is refused,
//! so a build script that needs more fails loudly instead of getting a wrong answer.

use std::process::ExitCode;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("protoc (retcd protox shim): {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let (mut includes, mut files) = (Vec::new(), Vec::new());
    let (mut out, mut imports, mut source_info) = (None, false, false);
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--version" => {
                // prost-build does not parse this; answer like a recent protoc.
                println!("libprotoc 27.0");
                return Ok(());
            }
            "--include_imports" => imports = true,
            "--include_source_info" => source_info = true,
            // protox accepts proto3 optional fields without being asked.
            "--experimental_allow_proto3_optional" => {}
            "-o" => out = Some(value("-o")?),
            "-I" => includes.push(value("-I")?),
            a if a.starts_with("--descriptor_set_out=") => out = Some(a[21..].to_string()),
            a if a.starts_with("--proto_path=") => includes.push(a[13..].to_string()),
            a if a.starts_with("-o") => out = Some(a[2..].to_string()),
            a if a.starts_with("-I") => includes.push(a[2..].to_string()),
            a if a.starts_with('-') => return Err(format!("unsupported option {a}")),
            _ => files.push(arg),
        }
    }
    let out = out.ok_or("no output file given (-o)")?;
    if files.is_empty() {
        return Err("no input files".into());
    }
    let mut compiler = protox::Compiler::new(&includes).map_err(|e| e.to_string())?;
    compiler.include_imports(imports).include_source_info(source_info);
    compiler.open_files(&files).map_err(|e| format!("{e:?}"))?;
    std::fs::write(&out, compiler.encode_file_descriptor_set()).map_err(|e| format!("{out}: {e}"))
}
