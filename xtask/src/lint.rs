//! `cargo xtask lint-structure`: the size rules of the codebase, checked.
//!
//! - No library source file over [`MAX_FILE_LINES`] lines.
//! - No library function over [`MAX_FN_LINES`] lines, from `fn` to its
//!   closing brace.
//!
//! "Library" is every `.rs` file under `crates/*/src`, `benches/src` and
//! `xtask/src` except test code: files named `tests.rs` or under a `tests`
//! directory, and items marked `#[test]` or `#[cfg(test)]`. Functions are
//! found by parsing with `syn` (the field's Rust parser), so macros' bodies
//! and `global_asm!` text are not mistaken for code.

use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

/// The longest a library source file may be.
pub(crate) const MAX_FILE_LINES: usize = 600;
/// The longest a library function may be.
pub(crate) const MAX_FN_LINES: usize = 80;

/// One rule broken, with where.
struct Violation {
    file: PathBuf,
    line: usize,
    what: String,
}

/// `cargo xtask lint-structure --help`.
pub(crate) fn usage() -> String {
    format!(
        "usage: cargo xtask lint-structure\n  files ≤ {MAX_FILE_LINES} lines, functions ≤ {MAX_FN_LINES} lines (library code)"
    )
}

/// Runs the check over the workspace; prints every violation.
pub(crate) fn lint_structure(rest: &[String]) -> bool {
    if let Some(a) = rest.first() {
        eprintln!("xtask lint-structure: unknown option {a}\n\n{}", usage());
        return false;
    }
    let root = crate::workspace_root();
    let mut files = Vec::new();
    for dir in source_dirs(&root) {
        collect_rs(&dir, &mut files);
    }
    files.sort();
    let mut found = Vec::new();
    for f in &files {
        if let Err(e) = check_file(f, &mut found) {
            eprintln!("xtask lint-structure: {}: {e}", f.display());
            return false;
        }
    }
    for v in &found {
        let rel = v.file.strip_prefix(&root).unwrap_or(&v.file);
        eprintln!("{}:{}: {}", rel.display(), v.line, v.what);
    }
    eprintln!(
        "lint-structure: {} library files, {} violations",
        files.len(),
        found.len()
    );
    found.is_empty()
}

/// `crates/*/src`, `benches/src`, `xtask/src`.
fn source_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .map(|rd| rd.flatten().map(|e| e.path().join("src")).collect())
        .unwrap_or_default();
    dirs.push(root.join("benches/src"));
    dirs.push(root.join("xtask/src"));
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Every non-test `.rs` file under `dir`.
fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            if name != "tests" {
                collect_rs(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") && name != "tests.rs" {
            out.push(p);
        }
    }
}

/// Checks one file's length and its functions'.
fn check_file(path: &Path, found: &mut Vec<Violation>) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    check_source(path, &text, found)
}

/// [`check_file`] of `text`, read from `path`.
fn check_source(path: &Path, text: &str, found: &mut Vec<Violation>) -> Result<(), String> {
    let lines = text.lines().count();
    if lines > MAX_FILE_LINES {
        found.push(Violation {
            file: path.to_path_buf(),
            line: 1,
            what: format!("file of {lines} lines (limit {MAX_FILE_LINES})"),
        });
    }
    let ast = syn::parse_file(text).map_err(|e| format!("cannot parse: {e}"))?;
    let mut v = FnLengths { file: path, found };
    v.visit_file(&ast);
    Ok(())
}

/// Visits every function outside test code and records the long ones.
struct FnLengths<'a> {
    file: &'a Path,
    found: &'a mut Vec<Violation>,
}

impl FnLengths<'_> {
    /// Records the function `name` if `span` is over the limit.
    fn check(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        let (start, end) = (span.start().line, span.end().line);
        let n = end + 1 - start;
        if n > MAX_FN_LINES {
            self.found.push(Violation {
                file: self.file.to_path_buf(),
                line: start,
                what: format!("fn {name} of {n} lines (limit {MAX_FN_LINES})"),
            });
        }
    }
}

/// True for `#[test]` and `#[cfg(test)]` (test code is exempt).
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("test")
            || (a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
    })
}

impl<'ast> Visit<'ast> for FnLengths<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_test(&f.attrs) {
            let span = f.sig.fn_token.span.join(f.block.span()).unwrap_or(f.span());
            self.check(&f.sig.ident, span);
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            let span = f.sig.fn_token.span.join(f.block.span()).unwrap_or(f.span());
            self.check(&f.sig.ident, span);
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(body) = &f.default {
            let span = f.sig.fn_token.span.join(body.span()).unwrap_or(f.span());
            self.check(&f.sig.ident, span);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function whose body is `n` lines long.
    fn long_fn(name: &str, n: usize) -> String {
        format!("fn {name}() {{\n{}}}\n", "    let _ = 1;\n".repeat(n))
    }

    #[test]
    fn long_library_functions_are_found_and_test_code_is_exempt() {
        let src = format!(
            "{}impl S {{\n{}}}\n#[cfg(test)]\nmod tests {{\n{}}}\n#[test]\n{}",
            long_fn("too_long", MAX_FN_LINES - 1),
            long_fn("method", MAX_FN_LINES - 2),
            long_fn("in_tests", 200),
            long_fn("a_test", 200),
        );
        let mut found = Vec::new();
        check_source(Path::new("x.rs"), &src, &mut found).unwrap();
        let what: Vec<&str> = found.iter().map(|v| v.what.as_str()).collect();
        assert_eq!(
            what,
            [format!(
                "fn too_long of {} lines (limit {MAX_FN_LINES})",
                MAX_FN_LINES + 1
            )]
        );
        assert_eq!(found[0].line, 1);
    }

    #[test]
    fn a_long_file_is_found() {
        let src = "// line\n".repeat(MAX_FILE_LINES + 1);
        let mut found = Vec::new();
        check_source(Path::new("x.rs"), &src, &mut found).unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].what.starts_with("file of 601 lines"));
    }
}
