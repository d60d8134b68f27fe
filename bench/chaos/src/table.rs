//! The campaign's table: one row per fault, then the line the issue asks for last:
//! `chaos: <runs> runs, <lost> records lost, <stuck> stuck without a reason`.

use std::fmt::Write;

use crate::fault::ALL;
use crate::run::Outcome;

/// Nearest-rank percentile of sorted `v` (`p` in 0..=100).
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// The table (markdown) and the final line.
pub fn render(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| fault | runs | completed | visibly stuck | stuck, no reason | records lost | accepted loss | fsck bad | two writers | runs with workload I/O errors | harness errors | drain p50 | drain p99 |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut names: Vec<&str> = ALL.iter().map(|f| f.name()).collect();
    for o in outcomes {
        if !names.contains(&o.fault.as_str()) {
            names.push(&o.fault);
        }
    }
    let secs = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.1} s"));
    for name in names {
        let rows: Vec<&Outcome> = outcomes.iter().filter(|o| o.fault == name).collect();
        if rows.is_empty() {
            continue;
        }
        let count = |f: &dyn Fn(&Outcome) -> bool| rows.iter().filter(|o| f(o)).count();
        let mut times: Vec<f64> = rows.iter().filter_map(|o| o.drain_s).collect();
        times.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            rows.len(),
            count(&|o| o.completed),
            count(&|o| o.stuck && o.stuck_reason.is_some()),
            count(&|o| o.stuck && o.stuck_reason.is_none()),
            rows.iter().map(|o| o.records_lost).sum::<usize>(),
            rows.iter().map(|o| o.accepted_loss).sum::<usize>(),
            count(&|o| !o.fsck_clean),
            count(&|o| !o.two_writers.is_empty()),
            count(&|o| o.io_errors > 0),
            count(&|o| o.error.is_some()),
            secs(percentile(&times, 50.0)),
            secs(percentile(&times, 99.0)),
        );
    }
    let lost: usize = outcomes.iter().map(|o| o.records_lost).sum();
    let silent = outcomes.iter().filter(|o| o.stuck && o.stuck_reason.is_none()).count();
    let gone: usize = outcomes.iter().map(|o| o.gone_with_source).sum();
    let unverified: usize = outcomes.iter().map(|o| o.unverified).sum();
    let _ = writeln!(
        s,
        "\nalso: {gone} records unreadable after the source was declared lost mid-hydration, {unverified} not checkable in stuck runs, {} runs with two writers, {} with fsck errors, {} harness errors",
        outcomes.iter().filter(|o| !o.two_writers.is_empty()).count(),
        outcomes.iter().filter(|o| !o.fsck_clean).count(),
        outcomes.iter().filter(|o| o.error.is_some()).count(),
    );
    let _ = writeln!(s, "chaos: {} runs, {lost} records lost, {silent} stuck without a reason", outcomes.len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.0));
        assert_eq!(percentile(&v, 99.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn the_last_line_counts_runs_lost_records_and_silent_stucks_only() {
        let run = |fault: &str, f: &dyn Fn(&mut Outcome)| {
            let mut o = Outcome { fault: fault.to_owned(), fsck_clean: true, ..Outcome::default() };
            f(&mut o);
            o
        };
        let outcomes = [
            run("kill-holder", &|o| {
                o.completed = true;
                o.drain_s = Some(7.0);
            }),
            run("kill-holder", &|o| o.records_lost = 3),
            run("lose-holder", &|o| {
                o.stuck = true;
                o.stuck_reason = Some("v1: stranded on node4".to_owned());
                o.accepted_loss = 40;
            }),
            run("partition", &|o| o.stuck = true),
        ];
        let text = render(&outcomes);
        let last = text.lines().last().unwrap();
        assert_eq!(last, "chaos: 4 runs, 3 records lost, 1 stuck without a reason");
        assert!(text.contains("| kill-holder | 2 | 1 | 0 | 0 | 3 | 0 | 0 | 0 | 0 | 0 | 7.0 s | 7.0 s |"), "{text}");
        assert!(text.contains("| lose-holder | 1 | 0 | 1 | 0 | 0 | 40 |"), "{text}");
    }
}
