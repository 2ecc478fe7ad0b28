//! The architecture's rule, checked: the pure layers (`model`, `detect`, `remediate`) never use
//! tokio, the kernel-facing layers (`observe`, `act`, `sys`), the runtime, or process spawning
//! outside their test modules; and the engine (`runtime/`) names no check or fix.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn pure_layers_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src");
    let forbidden = [
        "tokio",
        "crate::observe",
        "crate::act",
        "crate::runtime",
        "crate::http",
        "crate::journal",
        "std::process",
        "std::fs",
        "std::net::TcpStream",
        "libc::",
        "crate::sys",
        "nix::",
    ];
    let mut files = Vec::new();
    for layer in ["model", "detect", "remediate"] {
        rust_files(&src.join(layer), &mut files);
    }
    assert!(files.len() >= 10, "found only {} files", files.len());
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            // A file's test module (`#[cfg(test)] mod tests {` at the top level) may read
            // captured fixtures and decode them with the real decoders: the rule is about what
            // the layer runs.
            if line.starts_with("#[cfg(test)]")
                && lines.get(n + 1).is_some_and(|l| l.starts_with("mod tests"))
            {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for f in forbidden {
                if code.contains(f) {
                    offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "pure layers doing I/O:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_engine_names_no_check_or_fix() {
    // The checks and fixes are types found through their registries: the engine (`runtime/`)
    // never picks one by its id. Its test modules and test-only files may.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/src/runtime");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() >= 10, "found only {} files", files.len());
    let mut offences = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        if name.ends_with("_tests.rs") || name == "fake.rs" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for named in ["CheckId::", "FixId::"] {
                if let Some(at) = code.find(named) {
                    let rest = &code[at + named.len()..];
                    if rest.starts_with(|c: char| c.is_ascii_uppercase()) {
                        offences.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the engine names a check or fix:\n{}",
        offences.join("\n")
    );
}
