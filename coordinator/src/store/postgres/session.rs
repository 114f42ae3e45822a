//! Reaching PostgreSQL: the connection settings (and how they are shown,
//! never with a password), the store's own runtime thread, which failures
//! are passing, the schema migrations, and the writer's session, through
//! which every write goes, fenced by ownership (see [`WriterSession::write`]).

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls, Statement};

use crate::store::StoreError;
use crate::store::record::Op;

/// The schema this binary writes; each migration step moves one up.
pub const SCHEMA: i32 = 3;

/// Statements that take the schema from version `n` to `n + 1` (index `n`).
/// Released steps never change; a new one is added at the end.
const MIGRATIONS: [&str; SCHEMA as usize] = [
    "CREATE TABLE arbiter_kv (k bytea PRIMARY KEY, v bytea NOT NULL)",
    "CREATE TABLE arbiter_nodes (node_id text PRIMARY KEY, address text NOT NULL, \
     epoch bigint NOT NULL, lease_until timestamptz NOT NULL, joined_at timestamptz NOT NULL)",
    "CREATE TABLE arbiter_owners (txn_id text PRIMARY KEY, node_id text NOT NULL, \
     epoch bigint NOT NULL, claim bigint NOT NULL DEFAULT 0); \
     CREATE INDEX arbiter_owners_node ON arbiter_owners (node_id, epoch); \
     CREATE SEQUENCE arbiter_claims; \
     ALTER TABLE arbiter_nodes ADD COLUMN alive_since timestamptz NOT NULL DEFAULT now(); \
     INSERT INTO arbiter_owners (txn_id, node_id, epoch) \
       SELECT encode(substring(k FROM 2), 'escape'), '', 0 FROM arbiter_kv \
       WHERE k >= '\\x02'::bytea AND k < '\\x03'::bytea",
];

/// Locks the owner rows of a batch's transactions that this node holds at
/// its epoch under the claim each record was written with: a takeover
/// (`FOR UPDATE SKIP LOCKED`) waits for the batch, or passes these rows by;
/// one that came first has changed them already. In id order, as every
/// statement here locks, so two nodes' batches never deadlock.
const LOCK_OWNED: &str = "SELECT o.txn_id, o.claim FROM arbiter_owners o \
                          JOIN unnest($1::text[], $4::bigint[]) AS t(id, claim) \
                            ON o.txn_id = t.id AND o.claim = t.claim \
                          WHERE o.node_id = $2 AND o.epoch = $3 \
                          ORDER BY o.txn_id FOR UPDATE OF o";

/// A new transaction's record is inserted first, and only where no record
/// of that id exists: the key is the lock, so of two nodes beginning the
/// same client-chosen id at once one wins and the other is fenced, even if
/// the winner's transaction is already over. Only while this node's lease
/// runs: a node whose lease ran out (paused, cut off) may have its
/// transactions claimed any moment, and starts none until renewed.
const CREATE_RECORDS: &str = "INSERT INTO arbiter_kv (k, v) \
                              SELECT t.k, t.v FROM unnest($1::bytea[], $2::bytea[]) AS t(k, v) \
                              WHERE EXISTS (SELECT 1 FROM arbiter_nodes n WHERE n.node_id = $3 \
                                AND n.epoch = $4 AND n.lease_until > clock_timestamp()) \
                              ORDER BY t.k ON CONFLICT (k) DO NOTHING RETURNING k";

/// ... and this node becomes their owner (claim 0).
const CREATE_OWNED: &str = "INSERT INTO arbiter_owners (txn_id, node_id, epoch, claim) \
                            SELECT t.id, $2, $3, 0 FROM unnest($1::text[]) AS t(id) \
                            ORDER BY t.id ON CONFLICT (txn_id) DO NOTHING RETURNING txn_id";

/// A final transaction has no owner.
const RELEASE_OWNED: &str = "DELETE FROM arbiter_owners WHERE txn_id = ANY($1::text[])";

/// The batch statement: one round trip, atomic on its own, durable when it
/// returns (with `synchronous_commit` on). The `DELETE` in the `WITH` runs
/// even though its result is not read.
const BATCH: &str = "WITH gone AS (DELETE FROM arbiter_kv WHERE k = ANY($3::bytea[])) \
                     INSERT INTO arbiter_kv (k, v) \
                     SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v";

