//! The transaction and branch records the engine works on. Plain data: the
//! log stores them in a schema of its own (`store::record`), converted at the
//! store's boundary, so these types can change freely.

/// How the coordinator talks to a transaction's participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Prepare, then commit or rollback.
    TwoPhase,
    /// Try, then confirm or cancel.
    Tcc,
    /// Steps in order, each an action with a compensation (see `engine::saga`).
    Saga,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::TwoPhase => "2pc",
            Mode::Tcc => "tcc",
            Mode::Saga => "saga",
        }
    }
}

/// How the coordinator calls a branch's participant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// The participant services of `participant.proto`, over gRPC.
    #[default]
    Grpc,
    /// A POST of JSON to `<participant>/<call>` (`driver::http`).
    HttpJson,
}

/// Where a transaction is in its life. See the diagram in `engine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    Active,
    Preparing,
    Committing,
    Aborting,
    Committed,
    Aborted,
}

impl TxnState {
    /// Committed or aborted: nothing is left to do.
    pub fn is_final(self) -> bool {
        matches!(self, TxnState::Committed | TxnState::Aborted)
    }

    /// The outcome is fixed (and, once published, durable).
    pub fn is_decided(self) -> bool {
        self.rank() >= 2
    }

    /// Position in the life cycle; never decreases for one transaction.
    pub fn rank(self) -> u8 {
        match self {
            TxnState::Active => 0,
            TxnState::Preparing => 1,
            TxnState::Committing | TxnState::Aborting => 2,
            TxnState::Committed | TxnState::Aborted => 3,
        }
    }

    /// What the state means for a saga (README, "Sagas").
    pub fn saga_name(self) -> &'static str {
        match self {
            TxnState::Active => "not started",
            TxnState::Preparing => "running",
            TxnState::Committing => "finishing (must-succeed steps)",
            TxnState::Committed => "completed",
            TxnState::Aborting => "compensating",
            TxnState::Aborted => "compensated",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TxnState::Active => "ACTIVE",
            TxnState::Preparing => "PREPARING",
            TxnState::Committing => "COMMITTING",
            TxnState::Aborting => "ABORTING",
            TxnState::Committed => "COMMITTED",
            TxnState::Aborted => "ABORTED",
        }
    }
}

/// Where one branch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchState {
    Registered,
    Prepared,
    ReadOnly,
    Rejected,
    Committed,
    RolledBack,
}

impl BranchState {
    pub fn name(self) -> &'static str {
        match self {
            BranchState::Registered => "REGISTERED",
            BranchState::Prepared => "PREPARED",
            BranchState::ReadOnly => "READ_ONLY",
            BranchState::Rejected => "REJECTED",
            BranchState::Committed => "COMMITTED",
            BranchState::RolledBack => "ROLLED_BACK",
        }
    }
}

/// One participant call site of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    pub id: String,
    /// Endpoint URI of the participant, already validated.
    pub participant: String,
    /// Name the participant routes on.
    pub resource: String,
    pub payload: Vec<u8>,
    pub call_timeout_ms: u64,
    pub state: BranchState,
    /// Calls made to this branch so far, all phases.
    pub attempts: u32,
    /// Calls made in the current phase; sent to the participant as `attempt`.
    pub phase_attempts: u32,
    pub last_error: Option<String>,
    /// Phase 1 may have run at the participant, so an abort must roll it back.
    pub prepare_sent: bool,
    /// When the current phase's calls to this branch started failing; `None`
    /// while they succeed.
    pub failing_since_ms: Option<u64>,
    /// The latest calls and what they returned, oldest first (at most
    /// [`MAX_HISTORY`]).
    pub history: Vec<Attempt>,
    /// Generation of the scheduled retry; a retry of an older generation is
    /// stale (an operator's RetryNow or a resolution replaced it).
    pub retry_seq: u32,
    /// `phase_attempts` when the backoff was last reset by an operator.
    pub backoff_from: u32,
    /// When the scheduled retry fires, if one is scheduled.
    pub next_retry_at_ms: Option<u64>,
    /// Set when an operator resolved this branch by hand (a heuristic
    /// outcome): who said what, shown forever.
    pub heuristic: Option<String>,
    /// A call to this branch is outstanding; its answer is still to come.
    /// Never persisted: after a restart nothing is in flight.
    pub in_flight: bool,
    /// What the participant sent back with its YES vote or ack, for the
    /// initiator (at most [`MAX_RESULT`] bytes).
    pub result: Vec<u8>,
    /// Saga steps only: the steps this one waits for (by branch id); empty
    /// means the step registered just before it.
    pub depends_on: Vec<String>,
    /// Saga steps only: waits for no other step.
    pub start_at_once: bool,
    /// Saga steps only: has no compensation; retried until it succeeds, and
    /// runs only after every compensable step succeeded.
    pub must_succeed: bool,
    pub protocol: Protocol,
    /// HTTP/JSON only: send the payload as JSON too, when it is.
    pub json_payload: bool,
}

/// The largest result a participant may send with a vote or ack.
pub const MAX_RESULT: usize = 4096;

impl Branch {
    pub fn new(
        id: String,
        participant: String,
        resource: String,
        payload: Vec<u8>,
        call_timeout_ms: u64,
    ) -> Self {
        Branch {
            id,
            participant,
            resource,
            payload,
            call_timeout_ms,
            state: BranchState::Registered,
            attempts: 0,
            phase_attempts: 0,
            last_error: None,
            prepare_sent: false,
            failing_since_ms: None,
            history: Vec::new(),
            retry_seq: 0,
            backoff_from: 0,
            next_retry_at_ms: None,
            heuristic: None,
            result: Vec::new(),
            in_flight: false,
            depends_on: Vec::new(),
            start_at_once: false,
            must_succeed: false,
            protocol: Protocol::Grpc,
            json_payload: false,
        }
    }

