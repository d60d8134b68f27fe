//! Plain aligned tables for the human output of read commands (`--json` gives the rest).

/// Renders rows (the first is the header) as left-aligned columns two spaces apart.
pub fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(String::len).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align() {
        let rows = vec![vec!["A".to_owned(), "BB".to_owned()], vec!["ccc".to_owned(), "d".to_owned()]];
        assert_eq!(super::render(&rows), "A    BB\nccc  d\n");
    }
}
