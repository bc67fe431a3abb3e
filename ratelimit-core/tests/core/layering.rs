//! The dependency direction of DESIGN.md ("Layout"), checked on the source: the grammar and
//! the algorithm names ← algorithms ← limits ← decision ← (clock) ← capacity ← store ←
//! observe ← limiter ← reservation ← http. Nothing below `http` names an HTTP type, and no module imports one above
//! it (so no two import each other).

use std::path::{Path, PathBuf};

/// Each module, lowest first.
const ORDER: [&str; 11] = [
    "rate",
    "algorithm",
    "limits",
    "decision",
    "clock",
    "capacity",
    "store",
    "observe",
    "limiter",
    "reservation",
    "http",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to.
fn module_of(src: &Path, file: &Path) -> Option<&'static str> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    ORDER.iter().copied().find(|m| *m == name)
}

#[test]
fn modules_depend_downward_only_and_nothing_below_http_names_http() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue; // lib.rs: the crate root re-exports everything
        };
        let rank = ORDER.iter().position(|m| *m == module).unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let at = format!("{}:{}", file.display(), number + 1);
            if module != "http" {
                for http in ["axum::", "http::", "tower::", "hyper::", "crate::http"] {
                    let named = code.match_indices(http).any(|(i, _)| {
                        // `http::` as a path of its own, not the end of another name.
                        i == 0
                            || !code.as_bytes()[i - 1].is_ascii_alphanumeric()
                                && code.as_bytes()[i - 1] != b'_'
                    });
                    if named {
                        problems.push(format!("{at}: `{module}` names `{http}`"));
                    }
                }
            }
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if let Some(used_rank) = ORDER.iter().position(|m| *m == used) {
                    if used_rank > rank {
                        problems.push(format!(
                            "{at}: `{module}` imports `{used}`, which is above it"
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Within `http`, lowest first: the answer, keys, the configuration, what the layer shares
/// with the extractors, the one enforcement site, identities, the attributes' specs, then
/// the things built on them.
const HTTP_ORDER: [&str; 11] = [
    "response", "key", "config", "context", "enforce", "identity", "spec", "extract", "drain",
    "layer", "metrics",
];

#[test]
fn the_http_modules_depend_downward_only() {
    let http = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut problems = Vec::new();
    for (rank, module) in HTTP_ORDER.iter().enumerate() {
        let file = http.join(format!("{module}.rs"));
        let text = std::fs::read_to_string(&file).unwrap();
        // The module's own imports: unindented (nested test and support modules use their
        // parent through `super` too).
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !code.starts_with("use super::") {
                continue;
            }
            for (i, _) in code.match_indices("super::") {
                let rest = &code[i + "super::".len()..];
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                match HTTP_ORDER.iter().position(|m| *m == used) {
                    Some(used_rank) if used_rank >= rank && used != *module => {
                        problems.push(format!(
                            "{}:{}: `{module}` imports `{used}`, which is above it",
                            file.display(),
                            number + 1
                        ))
                    }
                    None if !used.is_empty() && used != "super" => problems.push(format!(
                        "{}:{}: `{module}` reaches into `http` itself for `{used}`",
                        file.display(),
                        number + 1
                    )),
                    _ => {}
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
