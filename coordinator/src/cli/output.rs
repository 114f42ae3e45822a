//! How admin commands print: aligned tables for people (colour only on a
//! terminal), stable JSON for scripts, and human durations like `3m12s`.

use std::io::IsTerminal;

use arbiter_proto::v1 as pb;
use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Writes one line to stdout. When stdout is closed (`arbiter txn ls | head`),
/// the command ends quietly, as Unix tools do, instead of panicking.
pub fn line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("arbiter: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for admin commands: see [`line`].
macro_rules! say {
    () => {
        $crate::cli::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// Prints a value as pretty JSON on stdout.
pub fn json(value: &serde_json::Value) {
    say!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

/// One cell: text, and a colour to use on a terminal.
pub struct Cell {
    text: String,
    colour: Option<&'static str>,
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell { text, colour: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::from(text.to_string())
    }
}

impl Cell {
    pub fn coloured(text: impl Into<String>, colour: Option<&'static str>) -> Cell {
        Cell {
            text: text.into(),
            colour,
        }
    }
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Table {
        Table {
            headers,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let colour = std::io::stdout().is_terminal();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.text.chars().count());
                }
            }
        }
        let last = widths.len().saturating_sub(1);
        let header: Vec<String> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                if i == last {
                    h.to_string()
                } else {
                    format!("{h:<w$}", w = widths[i])
                }
            })
            .collect();
        say!("{}", header.join("  ").trim_end());
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    let pad = widths
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(cell.text.chars().count());
                    let padding = if i == last {
                        String::new()
                    } else {
                        " ".repeat(pad)
                    };
                    match (colour, cell.colour) {
                        (true, Some(code)) => format!("\x1b[{code}m{}\x1b[0m{padding}", cell.text),
                        _ => format!("{}{padding}", cell.text),
                    }
                })
                .collect();
            say!("{}", cells.join("  ").trim_end());
        }
    }
}

/// `850ms`, `12s`, `3m12s`, `2h05m`, `3d04h`.
pub fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

pub fn state_name(state: i32) -> &'static str {
    pb::TxnState::try_from(state).map_or("UNKNOWN", |s| {
        s.as_str_name().trim_start_matches("TXN_STATE_")
    })
}

/// For a saga: what its state means and where it is, e.g. "running: step 2"
/// or "compensating: step 3"; `None` for 2PC and TCC.
pub fn saga_position(txn: &pb::Transaction) -> Option<String> {
    if txn.mode != pb::Mode::Saga as i32 {
        return None;
    }
    let state = crate::server::convert::state_from_pb(txn.state).ok()?;
    let mut text = state.saga_name().to_string();
    if !txn.current_steps.is_empty() {
        text.push_str(&format!(": step {}", txn.current_steps.join(", ")));
    }
    Some(text)
}

pub fn state_colour(state: i32) -> Option<&'static str> {
    match pb::TxnState::try_from(state) {
        Ok(pb::TxnState::Committed) => Some("32"),
        Ok(pb::TxnState::Aborted) => Some("31"),
        Ok(pb::TxnState::Committing | pb::TxnState::Aborting) => Some("33"),
        _ => None,
    }
}

pub fn branch_state_name(state: i32) -> &'static str {
    pb::BranchState::try_from(state).map_or("UNKNOWN", |s| {
        s.as_str_name().trim_start_matches("BRANCH_STATE_")
    })
}

pub fn mode_name(mode: i32) -> &'static str {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::TwoPhase) => "2pc",
        Ok(pb::Mode::Tcc) => "tcc",
        Ok(pb::Mode::Saga) => "saga",
        _ => "?",
    }
}

/// Milliseconds since the epoch as UTC `YYYY-MM-DD HH:MM:SS.mmm`.
pub fn timestamp(ms: u64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_400), "12s");
        assert_eq!(age(192_000), "3m12s");
        assert_eq!(age(7_500_000), "2h05m");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    #[test]
    fn state_names_are_the_proto_names_without_prefix() {
        assert_eq!(state_name(pb::TxnState::Committing as i32), "COMMITTING");
        assert_eq!(
            branch_state_name(pb::BranchState::RolledBack as i32),
            "ROLLED_BACK"
        );
        assert_eq!(state_name(99), "UNKNOWN");
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14 22:13:20.123");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00.000");
    }
}
