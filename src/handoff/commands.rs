//! Commands: what the HTTP cores ask of the storage core besides writing events (key
//! lookups, sign-ups, rotations, rate-limit leases, organisation reads, inbox pages,
//! acknowledgements, webhook configuration), each answered on a oneshot channel (a
//! rate-limit lease is answered on the organisation's `RateWindow` instead). Three lanes, each a
//! bounded queue with its own database connection on the storage side, so key lookups
//! never wait behind reads, and held stream reads neither wait behind nor crowd out
//! inbox reads (`Lane`). The storage core executes them; this module only
//! says what they are, so the HTTP side never names the storage core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::model::ratelimit::RateWindow;
use crate::model::{Org, OrgView, Tier};

/// Why a command failed: never the request's fault (the API answers 503).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The database failed or could not be reached; the text carries the cause.
    #[error("database error: {0}")]
    Database(String),
    /// A row the code cannot read (a bug or a hand-edited database).
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
}

/// A key row that matched a lookup id, for the caller to verify.
pub struct KeyCandidate {
    pub org: Arc<Org>,
    /// Argon2id PHC string.
    pub key_hash: String,
}

/// Everything needed to create an organisation with its first key.
pub struct NewOrg {
    pub name: String,
    pub tier: Tier,
    pub lookup_id: i64,
    pub key_hash: String,
    pub key_prefix: String,
    pub signing_secret: String,
}

pub struct NewKeyForOrg {
    pub org_id: Uuid,
    /// The key the request was authenticated with; rotation fails if it is gone.
    pub old_lookup_id: i64,
    pub lookup_id: i64,
    pub key_hash: String,
    pub key_prefix: String,
}

/// Where a command's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, CommandError>>;

/// The queue and connection a command uses. Key lookups, sign-ups, rotations and
/// rate-limit leases have their own (short statements on the request path), so they
/// never wait behind inbox reads and acknowledgements (which a tenant can make slow);
/// stream pages have theirs (thousands of held reads wake at once on a commit, and
/// their connection plans for a range scan whatever the statistics say,
/// `storage::stream::SESSION`); each query below names the lane of its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Keys = 0,
    Reads = 1,
    Stream = 2,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Keys, Lane::Reads, Lane::Stream];

    /// The lane's label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Keys => "keys",
            Lane::Reads => "reads",
            Lane::Stream => "stream",
        }
    }
}

