//! The console's HTML, rendered on the server (maud): a layout, the
//! overview, the transaction list, one transaction, the audit log, the login
//! form and error pages. No payload bytes and no secret are ever rendered.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::driver::Stats;
use crate::engine::{BranchState, Txn, TxnState};
use crate::store::AuditEntry;

use super::Interval;
use super::session::Session;

const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

/// Milliseconds since the epoch as an ISO time the script turns into local
/// time, with a relative age.
fn when(ms: Option<u64>) -> Markup {
    match ms {
        Some(ms) if ms > 0 => html! { time data-ms=(ms) { (iso(ms)) } },
        _ => html! { span.muted { "-" } },
    }
}

/// UTC, `YYYY-MM-DD HH:MM:SS` (the script shows local time).
pub fn iso(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn state_class(state: TxnState) -> &'static str {
    match state {
        TxnState::Committed => "ok",
        TxnState::Aborted => "bad",
        TxnState::Committing | TxnState::Aborting => "warn",
        _ => "info",
    }
}

/// A long id, shortened, with a copy button.
fn id_cell(id: &str, href: Option<&str>) -> Markup {
    let short = if id.chars().count() > 14 {
        let head: String = id.chars().take(6).collect();
        let tail: String = id
            .chars()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{head}…{tail}")
    } else {
        id.to_string()
    };
    html! {
        span.id title=(id) {
            @match href { Some(h) => a href=(h) { code { (short) } }, None => code { (short) } }
            button.copy type="button" data-copy=(id) aria-label="copy the id" title="copy the id" { "copy" }
        }
    }
}

