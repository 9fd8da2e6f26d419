//! The documentation stays navigable: every relative link in README.md and docs/*.md resolves
//! (the file exists, and an `#anchor` names a heading of the target, by GitHub's slug rules),
//! the README's key table names every key of `configs/orders_stream.yml`, and the README stays
//! a front door (at most 15 KB). Pure file checks: no stack needed.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The README's size limit: a front door, with the reference in docs/.
const README_MAX_BYTES: usize = 15 * 1024;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// README.md and every docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let docs = root().join("docs");
    let entries = std::fs::read_dir(&docs).unwrap_or_else(|e| panic!("cannot list {}: {e}", docs.display()));
    let mut pages: Vec<PathBuf> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("cannot list {}: {e}", docs.display())).path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// The lines of a markdown text outside fenced code blocks, with their line numbers (from 1).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => lines.push((i + 1, line)),
            _ => {}
        }
    }
    lines
}

/// `line` without its inline code spans (`` `…` ``), which hold text, never links.
fn strip_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The targets of the inline links and images (`[text](target "title")`) and of the reference
/// definitions (`[name]: target`) of one line.
fn link_targets(line: &str) -> Vec<String> {
    let line = strip_code_spans(line);
    let mut targets = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(end) = trimmed.find("]:")
    {
        if let Some(target) = trimmed[end + 2..].split_whitespace().next() {
            targets.push(target.trim_matches(|c| c == '<' || c == '>').to_string());
        }
        return targets;
    }
    let mut rest = line.as_str();
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        // The destination ends at the `)` that balances the opening one.
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = i;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let dest = after[..end].trim();
        let dest = dest.split_whitespace().next().unwrap_or("");
        targets.push(dest.trim_matches(|c| c == '<' || c == '>').to_string());
        rest = &after[end.min(after.len())..];
    }
    targets
}

fn is_external(target: &str) -> bool {
    let lower = target.to_ascii_lowercase();
    ["http://", "https://", "mailto:", "ftp://"].iter().any(|p| lower.starts_with(p))
}

/// A heading's anchor as GitHub makes it: lower case; only letters, digits, `-`, `_` and
/// spaces kept; each space a `-`. Links and code marks count by their text.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // `[text](url)` counts as `text`.
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](").map(|m| open + m) else { break };
        let Some(close) = rest[mid..].find(')').map(|c| mid + c) else { break };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..mid]);
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a markdown text's headings, duplicates numbered `-1`, `-2`, … as GitHub does.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim();
        let base = slug(title);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The broken relative links of one document, each as `file:line: target: why`.
fn broken_links(file: &Path) -> Vec<String> {
    let text = read(file);
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file.strip_prefix(root()).unwrap_or(file).display().to_string();
    let mut broken = Vec::new();
    for (number, line) in prose_lines(&text) {
        for target in link_targets(line) {
            if target.is_empty() {
                broken.push(format!("{name}:{number}: empty link target"));
                continue;
            }
            if is_external(&target) {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() { file.to_path_buf() } else { dir.join(path) };
            if !resolved.exists() {
                broken.push(format!("{name}:{number}: {target}: {} does not exist", resolved.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if resolved.extension().is_none_or(|x| x != "md") {
                continue;
            }
            if !anchors(&read(&resolved)).contains(anchor) {
                broken.push(format!("{name}:{number}: {target}: no heading with the anchor #{anchor}"));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let files = documents();
    assert!(files.len() > 1, "docs/ holds no .md file");
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(f)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every key of a YAML mapping as a dotted path; a mapping with no keys (`properties: {}`) is a
/// key itself.
fn dotted_keys(value: &serde_norway::Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        serde_norway::Value::Mapping(map) if !map.is_empty() || prefix.is_empty() => {
            for (key, child) in map {
                let key = key.as_str().unwrap_or_else(|| panic!("non-text key under `{prefix}`: {key:?}"));
                let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
                dotted_keys(child, &path, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// The first cells of the rows of the README's tables whose first header cell is `key`.
fn key_table_cells(readme: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut in_key_table = false;
    for (_, line) in prose_lines(readme) {
        let line = line.trim();
        if !line.starts_with('|') {
            in_key_table = false;
            continue;
        }
        let first = line.trim_start_matches('|').split('|').next().unwrap_or("").trim().to_string();
        if !in_key_table {
            // A table's first row is its header.
            in_key_table = first.eq_ignore_ascii_case("key");
            continue;
        }
        if !first.starts_with("---") && !first.starts_with(":--") {
            cells.push(first);
        }
    }
    cells
}

/// The texts between backticks in `cell`.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

#[test]
fn the_readme_key_table_names_every_key_of_the_shipped_configuration() {
    let config_path = root().join("configs/orders_stream.yml");
    let config: serde_norway::Value = serde_norway::from_str(&read(&config_path))
        .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", config_path.display()));
    let mut keys = Vec::new();
    dotted_keys(&config, "", &mut keys);
    assert!(keys.len() >= 20, "too few keys read from {}: {keys:?}", config_path.display());
    let cells = key_table_cells(&read(&root().join("README.md")));
    assert!(!cells.is_empty(), "README.md has no table whose first column is `key`");
    let named: BTreeSet<&str> = cells.iter().flat_map(|c| code_spans(c)).collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| {
            let leaf = k.rsplit('.').next().unwrap_or(k);
            !named.contains(k.as_str()) && !named.contains(leaf)
        })
        .collect();
    assert!(missing.is_empty(), "README.md's key table does not name: {missing:?}");
}

#[test]
fn the_readme_is_at_most_15_kb() {
    let size = read(&root().join("README.md")).len();
    assert!(
        size <= README_MAX_BYTES,
        "README.md has {size} bytes, more than {README_MAX_BYTES}: move detail to docs/"
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("The producer (`orderstream produce`)"), "the-producer-orderstream-produce");
    assert_eq!(slug("Run it on your own PostgreSQL and Kafka"), "run-it-on-your-own-postgresql-and-kafka");
    assert_eq!(slug("TLS to PostgreSQL"), "tls-to-postgresql");
    assert_eq!(slug("Log-based capture: `postgres.capture`"), "log-based-capture-postgrescapture");
    assert_eq!(slug("`max_batch_rows` and [memory](x.md)"), "max_batch_rows-and-memory");
    let text = "# A\n\n## B\n\n```\n# not a heading\n```\n\n## B\n";
    assert_eq!(anchors(text), BTreeSet::from(["a".to_string(), "b".to_string(), "b-1".to_string()]));
}
