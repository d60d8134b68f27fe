//! The operations guide's runnable blocks (docs/operations.md, "How this guide is tested"):
//! shared by the root test that runs them and the unit test that checks the command lines
//! of the blocks it does not run.
#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;

/// One fenced ` ```sh ` block of the guide.
#[derive(Debug, Clone)]
pub struct Block {
    /// The machines the block runs on, in order (empty: not run by the test).
    pub on: Vec<String>,
    /// The block's text, as written.
    pub text: String,
    /// 1-based line of the opening fence, for messages.
    pub line: usize,
}

/// The guide's path in the repository.
pub fn path() -> PathBuf {
    doc("docs/operations.md")
}

/// A document of the repository by its path there.
pub fn doc(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Every ` ```sh ` block of `markdown`, with the machines of the `<!-- guide: on=... -->`
/// comment on the line before it (blank lines between them are allowed).
pub fn blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut out = Vec::new();
    let mut pending: Option<Vec<String>> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(rest) = line.strip_prefix("<!-- guide:") {
            let spec = rest.trim_end_matches("-->").trim();
            let on = spec.strip_prefix("on=").unwrap_or_else(|| panic!("line {}: want `on=...`: {line}", i + 1));
            pending = Some(on.split(',').map(|s| s.trim().to_owned()).collect());
        } else if line == "```sh" {
            let start = i + 1;
            let mut text = String::new();
            i += 1;
            while i < lines.len() && lines[i].trim() != "```" {
                text.push_str(lines[i]);
                text.push('\n');
                i += 1;
            }
            out.push(Block { on: pending.take().unwrap_or_default(), text, line: start });
        } else if !line.is_empty() {
            assert!(pending.is_none(), "line {}: a guide comment must come right before a ```sh block", i + 1);
        }
        i += 1;
    }
    out
}

/// Every fenced block of `markdown` in `sh` or no language (the README and the reference
/// write command lists in both), as blocks that run nowhere, for checking their commands.
pub fn command_fences(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let fence = line.trim();
        if fence != "```" && fence != "```sh" {
            if fence.starts_with("```") {
                // A block in another language (toml, text): skip to its end.
                lines.by_ref().find(|(_, l)| l.trim() == "```");
            }
            continue;
        }
        let mut text = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        out.push(Block { on: Vec::new(), text, line: i + 1 });
    }
    out
}

/// The `meshdrain ...` command lines of a block, continuation lines joined, with the
/// quoting of a shell word list (`"$(hostname)"` stays one word).
pub fn meshdrain_commands(text: &str) -> Vec<Vec<String>> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim_end();
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(l);
            joined.push(std::mem::take(&mut cur));
        }
    }
    joined
        .iter()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("until ").unwrap_or(l);
            l.starts_with("meshdrain ").then(|| {
                words(l).into_iter().map(|w| w.trim_start_matches('[').trim_end_matches(']').to_owned()).collect()
            })
        })
        .collect()
}

/// Shell words of `line` up to a comment, pipe, `;`, `&&` or redirection.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match (quote, c) {
            (Some(q), _) if c == q && depth == 0 => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (_, '(') if i > 0 && chars[i - 1] == '$' => {
                depth += 1;
                cur.push(c);
            }
            (_, ')') if depth > 0 => {
                depth -= 1;
                cur.push(c);
            }
            (None, ' ') if depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            (None, '#' | '|' | ';' | '>' | '<' | '&') if depth == 0 && cur.is_empty() => break,
            _ => cur.push(c),
        }
        i += 1;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