/// The connection settings of `--store`, with timeouts that keep a dead or
/// silent server from holding a caller for long.
pub fn config(url: &str) -> Result<Config, StoreError> {
    let mut config = Config::from_str(url)
        .map_err(|e| StoreError::Refused(format!("--store is not a PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(10));
    }
    config.keepalives_idle(Duration::from_secs(10));
    // On the server's side of every session: a session left hanging (its
    // client cut off) gives its locks back within seconds, not hours; no
    // statement waits on a lock for long; and every statement is planned
    // for its own arguments (a plan made while the tables were empty would
    // scan them whole once they are not).
    let ours = "-c idle_in_transaction_session_timeout=15000 -c lock_timeout=10000 \
                -c statement_timeout=30000 -c tcp_keepalives_idle=10 \
                -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 \
                -c plan_cache_mode=force_custom_plan";
    let options = match config.get_options() {
        Some(given) if !given.is_empty() => format!("{ours} {given}"),
        _ => ours.to_string(),
    };
    config.options(options);
    Ok(config)
}

/// `postgres://user@host:port/db` built from the parsed settings: never a
/// password, however the URL carried one.
pub fn describe(config: &Config) -> String {
    // A password with an unescaped '@' ends up in what parses as the host.
    let unclear = config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, Host::Tcp(name) if name.contains('@')));
    if unclear {
        return "(--store with an unescaped '@'; write it as %40)".into();
    }
    let user = config.get_user().unwrap_or("");
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            #[cfg(unix)]
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{}/{db}", hosts.join(","))
}

/// What `--store` names, for messages: described, or a placeholder when
/// it does not parse (its text may hold a password).
pub fn redacted(url: &str) -> String {
    Config::from_str(url).map_or_else(|_| "(unparsable --store)".into(), |c| describe(&c))
}

/// A current-thread runtime on a thread of its own, running until the
/// returned sender is dropped.
pub fn runtime_thread()
-> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StoreError::io("starting the PostgreSQL runtime"))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("arbiter-postgres".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(StoreError::io("starting the PostgreSQL thread"))?;
    Ok((handle, stop))
}

/// Runs `work` on `runtime` and waits for it on this thread. Inside a
/// multi-threaded tokio runtime the wait is announced (`block_in_place`), so
/// the other tasks of that worker move elsewhere meanwhile.
pub fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (done, result) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = done.send(work.await);
    });
    let wait = || result.recv().map_err(|_| StoreError::Closed);
    let in_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if in_worker {
        tokio::task::block_in_place(wait)?
    } else {
        wait()?
    }
}

/// A PostgreSQL failure: [`StoreError::Unreachable`] when the server is gone
/// for now (the connection closed, refused or timed out; the server shutting
/// down, starting up or out of connections), so the writer retries;
/// [`StoreError::Io`] for anything else, which stops the coordinator.
pub fn pg_error(op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        let passing_code = e.code().is_some_and(|code| {
            matches!(
                code.code(),
                // connection lost or refused; server shutting down or
                // starting; too many connections; a deadlock or a lock or
                // statement timeout (the batch rolled back: written again)
                "08000"
                    | "08001"
                    | "08003"
                    | "08006"
                    | "57P01"
                    | "57P02"
                    | "57P03"
                    | "53300"
                    | "40P01"
                    | "40001"
                    | "55P03"
                    | "57014"
                    | "25P03"
            )
        });
        if e.is_closed() || io || passing_code || e.to_string().contains("timed out") {
            StoreError::Unreachable(format!("{op}: {e}"))
        } else {
            StoreError::Io {
                op,
                message: e.to_string(),
            }
        }
    }
}

pub fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error("connecting to PostgreSQL")(e),
        other => StoreError::Unreachable(format!("connecting to PostgreSQL: {other}")),
    }
}

/// One transaction's share of a batch.
pub struct TxnWrite {
    pub id: String,
    /// Where its record lives: a new transaction's must not exist yet.
    pub header_key: Vec<u8>,
    pub creates: bool,
    pub finishes: bool,
    pub claim: i64,
    pub ops: Vec<Op>,
}

/// The connection every write goes through, reconnecting after PostgreSQL
/// restarts.
pub struct WriterSession {
    config: Config,
    live: Option<Client>,
    /// The batch's statements, prepared on the first write of a session
    /// (the tables may not exist before the migration).
    statements: Option<[Statement; 5]>,
    /// The last write failed: the next one is the same batch again.
    failed: bool,
}

impl WriterSession {
    pub fn new(config: Config) -> WriterSession {
        WriterSession {
            config,
            live: None,
            statements: None,
            failed: false,
        }
    }