pub fn layout(title: &str, session: Option<&Session>, live: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Arbiter" }
                style { (PreEscaped(STYLE)) }
            }
            body data-live=(if live { "1" } else { "0" }) {
                header {
                    a.brand href="/" { "Arbiter" }
                    @if let Some(s) = session {
                        nav {
                            a href="/" { "Overview" }
                            a href="/txns" { "Transactions" }
                            a href="/txns?stuck=1" { "Stuck" }
                            a href="/audit" { "Audit log" }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            span.user { (s.user) @if !s.can_act { " (read-only)" } }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main id="main" { (body) }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

pub fn login(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        false,
        html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.login method="post" action="/login" {
                label for="token" { "Token (an admin token acts; a coordinator token only looks)" }
                input id="token" type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Log in" }
            }
        },
    )
}

/// Throughput over the last minutes, as SVG bars (no script, no library).
fn throughput_chart(points: &[Interval]) -> Markup {
    let max = points.iter().map(|p| p.rate).fold(0.0_f64, f64::max);
    let (w, h) = (600.0, 100.0);
    let bar = w / points.len().max(1) as f64;
    html! {
        svg.chart viewBox="0 0 600 120" role="img" aria-label="transactions finished per second" {
            @for (i, p) in points.iter().enumerate() {
                @let height = if max > 0.0 { p.rate / max * h } else { 0.0 };
                rect x=(format!("{:.1}", i as f64 * bar + 1.0)) y=(format!("{:.1}", h - height + 5.0))
                    width=(format!("{:.1}", (bar - 2.0).max(1.0))) height=(format!("{:.1}", height)) {
                    title { (format!("{:.0} tx/s", p.rate)) }
                }
            }
            text x="4" y="118" { "last " (points.len() * 10 / 60) " min, 10 s per bar" }
            text x="596" y="118" text-anchor="end" { "max " (format!("{max:.0}")) " tx/s" }
        }
    }
}

/// Begin-to-end latency over the last minutes: p50 and p99 as SVG lines
/// (intervals where nothing finished leave a gap).
fn latency_chart(points: &[Interval]) -> Markup {
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let max = points
        .iter()
        .filter_map(|p| ms(p.p99))
        .fold(0.0_f64, f64::max);
    let (w, h) = (600.0, 100.0);
    let step = w / points.len().max(1) as f64;
    let line = |pick: &dyn Fn(&Interval) -> Option<f64>| -> String {
        points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let v = pick(p)?;
                let y = if max > 0.0 {
                    h - v / max * h + 5.0
                } else {
                    h + 5.0
                };
                Some(format!("{:.1},{:.1}", i as f64 * step + step / 2.0, y))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        svg.chart.latency viewBox="0 0 600 120" role="img" aria-label="transaction latency, p50 and p99" {
            polyline.p99 points=(line(&|p| ms(p.p99))) {}
            polyline.p50 points=(line(&|p| ms(p.p50))) {}
            text x="4" y="118" { "p50 (dark) and p99 (light), begin to final state, 10 s per point" }
            text x="596" y="118" text-anchor="end" { "max " (super::duration_text(max)) }
        }
    }
}

pub fn overview(stats: &Stats, points: &[Interval], session: &Session) -> Markup {
    let unfinished: u64 = stats.unfinished.iter().map(|(_, n)| n).sum();
    layout(
        "Overview",
        Some(session),
        true,
        html! {
            h1 { "Overview" }
            section.cards {
                div.card { span.big { (unfinished) } span { "unfinished" } }
                div.card.(if stats.stuck > 0 { "bad" } else { "ok" }) {
                    a href="/txns?stuck=1" { span.big { (stats.stuck) } span { "stuck" } }
                }
                div.card { span.big { (stats.committed_since_start) } span { "committed since start" } }
                div.card { span.big { (stats.aborted_since_start) } span { "aborted since start" } }
                div.card { span.big { (stats.retry_queue_depth) } span { "retries waiting" } }
                div.card { span.big { (super::age_text(stats.oldest_unfinished_age_ms)) } span { "oldest unfinished" } }
            }
            h2 { "Throughput (this node)" }
            @if points.is_empty() {
                p.muted { "Measured every 10 s: the charts start after the first 20 s." }
            } @else {
                (throughput_chart(points))
                h2 { "Latency (this node)" }
                @let last = points.last();
                p.muted {
                    "Last 10 s: p50 " (last.and_then(|p| p.p50).map_or("–".to_string(), |d| super::duration_text(d.as_secs_f64() * 1000.0)))
                    ", p99 " (last.and_then(|p| p.p99).map_or("–".to_string(), |d| super::duration_text(d.as_secs_f64() * 1000.0)))
                }
                (latency_chart(points))
            }
        h2 { "Unfinished by state" }
            table {
                thead { tr { th { "State" } th { "Count" } } }
                tbody {
                    @for (state, n) in &stats.unfinished {
                        tr {
                            td { a href={ "/txns?state=" (state.name()) } { span.state.(state_class(*state)) { (state.name()) } } }
                            td { (n) }
                        }
                    }
                }
            }
            @if stats.log_damaged_reads > 0 {
                p.error { (stats.log_damaged_reads) " damaged reads of the log since start: see the coordinator's log." }
            }
        },
    )
}

/// The list page; `query` is the filter as given (for paging links).
pub fn list(page: &super::ListPage, query: &str, session: &Session) -> Markup {
    layout(
        "Transactions",
        Some(session),
        true,
        html! {
            h1 { "Transactions" }
            form.filter method="get" action="/txns" {
                label { "State " select name="state" {
                    option value="" { "any" }
                    @for s in ["ACTIVE", "PREPARING", "COMMITTING", "ABORTING", "COMMITTED", "ABORTED"] {
                        option value=(s) selected[page.state.as_deref() == Some(s)] { (s) }
                    }
                } }
                label { "Mode " select name="mode" {
                    option value="" { "any" }
                    option value="2pc" selected[page.mode.as_deref() == Some("2pc")] { "2pc" }
                    option value="tcc" selected[page.mode.as_deref() == Some("tcc")] { "tcc" }
                    option value="saga" selected[page.mode.as_deref() == Some("saga")] { "saga" }
                } }
                label { input type="checkbox" name="stuck" value="1" checked[page.stuck]; " stuck only" }
                label { "Participant " input type="text" name="participant" value=(page.participant) placeholder="http://host:port"; }
                label { "Older than " input type="text" name="older_than" value=(page.older_than) placeholder="5m" size="5"; }
                button type="submit" { "Filter" }
            }
            @if page.txns.is_empty() {
                p.muted { "No transaction matches." }
            } @else {
                table.txns {
                    thead { tr { th { "ID" } th { "Mode" } th { "State" } th { "Created" } th { "Branches" } th { "Last error" } } }
                    tbody {
                        @for t in &page.txns {
                            tr {
                                td { (id_cell(&t.id, Some(&format!("/txns/{}", super::path_escape(&t.id))))) }
                                td { (t.mode.name()) }
                                td {
                                    span.state.(state_class(t.state)) { (t.state.name()) }
                                    @if t.stuck_since_ms.is_some() { " " span.state.bad { "STUCK" } }
                                }
                                td { (when(Some(t.created_at_ms))) }
                                td { (t.branches.len()) }
                                td.err { (t.branches.iter().filter_map(|b| b.last_error.as_deref()).next().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &page.next {
                p { a href={ "/txns?" (query) "&after=" (super::path_escape(next)) } { "Next page →" } }
            }
        },
    )
}

pub fn detail(txn: &Txn, owner: &str, audit: &[AuditEntry], session: &Session) -> Markup {
    let undecided = matches!(txn.state, TxnState::Active | TxnState::Preparing);
    let all_prepared = txn
        .branches
        .iter()
        .all(|b| matches!(b.state, BranchState::Prepared | BranchState::ReadOnly));
    let decided_unfinished = matches!(txn.state, TxnState::Committing | TxnState::Aborting);
    layout(
        &format!("Transaction {}", txn.id),
        Some(session),
        true,
        html! {
            h1 { "Transaction " (id_cell(&txn.id, None)) }
            dl.facts {
                dt { "State" } dd {
                    span.state.(state_class(txn.state)) id="txn-state" { (txn.state.name()) }
                    @if let Some(since) = txn.stuck_since_ms { " " span.state.bad { "STUCK" } " since " (when(Some(since))) }
                }
                dt { "Mode" } dd { (txn.mode.name()) }
                @if txn.mode == crate::engine::Mode::Saga {
                    dt { "Saga" } dd id="saga-position" {
                        (txn.state.saga_name())
                        @let steps = txn.current_steps();
                        @if !steps.is_empty() { ": step " (steps.join(", ")) }
                    }
                }
                @if !txn.reason.is_empty() { dt { "Reason" } dd { (txn.reason) } }
                dt { "Created" } dd { (when(Some(txn.created_at_ms))) }
                dt { "Decided" } dd { (when(txn.decided_at_ms)) }
                dt { "Finished" } dd { (when(txn.finished_at_ms)) }
                @if !owner.is_empty() { dt { "Driven by node" } dd { (owner) } }
            }
            @if session.can_act && !txn.state.is_final() {
                section.actions {
                    h2 { "Actions" }
                    @if !txn.state.is_final() && txn.state != TxnState::Active {
                        (action_form(txn, "retry", "Retry now", false, session))
                    }
                    @if undecided {
                        (action_form(txn, "abort", "Abort", true, session))
                        @if all_prepared && !txn.branches.is_empty() {
                            (action_form(txn, "commit", "Commit", true, session))
                        }
                    }
                }
            }
            h2 { "Branches" }
            @for b in &txn.branches {
                article.branch {
                    h3 { "Branch " code { (b.id) } " " span.state.(branch_class(b.state)) { (b.state.name()) } }
                    dl.facts {
                        dt { "Participant" } dd { code { (b.participant) } }
                        dt { "Resource" } dd { (b.resource) }
                        dt { "Attempts" } dd { (b.attempts) }
                        @if let Some(e) = &b.last_error { dt { "Last error" } dd.err { (e) } }
                        dt { "Next retry" } dd { (when(b.next_retry_at_ms)) }
                        @if let Some(h) = &b.heuristic { dt { "Resolved by hand" } dd { (h) } }
                        dt { "Payload" } dd { (b.payload.len()) " bytes "
                            a href={ "/txns/" (super::path_escape(&txn.id)) "/branches/" (super::path_escape(&b.id)) "/payload" } { "show" } }
                    }
                    @if !b.history.is_empty() {
                        table.history {
                            thead { tr { th { "When" } th { "Call" } th { "Attempt" } th { "Result" } } }
                            tbody { @for a in &b.history {
                                tr.(if a.ok { "ok" } else { "bad" }) {
                                    td { (when(Some(a.at_ms))) }
                                    td { (a.call.rpc_name(txn.mode)) }
                                    td { (a.attempt) }
                                    td { (a.result) }
                                }
                            } }
                        }
                    }
                    @if session.can_act && decided_unfinished && b.heuristic.is_none()
                        && !matches!(b.state, BranchState::Committed | BranchState::RolledBack | BranchState::ReadOnly) {
                        form.act method="post" action={ "/txns/" (super::path_escape(&txn.id)) "/branches/" (super::path_escape(&b.id)) "/resolve" }
                            data-confirm={ "Mark branch " (b.id) " as finished by hand? This is a heuristic outcome." } {
                            input type="hidden" name="csrf" value=(session.csrf);
                            label { "Resolve as " select name="as" {
                                option value="committed" { "committed" }
                                option value="rolled-back" { "rolled back" }
                            } }
                            input type="text" name="reason" placeholder="why (required)" required;
                            button type="submit" { "Resolve branch" }
                        }
                    }
                }
            }
            h2 { "Audit" }
            @if audit.is_empty() { p.muted { "No operator action on this transaction." } }
            @else { (audit_table(audit)) }
        },
    )
}

fn branch_class(state: BranchState) -> &'static str {
    match state {
        BranchState::Committed | BranchState::ReadOnly => "ok",
        BranchState::RolledBack | BranchState::Rejected => "bad",
        BranchState::Prepared => "warn",
        BranchState::Registered => "info",
    }
}

fn action_form(txn: &Txn, action: &str, label: &str, reason: bool, session: &Session) -> Markup {
    html! {
        form.act method="post" action={ "/txns/" (super::path_escape(&txn.id)) "/" (action) }
            data-confirm={ (label) " transaction " (txn.id) "?" } {
            input type="hidden" name="csrf" value=(session.csrf);
            @if reason { input type="text" name="reason" placeholder="why (required)" required; }
            button type="submit" id={ "act-" (action) } { (label) }
        }
    }
}

fn audit_table(entries: &[AuditEntry]) -> Markup {
    html! {
        table.audit {
            thead { tr { th { "When" } th { "Action" } th { "Transaction" } th { "Branch" } th { "Who" } th { "Reason" } th { "Result" } } }
            tbody { @for e in entries {
                tr {
                    td { (when(Some(e.at_ms))) }
                    td { (e.action) }
                    td { @if !e.txn_id.is_empty() { (id_cell(&e.txn_id, Some(&format!("/txns/{}", super::path_escape(&e.txn_id))))) } }
                    td { (e.branch_id) }
                    td { (e.caller) }
                    td { (e.reason) }
                    td { (e.result) }
                }
            } }
        }
    }
}

pub fn audit(entries: &[AuditEntry], session: &Session) -> Markup {
    layout(
        "Audit log",
        Some(session),
        true,
        html! {
            h1 { "Audit log" }
            @if entries.is_empty() { p.muted { "Nothing yet." } } @else { (audit_table(entries)) }
        },
    )
}

pub fn payload(txn_id: &str, branch_id: &str, payload: &[u8], session: &Session) -> Markup {
    layout(
        "Payload",
        Some(session),
        false,
        html! {
            h1 { "Payload of branch " code { (branch_id) } " of " (id_cell(txn_id, Some(&format!("/txns/{}", super::path_escape(txn_id))))) }
            @match std::str::from_utf8(payload) {
                Ok(text) => pre.payload { (text) },
                Err(_) => pre.payload { (crate::driver::ids::hex(payload)) },
            }
        },
    )
}

pub fn message(title: &str, text: &str, session: Option<&Session>) -> Markup {
    layout(
        title,
        session,
        false,
        html! {
            h1 { (title) }
            p.error role="alert" { (text) }
            p { a href="/" { "Back to the overview" } }
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_render_as_utc() {
        assert_eq!(super::iso(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::iso(1_796_036_645_000), "2026-11-30 11:04:05 UTC");
    }
}
