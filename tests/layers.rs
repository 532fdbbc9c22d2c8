//! The layering, enforced: every module of `src/` may use only the modules below it in
//! `LAYERS`, read from the source itself (`crate::<module>` paths). A module that
//! reaches one above it, or sideways into a layer it shares with no one, fails here
//! with the file and line. Also: only `http` and `runtime` name glommio (the design's
//! rule that the rest never depends on the executor).

use std::path::{Path, PathBuf};

/// Bottom to top. A module may use the ones before it in this list, never after.
const LAYERS: &[&str] = &[
    "util", "http", "model", "auth", "handoff", "shard", "ingest", "storage", "delivery", "metrics", "api",
    "runtime",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/storage/pg.rs` → `storage`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Every `crate::<name>` in `text`, with its line number; `crate::{a, b::c}` counts each.
fn references(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                for item in inner.split(',') {
                    let name: String =
                        item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        found.push((number + 1, name));
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                found.push((number + 1, name));
            }
        }
    }
    found
}

#[test]
fn no_module_reaches_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |name: &str| LAYERS.iter().position(|layer| *layer == name);
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let Some(own) = rank(&module) else {
            violations.push(format!("{}: module `{module}` is in no layer", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, used) in references(&text) {
            match rank(&used) {
                Some(theirs) if theirs <= own => {}
                Some(_) => violations
                    .push(format!("{}:{line}: `{module}` uses `{used}`, a layer above it", file.display())),
                None => violations.push(format!(
                    "{}:{line}: `{module}` uses `{used}`, which is in no layer",
                    file.display()
                )),
            }
        }
    }
    assert!(violations.is_empty(), "layering broken:\n{}", violations.join("\n"));
}

#[test]
fn only_http_and_runtime_name_the_executor() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let names_glommio = |file: &PathBuf| {
        let text = std::fs::read_to_string(file).unwrap();
        text.lines().any(|line| line.split("//").next().unwrap_or_default().contains("glommio"))
    };
    let offenders: Vec<String> = files
        .iter()
        .filter(|file| module_of(&src, file).is_some_and(|m| !matches!(m.as_str(), "http" | "runtime")))
        .filter(|file| names_glommio(file))
        .map(|file| file.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "glommio named outside http/ and runtime/: {offenders:?}");
}

#[test]
fn the_reference_finder_sees_grouped_and_nested_paths() {
    let found =
        references("use crate::{api::Api, util};\nlet x = crate::storage::pg::Db::new(); // crate::nope");
    let names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["api", "util", "storage"]);
}
