//! What every admin command shares: the coordinator address, the output
//! format, the gRPC client, confirmations, and exit codes
//! (0 ok, 1 failure, 2 usage error, 3 not found).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use arbiter_proto::v1::admin_client::AdminClient;
use clap::Args;
use tonic::transport::{Channel, Endpoint};

use crate::cli::output::Format;

#[derive(Debug, Args)]
pub struct Conn {
    /// Coordinator to talk to.
    #[arg(
        long,
        global = true,
        env = "ARBITER_ADDR",
        default_value = "http://127.0.0.1:7089"
    )]
    pub addr: String,
    /// Output: aligned table for people, JSON for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

impl Conn {
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let endpoint = Endpoint::from_shared(self.addr.clone())
            .map_err(|e| UsageError(format!("--addr {:?} is not a URI: {e}", self.addr)))?;
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.addr))?;
        Ok(AdminClient::new(channel))
    }
}

/// A mistake in how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The process exit code for a failed command.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<UsageError>() {
            return 2;
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return match status.code() {
                tonic::Code::NotFound => 3,
                tonic::Code::InvalidArgument => 2,
                _ => 1,
            };
        }
    }
    1
}

/// A one-line message for a person: the server's own message for a gRPC
/// error, the whole cause chain otherwise.
pub fn describe(error: &anyhow::Error) -> String {
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return match status.code() {
                tonic::Code::Unavailable => {
                    format!("coordinator unavailable: {}", status.message())
                }
                _ => status.message().to_string(),
            };
        }
    }
    format!("{error:#}")
}

/// Asks "question [y/N]" on a terminal; elsewhere (scripts) or with `--yes`
/// it goes ahead.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes || !std::io::stdin().is_terminal() {
        return Ok(());
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "{question} [y/N] ")?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("cancelled; nothing was changed")
    }
}