/// A request for the storage core, answered on its `reply`.
pub enum Command {
    LookupKey {
        lookup_id: i64,
        reply: Reply<Vec<KeyCandidate>>,
    },
    CreateOrg {
        new: NewOrg,
        reply: Reply<Arc<Org>>,
    },
    /// Answers the rotation time, or `None` if the old key was already replaced.
    /// Every HTTP core has dropped the organisation's cached keys before the answer.
    RotateKey {
        new: NewKeyForOrg,
        reply: Reply<Option<i64>>,
    },
    GetOrg {
        org_id: Uuid,
        reply: Reply<Option<OrgView>>,
    },
    /// Leases the next slice of the organisation's rate-limit window from its budget
    /// row: `want` tokens, of which requests waiting now `need` (see
    /// `RateWindow::begin_refill`), asked at `now_ms`. The answer goes to `window`
    /// (`apply_lease` or `refill_failed`), which wakes every request waiting on it.
    /// Queued on the key lane; sent with the other leases of its batch on a
    /// connection of their own.
    RateLease {
        org_id: Uuid,
        limit: u32,
        want: u32,
        need: u32,
        now_ms: u64,
        window: Arc<RateWindow>,
    },
    /// Gives every organisation's unused tokens of its current window back to the
    /// budget rows (at shutdown, once no request is in progress); answers how many.
    ReturnRateTokens {
        now_ms: u64,
        reply: Reply<u64>,
    },
    Inbox {
        query: InboxQuery,
        reply: Reply<Vec<InboxEvent>>,
    },
    /// Answers the first acknowledgement time, or `None` if the organisation has no
    /// such event.
    AckOne {
        org_id: Uuid,
        id: Uuid,
        reply: Reply<Option<i64>>,
    },
    /// Answers the ids (of those given) that are acknowledged now.
    AckMany {
        org_id: Uuid,
        ids: Vec<Uuid>,
        reply: Reply<Vec<Uuid>>,
    },
    /// Leases up to `limit` free pending events, oldest first, for `lease_seconds`.
    Lease {
        org_id: Uuid,
        limit: i64,
        lease_seconds: i64,
        reply: Reply<Lease>,
    },
    /// Acknowledges the lease's events (`ids`, or all of them): answers the ids now
    /// acknowledged, or `None` when the lease is unknown or expired.
    LeaseAck {
        org_id: Uuid,
        lease_id: Uuid,
        ids: Option<Vec<Uuid>>,
        reply: Reply<Option<Vec<Uuid>>>,
    },
    /// Frees the lease's events (`ids`, or all of them): answers the ids released, or
    /// `None` when the lease is unknown or expired.
    LeaseRelease {
        org_id: Uuid,
        lease_id: Uuid,
        ids: Option<Vec<Uuid>>,
        reply: Reply<Option<Vec<Uuid>>>,
    },
    /// Answers the configuration now in force, or `None` if the organisation is gone.
    SetWebhook {
        org_id: Uuid,
        url: Option<String>,
        /// `None`: every type is pushed.
        event_types: Option<Vec<String>>,
        reply: Reply<Option<WebhookConfig>>,
    },
    /// Makes `secret` the signing secret; the one it replaces signs too until the
    /// answered time (µs), or `None` if the organisation is gone.
    RotateSecret {
        org_id: Uuid,
        secret: String,
        reply: Reply<Option<i64>>,
    },
    /// One event of the organisation.
    GetEvent {
        org_id: Uuid,
        id: Uuid,
        reply: Reply<Option<InboxEvent>>,
    },
    /// The event's delivery attempts, oldest first; `None` when the event is unknown.
    Attempts {
        org_id: Uuid,
        id: Uuid,
        reply: Reply<Option<Vec<Attempt>>>,
    },
    /// Schedules the event to be pushed again now.
    Redeliver {
        org_id: Uuid,
        id: Uuid,
        reply: Reply<Redelivery>,
    },
    /// Schedules the organisation's events created at or after `since_micros`
    /// (`failed` ones, or all), oldest first, at most `REPLAY_MAX`.
    Replay {
        org_id: Uuid,
        since_micros: i64,
        all: bool,
        reply: Reply<Replay>,
    },
    GetWebhook {
        org_id: Uuid,
        reply: Reply<Option<WebhookConfig>>,
    },
    /// The organisation's events in commit order after a position.
    Stream {
        query: StreamQuery,
        reply: Reply<StreamPage>,
    },
    /// The stream horizon: the oldest transaction id still in progress in the cluster.
    Horizon {
        reply: Reply<i64>,
    },
}

impl Command {
    pub fn lane(&self) -> Lane {
        match self {
            Command::LookupKey { .. }
            | Command::CreateOrg { .. }
            | Command::RotateKey { .. }
            | Command::RateLease { .. }
            | Command::ReturnRateTokens { .. } => Lane::Keys,
            Command::Stream { .. } | Command::Horizon { .. } => Lane::Stream,
            _ => Lane::Reads,
        }
    }
}

/// Which events an inbox page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxView {
    /// `pending` and `failed` (the default).
    Undelivered,
    Pending,
    Failed,
    Delivered,
    All,
}

/// One inbox page request. Pages are newest first; `before` is the cursor (the last
/// id of the previous page).
#[derive(Debug, Clone)]
pub struct InboxQuery {
    pub org_id: Uuid,
    pub view: InboxView,
    pub before: Option<Uuid>,
    /// Rows to return (the caller asks one more than it shows, to know if a next page exists).
    pub limit: i64,
    pub offset: i64,
    /// Bytes of event JSON the page may hold; the first row beyond is returned too,
    /// so the caller knows the page was cut.
    pub bytes_max: i64,
}

/// An event as the inbox lists it.
#[derive(Debug, Clone)]
pub struct InboxEvent {
    pub id: Uuid,
    pub event_type: String,
    /// The payload as JSON text (PostgreSQL's jsonb rendering).
    pub payload: String,
    pub dedup_id: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub created_at_micros: i64,
    pub delivered_at_micros: Option<i64>,
    /// The last delivery attempt's error, if the last attempt failed.
    pub last_error: Option<String>,
    /// How many times a consumer leased the event.
    pub leases: i32,
    /// Bytes of event JSON in the page up to and including this event (approximate:
    /// the text of its fields plus a fixed allowance for the rest).
    pub page_bytes: i64,
}