    /// Connects and checks the durability settings.
    pub async fn open(&mut self) -> Result<(), StoreError> {
        if self.live.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.live = None;
        self.statements = None;
        let connecting = pg_error("connecting to PostgreSQL");
        let (client, connection) = self.config.connect(NoTls).await.map_err(&connecting)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the PostgreSQL session of the log writer ended");
            }
        });
        let checking = pg_error("checking the durability settings");
        let settings = client
            .query_one(
                "SELECT current_setting('synchronous_commit'), current_setting('fsync')",
                &[],
            )
            .await
            .map_err(&checking)?;
        let (synchronous_commit, fsync): (String, String) = (settings.get(0), settings.get(1));
        if synchronous_commit == "off" {
            return Err(StoreError::Refused(
                "synchronous_commit is off for this session: PostgreSQL would acknowledge \
                 commits it can still lose. Set it to on (README, \"Running on PostgreSQL\")"
                    .into(),
            ));
        }
        if fsync != "on" {
            tracing::warn!(
                "PostgreSQL runs with fsync off: a crash of its machine can lose acknowledged decisions"
            );
        }
        self.live = Some(client);
        Ok(())
    }

    /// Writes one batch as one PostgreSQL transaction, all or none: the
    /// `shared` ops, and the ops of each transaction that `node` owns at
    /// `epoch` under the record's claim (or creates). Returns the
    /// transactions (with claims) it left out because they are not.
    pub async fn write(
        &mut self,
        node: &str,
        epoch: i64,
        txns: Vec<TxnWrite>,
        shared: Vec<Op>,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        if let Err(e) = self.open().await {
            self.failed = true;
            return Err(e);
        }
        // After a failed attempt the writer sends the same batch again.
        let again = std::mem::take(&mut self.failed);
        let result = self.write_open(node, epoch, txns, shared, again).await;
        if self.live.as_ref().is_none_or(|c| c.is_closed()) {
            self.live = None;
            self.statements = None;
        }
        self.failed = result.is_err();
        if result.is_ok() && crate::failpoints::failing("pg-commit-answer-lost") {
            // Committed, but as if the answer had been lost on the way.
            self.failed = true;
            return Err(StoreError::Unreachable(
                "failpoint pg-commit-answer-lost".into(),
            ));
        }
        result.map_err(pg_error("writing the log"))
    }

    async fn write_open(
        &mut self,
        node: &str,
        epoch: i64,
        mut txns: Vec<TxnWrite>,
        shared: Vec<Op>,
        again: bool,
    ) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
        let Some(client) = &mut self.live else {
            return Ok(Vec::new());
        };
        let statements = match &self.statements {
            Some(statements) => statements.clone(),
            None => {
                let statements = [
                    client.prepare(LOCK_OWNED).await?,
                    client.prepare(CREATE_RECORDS).await?,
                    client.prepare(CREATE_OWNED).await?,
                    client.prepare(RELEASE_OWNED).await?,
                    client.prepare(BATCH).await?,
                ];
                self.statements = Some(statements.clone());
                statements
            }
        };
        let [lock, create_records, create_owned, release, batch] = &statements;
        txns.sort_by(|a, b| (&a.id, a.claim).cmp(&(&b.id, b.claim)));
        let tx = client.transaction().await?;
        let mut owned: std::collections::HashSet<(String, i64)> = Default::default();
        let (ids, claims): (Vec<&str>, Vec<i64>) =
            txns.iter().map(|t| (t.id.as_str(), t.claim)).unzip();
        if !ids.is_empty() {
            for row in tx.query(lock, &[&ids, &node, &epoch, &claims]).await? {
                owned.insert((row.get(0), row.get(1)));
            }
        }
        let new: Vec<&TxnWrite> = txns
            .iter()
            .filter(|t| t.creates && !owned.contains(&(t.id.clone(), t.claim)))
            .collect();
        let created = create(&tx, [create_records, create_owned], &new, node, epoch).await?;
        owned.extend(created.into_iter().map(|id| (id, 0)));
        let finished: Vec<&str> = txns
            .iter()
            .filter(|t| t.finishes && owned.contains(&(t.id.clone(), t.claim)))
            .map(|t| t.id.as_str())
            .collect();
        if !finished.is_empty() {
            tx.execute(release, &[&finished]).await?;
        }
        let already = if again {
            already_written(&tx, &txns, &owned).await?
        } else {
            Default::default()
        };
        let mut fenced = Vec::new();
        let mut ops = Vec::new();
        for txn in txns {
            if owned.contains(&(txn.id.clone(), txn.claim)) {
                ops.extend(txn.ops);
            } else if !already.contains(&txn.header_key) {
                fenced.push((txn.id, txn.claim));
            }
        }
        ops.extend(shared);
        let (put_keys, put_values, deletes) = last_op_per_key(ops);
        if !put_keys.is_empty() || !deletes.is_empty() {
            tx.execute(batch, &[&put_keys, &put_values, &deletes])
                .await?;
        }
        tx.commit().await?;
        Ok(fenced)
    }
}