    /// Same registration (used to make client-chosen branch ids idempotent).
    pub fn same_spec(&self, other: &Branch) -> bool {
        self.participant == other.participant
            && self.resource == other.resource
            && self.payload == other.payload
            && self.call_timeout_ms == other.call_timeout_ms
            && self.depends_on == other.depends_on
            && self.start_at_once == other.start_at_once
            && self.must_succeed == other.must_succeed
            && self.protocol == other.protocol
            && self.json_payload == other.json_payload
    }
}

/// A whole transaction, as kept in memory and in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    pub id: String,
    pub mode: Mode,
    pub state: TxnState,
    /// Why it ended as it did; empty while nothing noteworthy happened.
    pub reason: String,
    pub timeout_ms: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub decided_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    /// Since when phase 2 has been failing past the stuck threshold; `None`
    /// when not stuck. Stuck transactions are still retried.
    pub stuck_since_ms: Option<u64>,
    pub branches: Vec<Branch>,
    /// The number of its last change (see `engine::changes`); 0 before the
    /// first one.
    pub seq: u64,
    /// Changes made since the driver last took them into a record.
    pub changes: Vec<super::Change>,
}

impl Txn {
    pub fn new(id: String, mode: Mode, timeout_ms: u64, now_ms: u64) -> Self {
        Txn {
            id,
            mode,
            state: TxnState::Active,
            reason: String::new(),
            timeout_ms,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            decided_at_ms: None,
            finished_at_ms: None,
            stuck_since_ms: None,
            branches: Vec::new(),
            seq: 0,
            changes: Vec::new(),
        }
    }

    /// The branches an operator resolved by hand against the decision
    /// (rolled back under a commit, committed under an abort): a heuristic,
    /// mixed outcome. Empty while undecided.
    pub fn mixed_branches(&self) -> Vec<&str> {
        let against = match self.state {
            TxnState::Committing | TxnState::Committed => BranchState::RolledBack,
            TxnState::Aborting | TxnState::Aborted => BranchState::Committed,
            TxnState::Active | TxnState::Preparing => return Vec::new(),
        };
        self.branches
            .iter()
            .filter(|b| b.heuristic.is_some() && b.state == against)
            .map(|b| b.id.as_str())
            .collect()
    }

    /// A saga's steps whose action (forward) or compensation (backward) has
    /// started and not finished: where it is. Empty for 2PC and TCC.
    pub fn current_steps(&self) -> Vec<&str> {
        if self.mode != Mode::Saga {
            return Vec::new();
        }
        self.branches
            .iter()
            .filter(|b| match self.state {
                TxnState::Preparing => b.prepare_sent && b.state == BranchState::Registered,
                TxnState::Committing => {
                    b.must_succeed
                        && b.prepare_sent
                        && b.heuristic.is_none()
                        && b.state != BranchState::Committed
                }
                // Compensation started (an action still out is not one).
                TxnState::Aborting => {
                    b.prepare_sent
                        && !b.must_succeed
                        && !matches!(b.state, BranchState::RolledBack | BranchState::Committed)
                        && b.phase_attempts > 0
                }
                _ => false,
            })
            .map(|b| b.id.as_str())
            .collect()
    }

    /// When an ACTIVE transaction times out; also the phase-1 deadline.
    pub fn deadline_ms(&self) -> u64 {
        self.created_at_ms.saturating_add(self.timeout_ms)
    }

    pub fn branch_index(&self, branch_id: &str) -> Option<usize> {
        self.branches.iter().position(|b| b.id == branch_id)
    }

    /// The id the next server-assigned branch gets: one past the count, skipping
    /// ids a client already chose.
    pub fn next_branch_id(&self) -> String {
        let mut n = self.branches.len() + 1;
        loop {
            let id = n.to_string();
            if self.branch_index(&id).is_none() {
                return id;
            }
            n += 1;
        }
    }
}

/// What a participant said to a phase-1 call, as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Yes,
    ReadOnly,
    /// A definitive NO: a NO vote, or ABORTED / FAILED_PRECONDITION / INVALID_ARGUMENT.
    No(String),
    /// Unreachable, too slow, or another error: retried until the phase-1 deadline.
    Transient(String),
}

/// Calls remembered per branch.
pub const MAX_HISTORY: usize = 16;

/// One finished call to a branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// When the answer (or the failure) came.
    pub at_ms: u64,
    pub call: CallKind,
    /// Attempt number within the phase, as sent to the participant.
    pub attempt: u32,
    pub ok: bool,
    /// What came back: a vote, "acknowledged", or the error.
    pub result: String,
}

/// Which participant call; the mode picks the RPC (prepare = try, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Prepare,
    Commit,
    Rollback,
}

impl CallKind {
    pub fn name(self) -> &'static str {
        match self {
            CallKind::Prepare => "prepare",
            CallKind::Commit => "commit",
            CallKind::Rollback => "rollback",
        }
    }

    pub fn rpc_name(self, mode: Mode) -> &'static str {
        match (mode, self) {
            (Mode::TwoPhase, CallKind::Prepare) => "prepare",
            (Mode::TwoPhase, CallKind::Commit) => "commit",
            (Mode::TwoPhase, CallKind::Rollback) => "rollback",
            (Mode::Tcc, CallKind::Prepare) => "try",
            (Mode::Tcc, CallKind::Commit) => "confirm",
            (Mode::Tcc, CallKind::Rollback) => "cancel",
            // A must-succeed step's action is driven like a commit.
            (Mode::Saga, CallKind::Prepare | CallKind::Commit) => "action",
            (Mode::Saga, CallKind::Rollback) => "compensate",
        }
    }
}