/// A place in an organisation's ordered stream: the inserting transaction's id and the
/// event's id, the order of `events_stream (org_id, xid, id)`. `ORIGIN` is before
/// every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub xid: i64,
    pub id: Uuid,
}

impl Position {
    pub const ORIGIN: Position = Position { xid: 0, id: Uuid::nil() };
}

/// One stream page request.
#[derive(Debug, Clone, Copy)]
pub struct StreamQuery {
    pub org_id: Uuid,
    pub after: Position,
    pub limit: i64,
    /// Bytes of event JSON the page may hold (at least one event is always returned).
    pub bytes_max: i64,
}

/// What a stream read found.
#[derive(Debug, Clone, Default)]
pub struct StreamPage {
    /// Events after the position, in commit order, each with its own position.
    pub events: Vec<(Position, InboxEvent)>,
    /// More events may follow the page right away (the page was cut by limit or
    /// bytes).
    pub more: bool,
    /// Committed events follow the page behind the horizon (a transaction that began
    /// earlier is still running). Worth reading again when the horizon moves.
    pub held_by_horizon: bool,
}

/// An organisation's push configuration.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `None`: push is off.
    pub url: Option<String>,
    pub signing_secret: String,
    pub updated_at_micros: i64,
    /// `None`: every type is pushed.
    pub event_types: Option<Vec<String>>,
}

/// One recorded delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the event's first attempt.
    pub attempt: i32,
    pub attempted_at_micros: i64,
    /// `None` when no HTTP answer came.
    pub status_code: Option<i16>,
    /// `None` on a 2xx.
    pub error: Option<String>,
    pub duration_ms: i32,
}

/// Attempts kept per event (the oldest go first).
pub const ATTEMPTS_KEPT: i32 = 50;

/// What a redelivery request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    Scheduled,
    NotFound,
    /// The organisation has no webhook: nothing to push to.
    NoWebhook,
}

/// Events one replay call schedules at most.
pub const REPLAY_MAX: i64 = 10_000;

/// What a replay call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    Scheduled {
        count: i64,
        /// Where the next call starts when more events matched (µs), else `None`.
        next_since_micros: Option<i64>,
    },
    NoWebhook,
}

/// Leases an event may have without an acknowledgement before it is set aside as
/// `failed` (poison) and leased no more.
pub const LEASES_MAX: i32 = 5;

/// A consumer lease: its id, when it expires (database clock), and the events it holds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub lease_id: Uuid,
    pub expires_at_micros: i64,
    pub events: Vec<InboxEvent>,
}

/// Health of the write path, read by `/health/ready` on every core.
#[derive(Debug, Default)]
pub struct StorageStatus {
    /// PostgreSQL answered the prober's last check (writers clear it at once when a
    /// write fails for lack of a connection).
    pub db_ok: AtomicBool,
    /// Set when the process shuts down: connections closing now are expected, not
    /// warnings.
    pub closing: AtomicBool,
}

impl StorageStatus {
    /// A write found the database unreachable.
    pub fn lost(&self) {
        self.db_ok.store(false, Ordering::Relaxed);
    }
}

/// What the HTTP cores hold to send commands. Cheap to clone.
#[derive(Clone)]
pub struct CommandSender {
    /// One queue per `Lane`, indexed by it.
    lanes: [mpsc::Sender<Command>; 3],
}

#[derive(Debug, thiserror::Error)]
#[error("the storage core's command queue is full")]
pub struct QueueFull;

impl CommandSender {
    /// The senders and, for the storage core, the receivers of every lane, each
    /// holding at most `queue_max` commands.
    pub fn channels(queue_max: usize) -> (CommandSender, [mpsc::Receiver<Command>; 3]) {
        let [keys, reads, stream] = Lane::ALL.map(|_| mpsc::channel(queue_max));
        (CommandSender { lanes: [keys.0, reads.0, stream.0] }, [keys.1, reads.1, stream.1])
    }

    /// Commands queued on `lane` now (a gauge).
    pub fn depth(&self, lane: Lane) -> usize {
        let sender = &self.lanes[lane as usize];
        sender.max_capacity() - sender.capacity()
    }

    /// Queues a command without waiting; `QueueFull` means answer 503.
    pub fn send(&self, command: Command) -> Result<(), QueueFull> {
        self.lanes[command.lane() as usize].try_send(command).map_err(|_| QueueFull)
    }
}