/// On a batch sent again after a failed attempt: the header keys of
/// transactions not owned here whose record in the log is already exactly
/// the one this batch writes, because the earlier attempt committed before
/// its answer was lost (and released the owner of a finished transaction).
/// Such a record is written, not refused.
async fn already_written(
    tx: &tokio_postgres::Transaction<'_>,
    txns: &[TxnWrite],
    owned: &std::collections::HashSet<(String, i64)>,
) -> Result<std::collections::HashSet<Vec<u8>>, tokio_postgres::Error> {
    let mut wanted = std::collections::HashMap::new();
    for txn in txns {
        if owned.contains(&(txn.id.clone(), txn.claim)) {
            continue;
        }
        if let Some(value) = header_value(txn) {
            wanted.insert(txn.header_key.clone(), value);
        }
    }
    if wanted.is_empty() {
        return Ok(Default::default());
    }
    let keys: Vec<&Vec<u8>> = wanted.keys().collect();
    let rows = tx
        .query(
            "SELECT k, v FROM arbiter_kv WHERE k = ANY($1::bytea[])",
            &[&keys],
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let (k, v): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
            (wanted.get(&k).is_some_and(|w| **w == v)).then_some(k)
        })
        .collect())
}

/// The record (header) value a transaction's ops write, if they write one.
fn header_value(txn: &TxnWrite) -> Option<&Vec<u8>> {
    txn.ops.iter().rev().find_map(|op| match op {
        Op::Put(k, v) if *k == txn.header_key => Some(v),
        _ => None,
    })
}

/// Creates the new transactions of `txns` (records first, then owners);
/// returns the ids this node now owns.
async fn create(
    tx: &tokio_postgres::Transaction<'_>,
    [records, owners]: [&Statement; 2],
    txns: &[&TxnWrite],
    node: &str,
    epoch: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut id_of = std::collections::HashMap::new();
    for txn in txns {
        if let Some(value) = header_value(txn) {
            keys.push(txn.header_key.as_slice());
            values.push(value.as_slice());
            id_of.insert(txn.header_key.clone(), txn.id.clone());
        }
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut new = Vec::new();
    for row in tx.query(records, &[&keys, &values, &node, &epoch]).await? {
        let key: Vec<u8> = row.get(0);
        if let Some(id) = id_of.remove(&key) {
            new.push(id);
        }
    }
    if new.is_empty() {
        return Ok(new);
    }
    let rows = tx.query(owners, &[&new, &node, &epoch]).await?;
    Ok(rows.into_iter().map(|row| row.get(0)).collect())
}

/// Keys (or values) as one statement argument.
type Column = Vec<Vec<u8>>;

/// The puts (keys, values) and deletes of `ops`, the last op on a key
/// winning: one statement may not touch a row twice.
fn last_op_per_key(ops: Vec<Op>) -> (Column, Column, Column) {
    let mut last: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
    for op in ops {
        match op {
            Op::Put(k, v) => last.insert(k, Some(v)),
            Op::Delete(k) => last.insert(k, None),
        };
    }
    let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    for (k, v) in last {
        match v {
            Some(v) => {
                put_keys.push(k);
                put_values.push(v);
            }
            None => deletes.push(k),
        }
    }
    (put_keys, put_values, deletes)
}

/// Creates or migrates the schema; refuses one newer than this binary.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let migrating = pg_error("migrating the schema");
    let tx = client.transaction().await.map_err(&migrating)?;
    // One node migrates at a time; the others wait here.
    tx.execute("SELECT pg_advisory_xact_lock(7089)", &[])
        .await
        .map_err(&migrating)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS arbiter_schema (version integer NOT NULL)")
        .await
        .map_err(&migrating)?;
    let version: i32 = match tx
        .query_opt("SELECT version FROM arbiter_schema", &[])
        .await
        .map_err(&migrating)?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO arbiter_schema (version) VALUES (0)", &[])
                .await
                .map_err(&migrating)?;
            0
        }
    };
    if version > SCHEMA {
        return Err(StoreError::Refused(format!(
            "the database's Arbiter schema is version {version}, newer than this \
             binary's ({SCHEMA}); run the newer release"
        )));
    }
    for (n, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.batch_execute(step).await.map_err(&migrating)?;
        tracing::info!(from = n, to = n + 1, "migrated the PostgreSQL schema");
    }
    tx.execute("UPDATE arbiter_schema SET version = $1", &[&SCHEMA])
        .await
        .map_err(&migrating)?;
    tx.commit().await.map_err(&migrating)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_never_carry_a_password() {
        for url in [
            "postgres://u:secret@h:5433/db",
            "postgres://u:se@cret@h/db",
            "postgres://u@h/db?password=secret",
            "host=h user=u password=secret dbname=db",
        ] {
            let shown = redacted(url);
            assert!(
                !shown.contains("secret") && !shown.contains("cret"),
                "{url} -> {shown}"
            );
        }
        assert_eq!(
            redacted("postgres://u:p@h:5433/db"),
            "postgres://u@h:5433/db"
        );
        assert_eq!(redacted("not a url at all ="), "(unparsable --store)");
    }
}
