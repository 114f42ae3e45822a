//! `arbiter txn ...`: find, inspect and fix transactions. One file per verb.

mod force;
mod ls;
mod resolve;
mod retry;
mod show;
mod watch;

use clap::{Args, Subcommand};

use crate::cli::connect::Conn;

#[derive(Debug, Args)]
pub struct TxnArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: TxnCommand,
}

#[derive(Debug, Subcommand)]
pub enum TxnCommand {
    /// List transactions (newest first).
    Ls(ls::LsArgs),
    /// Show one transaction: branches, errors, attempt history.
    Show(show::ShowArgs),
    /// Retry now, with the backoff reset: one transaction or every stuck one.
    Retry(retry::RetryArgs),
    /// Abort an undecided transaction (its branches are rolled back/cancelled).
    Abort(force::ForceArgs),
    /// Commit an undecided transaction whose every branch is prepared.
    Commit(force::ForceArgs),
    /// Mark one branch of a decided, stuck transaction as finished by hand.
    ResolveBranch(resolve::ResolveArgs),
    /// Print each change of one transaction as it happens, until it is final.
    Watch(watch::WatchArgs),
}

pub async fn run(args: TxnArgs) -> anyhow::Result<()> {
    let conn = &args.conn;
    match args.command {
        TxnCommand::Ls(a) => ls::run(conn, a).await,
        TxnCommand::Show(a) => show::run(conn, a).await,
        TxnCommand::Retry(a) => retry::run(conn, a).await,
        TxnCommand::Abort(a) => force::run(conn, a, false).await,
        TxnCommand::Commit(a) => force::run(conn, a, true).await,
        TxnCommand::ResolveBranch(a) => resolve::run(conn, a).await,
        TxnCommand::Watch(a) => watch::run(conn, a).await,
    }
}
