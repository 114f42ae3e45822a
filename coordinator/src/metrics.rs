//! Prometheus metrics (`--metrics-listen`, off by default). The driver and
//! the log writer record through the functions here; labels are the mode,
//! outcome, call kind and status code only, never transaction or branch ids.
//! Without an installed exporter every call is a no-op.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0,
];

/// Starts the exporter's HTTP listener (`GET /metrics`) on `addr`.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("arbiter_log_records_per_flush".into()),
                BATCH_BUCKETS,
            )
        })
        .map_err(|e| format!("metrics: {e}"))?
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    describe();
    Ok(())
}

fn describe() {
    describe_gauge!("arbiter_connections", "Client connections held now.");
    describe_counter!(
        "arbiter_log_unreachable_retries_total",
        "Group commits tried again because the store (PostgreSQL) was out of reach."
    );
    describe_counter!(
        "arbiter_heuristic_outcomes_total",
        "Transactions finished with a mixed outcome: a branch resolved by hand against the decision."
    );
    describe_gauge!(
        "arbiter_participant_channels",
        "Channels to participants held now (bounded; idle ones are closed)."
    );
    describe_counter!(
        "arbiter_connections_refused_total",
        "Connections closed on accept because --max-connections were held."
    );
    describe_counter!(
        "arbiter_connections_timed_out_total",
        "Connections closed for sending nothing within --handshake-timeout or --idle-timeout."
    );
    describe_counter!(
        "arbiter_requests_refused_total",
        "Requests failed while being received: why = read_timeout or memory."
    );
    describe_counter!(
        "arbiter_transactions_total",
        "Transactions finished, by mode and outcome."
    );
    describe_histogram!(
        "arbiter_transaction_duration_seconds",
        "From begin to final state, by mode and outcome."
    );
    describe_histogram!(
        "arbiter_phase_duration_seconds",
        "Per phase: decide = begin to durable decision; finish = decision to final state."
    );
    describe_counter!(
        "arbiter_branch_calls_total",
        "Calls to participants, by call, result code (OK, a gRPC code, or TIMEOUT; over HTTP: OK, HTTP_<status> or FAILED) and protocol (grpc, http)."
    );
    describe_histogram!(
        "arbiter_branch_call_duration_seconds",
        "Participant call latency, by call."
    );
    describe_counter!(
        "arbiter_retries_total",
        "Participant calls scheduled for retry, by call."
    );
    describe_gauge!(
        "arbiter_unfinished_transactions",
        "Transactions not yet final."
    );
    describe_gauge!(
        "arbiter_stuck_transactions",
        "Unfinished transactions flagged stuck."
    );
    describe_gauge!(
        "arbiter_recovery_pending",
        "Transactions found unfinished at start and not yet resumed."
    );
    describe_counter!(
        "arbiter_recovered_total",
        "Transactions resumed after a restart."
    );
    describe_histogram!(
        "arbiter_log_flush_seconds",
        "Group-commit write + flush + fdatasync time."
    );
    describe_histogram!(
        "arbiter_log_records_per_flush",
        "Records made durable by one flush."
    );
    describe_counter!(
        "arbiter_taken_over_total",
        "Unfinished transactions this node took over from coordinator nodes that were gone (cluster on PostgreSQL)."
    );
    describe_counter!(
        "arbiter_fenced_total",
        "Transactions this node let go of because another node took them over: their writes were refused (fenced)."
    );
    describe_counter!(
        "arbiter_notifications_total",
        "Webhook POSTs by result: delivered (2xx), failed (retried with backoff), expired (given up after the retention time)."
    );
    describe_counter!(
        "arbiter_log_damaged_reads_total",
        "Reads that met a damaged record (checksum or decoding failed); that transaction is reported, the rest served."
    );
}

pub fn transaction_finished(
    mode: &'static str,
    committed: bool,
    total: Duration,
    decide: Option<Duration>,
    finish: Option<Duration>,
) {
    let outcome = if committed { "committed" } else { "aborted" };
    counter!("arbiter_transactions_total", "mode" => mode, "outcome" => outcome).increment(1);
    histogram!("arbiter_transaction_duration_seconds", "mode" => mode, "outcome" => outcome)
        .record(total.as_secs_f64());
    if let Some(d) = decide {
        histogram!("arbiter_phase_duration_seconds", "phase" => "decide").record(d.as_secs_f64());
    }
    if let Some(d) = finish {
        histogram!("arbiter_phase_duration_seconds", "phase" => "finish").record(d.as_secs_f64());
    }
}

pub fn branch_call(call: &'static str, code: &'static str, took: Duration) {
    counter!("arbiter_branch_calls_total", "call" => call, "code" => code, "protocol" => "grpc")
        .increment(1);
    histogram!("arbiter_branch_call_duration_seconds", "call" => call, "protocol" => "grpc")
        .record(took.as_secs_f64());
}

/// A call to an HTTP/JSON participant; `code` is `OK`, `HTTP_<status>` or
/// `FAILED` (no answer).
pub fn branch_call_http(call: &'static str, code: String, took: Duration) {
    counter!("arbiter_branch_calls_total", "call" => call, "code" => code, "protocol" => "http")
        .increment(1);
    histogram!("arbiter_branch_call_duration_seconds", "call" => call, "protocol" => "http")
        .record(took.as_secs_f64());
}

pub fn retry(call: &'static str) {
    counter!("arbiter_retries_total", "call" => call).increment(1);
}

pub fn unfinished(unfinished: u64, stuck: u64) {
    gauge!("arbiter_unfinished_transactions").set(unfinished as f64);
    gauge!("arbiter_stuck_transactions").set(stuck as f64);
}

pub fn recovery_pending(pending: usize) {
    gauge!("arbiter_recovery_pending").set(pending as f64);
}

pub fn recovered(n: u64) {
    counter!("arbiter_recovered_total").increment(n);
}

pub fn taken_over(n: u64) {
    counter!("arbiter_taken_over_total").increment(n);
}

pub fn fenced_write() {
    counter!("arbiter_fenced_total").increment(1);
}

pub fn notification(result: &'static str) {
    counter!("arbiter_notifications_total", "result" => result).increment(1);
}

pub fn log_unreachable() {
    counter!("arbiter_log_unreachable_retries_total").increment(1);
}

pub fn heuristic_outcome(mode: &'static str) {
    counter!("arbiter_heuristic_outcomes_total", "mode" => mode).increment(1);
}

pub fn participant_channels(n: usize) {
    gauge!("arbiter_participant_channels").set(n as f64);
}

pub fn connection_opened() {
    gauge!("arbiter_connections").increment(1.0);
}

pub fn connection_closed() {
    gauge!("arbiter_connections").decrement(1.0);
}

pub fn connection_refused() {
    counter!("arbiter_connections_refused_total").increment(1);
}

pub fn connection_timed_out() {
    counter!("arbiter_connections_timed_out_total").increment(1);
}

pub fn request_refused(why: &'static str) {
    counter!("arbiter_requests_refused_total", "why" => why).increment(1);
}

pub fn log_damaged_read() {
    counter!("arbiter_log_damaged_reads_total").increment(1);
}

pub fn log_flush(took: Duration, records: usize) {
    histogram!("arbiter_log_flush_seconds").record(took.as_secs_f64());
    histogram!("arbiter_log_records_per_flush").record(records as f64);
}

/// The label for a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
