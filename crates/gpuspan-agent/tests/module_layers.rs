//! The agent's modules form layers (issue 11, item 7): `src/lib.rs` declares them bottom up,
//! and no module's code names a module declared after it (`crate::<later>` or
//! `use crate::<later>`), so there is no import cycle. Doc comments may point anywhere.

use std::collections::BTreeMap;
use std::path::Path;

/// `pub mod NAME;` lines of lib.rs, in order.
fn layer_order(src: &Path) -> Vec<String> {
    std::fs::read_to_string(src.join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';').map(str::to_string))
        .collect()
}

/// The source text of module `name` (`name.rs` or every file under `name/`), without comments.
fn code_of(src: &Path, name: &str) -> String {
    let mut files = Vec::new();
    let file = src.join(format!("{name}.rs"));
    if file.exists() {
        files.push(file);
    }
    let dir = src.join(name);
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
    }
    assert!(!files.is_empty(), "no source for module {name}");
    files
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_module_names_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = layer_order(&src);
    assert!(order.len() >= 15, "lib.rs declares the modules: {order:?}");
    let rank: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let mut violations = Vec::new();
    for m in &order {
        assert!(!code_of(&src, m).contains("crate::{"), "{m}: grouped `use crate::{{…}}` imports hide what they name; one per module");
    }
    for (i, m) in order.iter().enumerate() {
        let code = code_of(&src, m);
        for (other, &j) in &rank {
            if j > i && (code.contains(&format!("crate::{other}::")) || code.contains(&format!("crate::{other};")) || code.contains(&format!("crate::{other} "))) {
                violations.push(format!("{m} (layer {i}) names {other} (layer {j})"));
            }
        }
    }
    assert!(violations.is_empty(), "modules naming modules above them:\n{}", violations.join("\n"));
}
