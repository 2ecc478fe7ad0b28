//! The repository stands alone (no root needed): no tracked file refers to material outside it,
//! and every relative link of the README and of `docs/*.md` names a file that exists.
//!
//! The rule and its one exception (the note that explains it) are in `docs/standalone.md`.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The repository root: the parent of this crate.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the repository")
        .to_path_buf()
}

/// `git ls-files` of the repository: the tracked files, as paths relative to the root.
fn tracked() -> Vec<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["ls-files", "-z"])
        .output()
        .expect("run git ls-files (this test needs git and a git checkout)");
    assert!(
        out.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8 file names")
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    assert!(files.len() > 50, "too few tracked files: {files:?}");
    files
}

/// The note that explains the rule may name what it forbids.
const RULE_NOTE: &str = "docs/standalone.md";

/// Text that names material outside the repository. Built from pieces so that this file does
/// not name it itself.
fn forbidden() -> Vec<String> {
    let shared = "shared";
    vec![
        format!("../{shared}"),
        format!("{shared}/bench"),
        format!("{shared}/design"),
        format!("{shared}/field-notes"),
        format!("field-{}/", "notes"),
        // Absolute paths of a developer's machine.
        ["/wo", "rk/"].concat(),
        ["/ho", "me/"].concat(),
        ["/Use", "rs/"].concat(),
    ]
}

/// Upper-case note names that were never part of the repository (the old design notes).
fn foreign_notes() -> Vec<String> {
    [
        "CHECKS",
        "INTERFACE",
        "KERNEL-FACTS",
        "KUBERNETES",
        "ARCHITECTURE",
    ]
    .iter()
    .map(|n| n.to_string())
    .collect()
}

/// Every run of `../` in `text` that climbs higher than the directory of `file` (depth
/// components below the root) leaves the repository.
fn escapes(file: &str, text: &str) -> Option<String> {
    let depth = Path::new(file).components().count() - 1;
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("../") {
        let start = i + pos;
        // Only runs that start a path (not `.../` or `x../`).
        let begins = start == 0
            || !matches!(bytes[start - 1], b'.' | b'_' | b'-')
                && !bytes[start - 1].is_ascii_alphanumeric();
        let mut ups = 0;
        let mut j = start;
        while text[j..].starts_with("../") {
            ups += 1;
            j += 3;
        }
        if begins && ups > depth {
            let end = text[j..]
                .find(|c: char| c.is_whitespace() || "\"'`)]>,".contains(c))
                .map_or(text.len(), |e| j + e);
            return Some(text[start..end].to_string());
        }
        i = j;
    }
    None
}

#[test]
fn no_tracked_file_refers_outside_the_repository() {
    let root = root();
    let forbidden = forbidden();
    let notes = foreign_notes();
    let mut problems = Vec::new();
    let mut read = 0;
    for file in tracked() {
        if file == RULE_NOTE {
            continue;
        }
        let Ok(bytes) = std::fs::read(root.join(&file)) else {
            // Tracked but deleted in the work tree: nothing to check.
            continue;
        };
        let Ok(text) = String::from_utf8(bytes) else {
            continue; // binary (captured kernel replies)
        };
        read += 1;
        for (n, line) in text.lines().enumerate() {
            for bad in &forbidden {
                if line.contains(bad.as_str()) {
                    problems.push(format!("{file}:{}: names {bad:?}: {line}", n + 1));
                }
            }
            for note in &notes {
                for named in [
                    format!("{note}.md"),
                    format!("({note})"),
                    format!("({note}:"),
                ] {
                    if line.contains(&named) {
                        problems.push(format!(
                            "{file}:{}: names the design note {note} that is not in the repository (docs/ has the project's own): {line}",
                            n + 1
                        ));
                    }
                }
            }
            if let Some(path) = escapes(&file, line) {
                problems.push(format!(
                    "{file}:{}: {path:?} leaves the repository: {line}",
                    n + 1
                ));
            }
        }
    }
    assert!(read > 50, "read only {read} text files");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `[text](target)` links of a markdown file (not images of other sites, not anchors).
fn relative_links(markdown: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find("](") {
            let after = &rest[pos + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].trim();
            let target = target.split_whitespace().next().unwrap_or("");
            let external = target.contains("://") || target.starts_with("mailto:");
            if !external && !target.starts_with('#') && !target.is_empty() {
                links.push(target.split('#').next().unwrap_or("").to_string());
            }
            rest = &after[end..];
        }
    }
    links
}

/// `path` without `.` and `..` components, or None when `..` climbs above the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

#[test]
fn the_docs_the_readme_links_to_exist() {
    let root = root();
    let tracked: BTreeSet<String> = tracked().into_iter().collect();
    let mut pages = vec!["README.md".to_string(), "chart/README.md".to_string()];
    pages.extend(
        tracked
            .iter()
            .filter(|f| f.starts_with("docs/") && f.ends_with(".md"))
            .cloned(),
    );
    let mut problems = Vec::new();
    let mut links = 0;
    for page in &pages {
        let text =
            std::fs::read_to_string(root.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for target in relative_links(&text) {
            links += 1;
            match normalize(&dir.join(&target)) {
                None => problems.push(format!("{page}: link {target:?} leaves the repository")),
                Some(path) => {
                    let full = root.join(&path);
                    let name = path.to_string_lossy().to_string();
                    let is_tracked_dir = tracked.iter().any(|f| f.starts_with(&format!("{name}/")));
                    if !full.exists() || !(tracked.contains(&name) || is_tracked_dir) {
                        problems.push(format!(
                            "{page}: link {target:?} names {name}, which is not a tracked file of the repository"
                        ));
                    }
                }
            }
        }
    }
    // The README leads to the project's own docs.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for doc in [
        "docs/checks.md",
        "docs/interface.md",
        "docs/kernel-facts.md",
        "docs/incidents.md",
        "docs/operating.md",
    ] {
        if !relative_links(&readme).iter().any(|l| l == doc) {
            problems.push(format!("README.md does not link to {doc}"));
        }
    }
    assert!(links >= 5, "only {links} relative links found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checks_find_what_they_look_for() {
    // The scanners themselves, on text made for them (built so that this file does not trip them).
    let climb = format!("{}elsewhere/bench", "../".repeat(3));
    assert_eq!(
        escapes("tests/src/lib.rs", &format!("join(\"{climb}\")")),
        Some(climb.clone())
    );
    assert_eq!(escapes("tests/Cargo.toml", r#"path = "../agent""#), None);
    assert_eq!(
        escapes("agent/src/observe/links.rs", "\"../../testdata/l2/x.bin\""),
        None
    );
    assert_eq!(escapes("README.md", "see ../x"), Some("../x".to_string()));
    assert_eq!(escapes("README.md", "wait..."), None);
    assert_eq!(
        relative_links(
            "[a](docs/a.md#x) [b](https://example.org) [c](#here)\n```\n[d](no.md)\n```"
        ),
        vec!["docs/a.md".to_string()]
    );
    assert_eq!(
        normalize(Path::new("docs/../chart/README.md")),
        Some(PathBuf::from("chart/README.md"))
    );
    assert_eq!(normalize(Path::new("docs/../../x")), None);
}
