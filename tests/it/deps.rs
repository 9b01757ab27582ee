//! The crate's module dependency listing: which top-level module of `src/` uses which (and, inside
//! `pipeline`, `tui`, `lora` and `model`, which part uses which), read from the `crate::`, `super::`
//! and `use` paths of every source file outside `#[cfg(test)]` items. The test prints the listing and
//! fails naming every cycle with the lines that make it. It needs nothing but `std`, so
//! `scripts/deps` compiles this file alone with `rustc --test` to print the listing without a build.
//!
//! Limits, by design: a path through a re-export counts for the module that re-exports it, and a
//! module's own `mod.rs` is left out of the listing of its parts (it declares and re-exports them).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Top-level modules whose parts get a listing (and a cycle check) of their own.
const SPLIT: &[&str] = &["pipeline", "tui", "lora", "model"];

/// Cycles among the parts of a module that are known and not yet broken, as the module and the
/// parts that reach each other. The test fails when one grows or disappears (then remove it here).
const KNOWN_PART_CYCLES: &[(&str, &[&str])] = &[];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// A token and the line it starts on.
type Lexed = Vec<(Tok, usize)>;

/// Rust source to tokens, without comments, string, char or number literals (so a `crate::` in a doc
/// comment or a message is not a use).
fn lex(src: &str) -> Lexed {
    let c: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let ident = |ch: char| ch == '_' || ch.is_alphanumeric();
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied().unwrap_or(' ');
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' || ((ch == 'b' || ch == 'c') && next == '"') {
            i += if ch == '"' { 1 } else { 2 };
            while i < c.len() && c[i] != '"' {
                line += usize::from(c[i] == '\n');
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if (ch == 'r' && (next == '"' || next == '#'))
            || (ch == 'b' && next == 'r' && matches!(c.get(i + 2), Some('"' | '#')))
        {
            // Raw string: r"…", r#"…"#, br"…". (`r#ident` is a raw identifier, handled below.)
            let mut j = i + if ch == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                i = j; // raw identifier: lex the name next round
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                line += usize::from(c[j] == '\n');
                j += 1;
            }
            i = j;
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
            if next == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (ident(c[i]) || c[i] == '.' && c.get(i + 1) != Some(&'.')) {
                i += 1;
            }
        } else if ident(ch) {
            let start = i;
            while i < c.len() && ident(c[i]) {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && next == ':' {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// One module path used by a module, with where.
#[derive(Debug, Clone)]
struct Use {
    /// The module whose code holds the path.
    from: Vec<String>,
    /// The path, absolute from the crate root.
    to: Vec<String>,
    file: PathBuf,
    line: usize,
}

/// What a crate's files say: the modules they declare and the paths they use.
#[derive(Debug, Default)]
struct Crate {
    modules: BTreeSet<Vec<String>>,
    uses: Vec<Use>,
}

impl Crate {
    /// Records `path`, written at `file:line` in module `here`, if it is one of this crate's.
    fn record(
        &mut self,
        path: &[String],
        here: &[String],
        declared: &BTreeSet<String>,
        file: &Path,
        line: usize,
    ) {
        if let Some(to) = absolute(path, here, declared) {
            let (from, file) = (here.to_vec(), file.to_path_buf());
            self.uses.push(Use {
                from,
                to,
                file,
                line,
            });
        }
    }
}

fn is_ident(t: Option<&(Tok, usize)>, name: &str) -> bool {
    matches!(t, Some((Tok::Ident(s), _)) if s == name)
}

fn is_punct(t: Option<&(Tok, usize)>, p: char) -> bool {
    matches!(t, Some((Tok::Punct(q), _)) if *q == p)
}

/// Index just past the bracket that closes the one at `open`.
fn close(toks: &Lexed, open: usize) -> usize {
    let mut depth = 0i32;
    let mut i = open;
    while i < toks.len() {
        match toks[i].0 {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    toks.len()
}

/// Whether the attribute `#[…]` starting at `at` is `#[cfg(test)]` or a `cfg` that needs `test`.
fn is_cfg_test(toks: &Lexed, at: usize, end: usize) -> bool {
    is_ident(toks.get(at + 2), "cfg")
        && toks[at..end]
            .iter()
            .any(|t| t.0 == Tok::Ident("test".into()))
        && !toks[at..end]
            .iter()
            .any(|t| t.0 == Tok::Ident("not".into()))
}

/// Index just past the item starting at `at` (after its attributes): a `use` to its `;`, anything else
/// to its first `;` or the end of its first `{…}` block.
fn skip_item(toks: &Lexed, mut at: usize) -> usize {
    while is_punct(toks.get(at), '#') && is_punct(toks.get(at + 1), '[') {
        at = close(toks, at + 1);
    }
    let mut head = at;
    if is_ident(toks.get(head), "pub") {
        head += 1;
        if is_punct(toks.get(head), '(') {
            head = close(toks, head);
        }
    }
    let is_use = is_ident(toks.get(head), "use");
    while at < toks.len() {
        match toks[at].0 {
            Tok::Punct(';') => return at + 1,
            Tok::Punct('(' | '[') => at = close(toks, at),
            Tok::Punct('{') if is_use => at = close(toks, at),
            Tok::Punct('{') => return close(toks, at),
            _ => at += 1,
        }
    }
    at
}

/// The paths of a `use` tree starting at `at`, and the index past it (a `{a, b::c}` group expands).
fn use_tree(toks: &Lexed, mut at: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(at).map(|t| &t.0) {
            Some(Tok::Ident(s)) if s == "as" => {
                at += 2;
                break;
            }
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                at += 1;
            }
            Some(Tok::Path) => at += 1,
            Some(Tok::Punct('*')) => at += 1,
            Some(Tok::Punct('{')) => {
                at += 1;
                while !is_punct(toks.get(at), '}') && at < toks.len() {
                    at = use_tree(toks, at, &path, out);
                    if is_punct(toks.get(at), ',') {
                        at += 1;
                    }
                }
                return at + 1;
            }
            _ => break,
        }
    }
    out.push(path);
    at
}

/// `path` as written in module `here` made absolute: `crate::`, `super::`, `self::`, or (in a `use`)
/// a name declared in `here`. `None` for other crates' paths.
fn absolute(path: &[String], here: &[String], declared: &BTreeSet<String>) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut base = here.to_vec();
    let mut rest = path;
    match first.as_str() {
        "crate" => {
            base.clear();
            rest = &path[1..];
        }
        "self" => rest = &path[1..],
        "super" => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        name if declared.contains(name) => {}
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Reads one file of module `here` (and the inline modules in it), declaring its modules and
/// recording its paths; files of `mod x;` are read in turn.
fn read_module(dir_of_children: &Path, file: &Path, here: Vec<String>, krate: &mut Crate) {
    let Ok(src) = std::fs::read_to_string(file) else {
        return;
    };
    let toks = lex(&src);
    krate.modules.insert(here.clone());
    // The module path at each brace depth: an inline `mod x {` pushes.
    let mut scopes: Vec<(Vec<String>, usize)> = vec![(here.clone(), 0)];
    let mut depth = 0;
    let declared: BTreeSet<String> = toks
        .windows(2)
        .filter_map(|w| match (&w[0].0, &w[1].0) {
            (Tok::Ident(m), Tok::Ident(name)) if m == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect();
    let mut i = 0;
    while i < toks.len() {
        let scope = scopes.last().map(|s| s.0.clone()).unwrap_or_default();
        match &toks[i].0 {
            Tok::Punct('#') if is_punct(toks.get(i + 1), '[') => {
                let end = close(&toks, i + 1);
                i = if is_cfg_test(&toks, i, end) {
                    skip_item(&toks, end)
                } else {
                    end
                };
            }
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if scopes.len() > 1 && scopes.last().map(|s| s.1) == Some(depth) {
                    scopes.pop();
                }
                depth -= 1;
                i += 1;
            }
            Tok::Ident(k) if k == "mod" => {
                let Some((Tok::Ident(name), _)) = toks.get(i + 1) else {
                    i += 1;
                    continue;
                };
                let mut child = scope.clone();
                child.push(name.clone());
                if is_punct(toks.get(i + 2), ';') && scopes.len() > 1 {
                    krate.modules.insert(child); // a file under an inline module: not followed
                    i += 3;
                } else if is_punct(toks.get(i + 2), ';') {
                    let (own, sub) = (
                        dir_of_children.join(format!("{name}.rs")),
                        dir_of_children.join(name),
                    );
                    let file = if own.exists() {
                        own
                    } else {
                        sub.join("mod.rs")
                    };
                    read_module(&sub, &file, child, krate);
                    i += 3;
                } else {
                    krate.modules.insert(child.clone());
                    depth += 1;
                    scopes.push((child, depth));
                    i += 3;
                }
            }
            Tok::Ident(k) if k == "use" => {
                let line = toks[i].1;
                let mut paths = Vec::new();
                let at = if toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path) {
                    i + 2
                } else {
                    i + 1
                };
                i = use_tree(&toks, at, &[], &mut paths);
                for p in paths {
                    krate.record(&p, &scope, &declared, file, line);
                }
            }
            Tok::Ident(k)
                if matches!(k.as_str(), "crate" | "super" | "self")
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path) =>
            {
                let line = toks[i].1;
                let mut p = vec![k.clone()];
                i += 1;
                while toks.get(i).map(|t| &t.0) == Some(&Tok::Path) {
                    match toks.get(i + 1) {
                        Some((Tok::Ident(s), _)) => p.push(s.clone()),
                        _ => break,
                    }
                    i += 2;
                }
                krate.record(&p, &scope, &BTreeSet::new(), file, line);
            }
            _ => i += 1,
        }
    }
}

/// The crate whose root file is `root` (`src/lib.rs`, `src/main.rs`).
fn read_crate(root: &Path) -> Crate {
    let mut krate = Crate::default();
    let dir = root.parent().unwrap_or(Path::new("."));
    read_module(dir, root, Vec::new(), &mut krate);
    krate
}

/// A module used by a module, at the grain of the listing: a top-level name, or `parent/part` for the
/// parts of `SPLIT` modules (`None` for the crate root and for a `SPLIT` module's own `mod.rs`).
type Edges = BTreeMap<String, BTreeMap<String, (PathBuf, usize)>>;

/// The module (declared in `krate`) that `path` lands in: its longest declared prefix.
fn module_of<'a>(krate: &'a Crate, path: &[String]) -> Option<&'a Vec<String>> {
    (1..=path.len())
        .rev()
        .find_map(|n| krate.modules.get(&path[..n]))
}

/// The graph of top-level modules (`parent` = `None`) or of the parts of one module.
fn graph(krate: &Crate, parent: Option<&str>) -> Edges {
    let node = |m: &[String]| -> Option<String> {
        match parent {
            None => m.first().cloned(),
            Some(p) if m.first().map(String::as_str) == Some(p) => m.get(1).cloned(),
            Some(_) => None,
        }
    };
    let mut edges = Edges::new();
    for m in &krate.modules {
        if let Some(n) = node(m) {
            edges.entry(n).or_default();
        }
    }
    for u in &krate.uses {
        let (Some(from), Some(to)) = (node(&u.from), module_of(krate, &u.to).and_then(|m| node(m)))
        else {
            continue;
        };
        let entry = edges.entry(from.clone()).or_default();
        if from != to {
            entry.entry(to).or_insert((u.file.clone(), u.line));
        }
    }
    edges
}

/// Each group of modules that reach each other (sorted), with one cycle through it (Tarjan's strongly
/// connected components, then the shortest walk inside the group back to its first module).
fn cycles(edges: &Edges) -> Vec<(Vec<String>, Vec<String>)> {
    struct State<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        groups: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flat_map(|m| m.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let at = s.stack.iter().rposition(|x| *x == v).expect("on the stack");
            let group: Vec<&str> = s.stack.split_off(at);
            if group.len() > 1 {
                s.groups.push(group);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        groups: vec![],
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    let mut out = Vec::new();
    for group in s.groups {
        let inside: BTreeSet<&str> = group.iter().copied().collect();
        let start = *inside.iter().next().expect("a group has modules");
        // Breadth-first from `start` to any module that uses `start`, inside the group: the shortest cycle.
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut end = None;
        while let Some(v) = queue.pop_front() {
            let next = edges
                .get(v)
                .into_iter()
                .flat_map(|m| m.keys())
                .map(String::as_str);
            if next.clone().any(|w| w == start) {
                end = Some(v);
                break;
            }
            for w in next.filter(|w| inside.contains(w)) {
                if w != start && !prev.contains_key(w) {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let mut path = vec![start.to_string()];
        let mut v = end.expect("a strongly connected group has a cycle through each module");
        while v != start {
            path.insert(1, v.to_string());
            v = prev[v];
        }
        path.push(start.to_string());
        out.push((inside.iter().map(|m| m.to_string()).collect(), path));
    }
    out
}

/// The listing of one graph (`module -> used, used`), and its cycles, each edge with the line that
/// makes it; a cycle in `known` (its modules, sorted) is listed but is not a problem.
fn report(title: &str, edges: &Edges, known: &[&str], root: &Path, out: &mut Listing) {
    let _ = writeln!(out.text, "{title}");
    for (from, to) in edges {
        let used: Vec<&str> = to.keys().map(String::as_str).collect();
        let used = if used.is_empty() {
            "(nothing)".to_string()
        } else {
            used.join(", ")
        };
        let _ = writeln!(out.text, "  {from} -> {used}");
    }
    for (group, cycle) in cycles(edges) {
        let mut why = format!("{title}: cycle {}", cycle.join(" → "));
        for w in cycle.windows(2) {
            let (file, line) = &edges[&w[0]][&w[1]];
            let file = file.strip_prefix(root).unwrap_or(file).display();
            let _ = write!(why, "\n    {} → {}: {file}:{line}", w[0], w[1]);
        }
        let _ = write!(why, "\n    (modules in it: {})", group.join(", "));
        if group == known {
            let _ = writeln!(out.text, "  known {why}");
            out.known.push(title.to_string());
        } else {
            out.problems.push(why);
        }
    }
}

/// What `listing` found.
#[derive(Default)]
struct Listing {
    text: String,
    /// One message per cycle not in `KNOWN_PART_CYCLES`.
    problems: Vec<String>,
    /// The titles of the graphs where a known cycle was found.
    known: Vec<String>,
}

/// The full listing for the crate at `root`.
fn listing(root: &Path) -> Listing {
    let mut out = Listing::default();
    for (name, file) in [("library", "src/lib.rs"), ("binary", "src/main.rs")] {
        let krate = read_crate(&root.join(file));
        let top = graph(&krate, None);
        if top.is_empty() {
            continue;
        }
        report(
            &format!("{name} ({file}): top-level modules"),
            &top,
            &[],
            root,
            &mut out,
        );
        for part in SPLIT {
            let inner = graph(&krate, Some(part));
            let known = KNOWN_PART_CYCLES
                .iter()
                .find(|k| k.0 == *part)
                .map_or(&[][..], |k| k.1);
            if !inner.is_empty() {
                report(
                    &format!("{name}: parts of {part}"),
                    &inner,
                    known,
                    root,
                    &mut out,
                );
            }
        }
    }
    out
}

fn repo_root() -> PathBuf {
    // Under cargo the manifest's folder; compiled alone by `scripts/deps`, the current folder.
    option_env!("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from)
}

#[test]
fn module_graph_has_no_cycle() {
    let root = repo_root();
    let found = listing(&root);
    println!("{}", found.text);
    let text = &found.text;
    assert!(
        text.contains(" -> "),
        "no module uses another: nothing read under {}",
        root.display()
    );
    assert!(
        found.problems.is_empty(),
        "module dependency cycles:\n{}",
        found.problems.join("\n")
    );
    for (part, _) in KNOWN_PART_CYCLES {
        let title = format!("library: parts of {part}");
        assert!(
            found.known.contains(&title),
            "the known cycle in {part} is gone: remove it from KNOWN_PART_CYCLES"
        );
    }
}

/// A crate written out to a temporary folder, read back as the real one is.
fn fake_crate(files: &[(&str, &str)]) -> (String, Vec<String>) {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("stipple-deps-{}-{n}", std::process::id()));
    for (path, src) in files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a file has a folder")).expect("temp folder");
        std::fs::write(file, src).expect("temp file");
    }
    let found = listing(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    (found.text, found.problems)
}

#[test]
fn a_cycle_is_named_with_the_lines_that_make_it() {
    let (text, problems) = fake_crate(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("src/a.rs", "use crate::b::X;\n"),
        (
            "src/b.rs",
            "pub struct X;\n\nfn f() -> crate::c::Y { todo!() }\n",
        ),
        ("src/c/mod.rs", "mod inner;\n"),
        (
            "src/c/inner.rs",
            "use super::super::{a, b};\npub struct Y;\n",
        ),
    ]);
    assert!(text.contains("a -> b"), "{text}");
    assert!(text.contains("c -> a, b"), "{text}");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("cycle a → b → c → a"),
        "{}",
        problems[0]
    );
    assert!(problems[0].contains("b → c: src/b.rs:3"), "{}", problems[0]);
}

#[test]
fn test_code_comments_strings_and_other_crates_are_not_uses() {
    let (text, problems) = fake_crate(&[
        ("src/lib.rs", "pub mod a;\npub mod b;\n"),
        ("src/a.rs", "use crate::b;\n"),
        (
            "src/b.rs",
            concat!(
                "//! See [`crate::a`].\n",
                "use std::fmt; use other::a;\n",
                "const S: &str = \"crate::a\"; const R: &str = r#\"crate::a\"#; const C: char = '{';\n",
                "#[cfg(test)]\nmod tests { use crate::a; }\n",
                "#[cfg(test)]\nuse crate::a::{X, Y};\n",
                "/* crate::a /* nested */ crate::a */\n",
                "fn f<'a>(x: &'a str) {}\n",
            ),
        ),
    ]);
    assert!(problems.is_empty(), "{problems:?}\n{text}");
    assert!(text.contains("a -> b"), "{text}");
    assert!(text.contains("b -> (nothing)"), "{text}");
}

#[test]
fn parts_of_a_split_module_get_their_own_listing() {
    let (text, problems) = fake_crate(&[
        ("src/lib.rs", "pub mod pipeline;\n"),
        (
            "src/pipeline/mod.rs",
            "pub mod x;\npub mod y;\npub use x::A;\n",
        ),
        ("src/pipeline/x.rs", "use super::y::B;\npub struct A;\n"),
        (
            "src/pipeline/y.rs",
            "pub struct B;\npub fn f() -> super::x::A { super::x::A }\n",
        ),
    ]);
    assert!(
        text.contains("parts of pipeline\n  x -> y\n  y -> x"),
        "{text}"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("parts of pipeline: cycle x → y → x"),
        "{}",
        problems[0]
    );
}
