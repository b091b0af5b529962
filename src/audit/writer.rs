//! The one writer of the trail: a dedicated thread fed by a bounded queue, which assigns each
//! record its `seq`, `ts`, `prev` and `hash`, appends a whole batch with one `write`, and makes it
//! durable with one `fdatasync` (group commit) before any request in the batch goes on.
//!
//! The request path never holds a lock across I/O: it hands its record to the queue and waits, at
//! most [`WAIT`] and never past its request's deadline, for the writer's answer. A full queue, a
//! failed write or a stuck writer are all refusals the request path turns into 503
//! `audit_unavailable` (fail closed). The record of such a refusal is only queued
//! ([`Trail::enqueue`]): the caller already waited once, and gets its answer at once (SPEC §6,
//! bounded, truthful refusals). After a failure the
//! writer probes the file system every half second and reopens the file, so writing resumes by
//! itself when the fault clears. A live file that was removed or replaced under the gateway is
//! noticed before the next batch, reported, and a new file is started (the gap shows in `verify`).
//!
//! With a checkpoint key (SPEC §6.3) the writer also appends a signed `checkpoint` record after
//! every `audit.checkpoint_every` records, when `audit.checkpoint_interval_s` has passed with
//! records unsigned, and at a clean shutdown ([`Trail::close`]). The digest of the lines since the
//! last checkpoint runs across batches, rotations and restarts: at start it is rebuilt from the
//! files (`checkpoint::resume`), and a failed batch takes it back with the file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use tokio::time::Instant as Deadline;

use super::chain::{AuditKey, GENESIS};
use super::checkpoint::{self, Checkpoints, LinesDigest, Signer};
use super::lock::TrailLock;
use super::record::Draft;
use super::verify::{present_files, tail};
use crate::config::{AuditConfig, Fsync};
use crate::metrics::Metrics;

/// The longest a request waits for its record to be durable before it is refused.
pub const WAIT: Duration = Duration::from_secs(3);
/// Records waiting for the writer, at most; past that, requests are refused at once.
const QUEUE: usize = 4096;
/// The most records in one write and sync.
const BATCH: usize = 1024;
/// The most bytes of records the writer takes into one write (past the first record), so its
/// write buffer stays small whatever waits in the queue: a thawed disk once met a batch of 1 024
/// records of a megabyte each, sealed into one 3 GB buffer. 1 MiB still holds over a thousand
/// typical records, so group commit under load is unchanged.
const BATCH_BYTES: usize = 1 << 20;
/// How often `fsync = "interval"` syncs, and how often a failed trail is probed.
const TICK: Duration = Duration::from_millis(100);
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A batch taking longer than this makes the trail report not ready (the writer is stuck).
const STUCK: Duration = Duration::from_secs(2);
/// How often the writer looks at the free space of the trail's file system.
const SPACE_EVERY: Duration = Duration::from_secs(1);

/// Why a record could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit trail cannot be written: {0}")]
pub struct AuditError(pub String);

enum Job {
    Append {
        record: Draft,
        /// Where to say whether it is durable; `None` when no one waits ([`Trail::enqueue`]).
        done: Option<oneshot::Sender<Result<(), AuditError>>>,
    },
    Flush {
        done: oneshot::Sender<Result<(), AuditError>>,
    },
    /// A flush after which the writer stops, releasing the trail (and its lock): shutdown.
    Close {
        done: oneshot::Sender<Result<(), AuditError>>,
    },
}

impl Job {
    /// The bytes the job holds while it waits for the disk.
    fn bytes(&self) -> u64 {
        match self {
            Job::Append { record, .. } => record.len() as u64,
            Job::Flush { .. } | Job::Close { .. } => 0,
        }
    }
}

/// What the request path and `/readyz` see of the writer.
#[derive(Debug, Default)]
struct Health {
    /// False from a failed write until a write or probe succeeds.
    healthy: AtomicBool,
    /// When the batch in progress started (ms since the epoch), 0 when idle.
    busy_since_ms: AtomicI64,
    /// Records queued and not yet taken by the writer.
    queued: AtomicI64,
    /// Bytes of records queued or in the batch being written: what waits for the disk, bounded
    /// by `audit.queue_bytes`.
    queued_bytes: AtomicU64,
    /// The last problem, for `/readyz` and logs.
    problem: std::sync::Mutex<Option<String>>,
    /// Bytes free to the gateway on the trail's file system at the writer's last look (at most
    /// [`SPACE_EVERY`] ago); `u64::MAX` when not known (standard output, or no answer).
    free_bytes: AtomicU64,
    /// `audit.min_free_bytes`, which a reload may change.
    min_free_bytes: AtomicU64,
}

impl Health {
    /// `(free, min)` when the trail's file system has less than `audit.min_free_bytes` free.
    fn low_space(&self) -> Option<(u64, u64)> {
        let free = self.free_bytes.load(Ordering::Relaxed);
        let min = self.min_free_bytes.load(Ordering::Relaxed);
        (free < min).then_some((free, min))
    }
}

/// Faults a test injects into the writer, to show what the request path does when the disk is
/// stuck without the privileges `fsfreeze` needs. Nothing in the gateway sets them; `serve` reads
/// `TOKENGATE_TEST_AUDIT_STALL_FILE` (a test of the binary stalls its writer by creating that
/// file, and releases it by removing it).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Faults {
    /// While set, the writer stalls before writing each batch, as in a frozen file system.
    stall: AtomicBool,
    /// While this file exists, the same.
    stall_file: Mutex<Option<PathBuf>>,
}

impl Faults {
    /// Stalls the writer before its next write (`true`) until released (`false`).
    pub fn stall(&self, on: bool) {
        self.stall.store(on, Ordering::Relaxed);
    }

    /// Stalls the writer before each write while `file` exists.
    pub fn stall_while_exists(&self, file: PathBuf) {
        *self.stall_file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    }

    fn stalled(&self) -> bool {
        self.stall.load(Ordering::Relaxed)
            || self
                .stall_file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_deref()
                .is_some_and(Path::exists)
    }

    /// Blocks the writer thread while stalled.
    fn wait_while_stalled(&self) {
        while self.stalled() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The handle the request path holds: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct Trail {
    queue: SyncSender<Job>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
    /// `audit.max_record_bytes`: the request path renders records within it.
    max_record_bytes: usize,
    /// `audit.queue_bytes`: past it, records are refused at once.
    queue_bytes: u64,
    /// The replica that writes this trail, in every record (SPEC §6 `origin`).
    origin: Arc<str>,
    /// The `seq` of the last durable record (on disk and synced): what the shipper to
    /// PostgreSQL may copy (SPEC §6.3), which it follows without polling.
    durable: watch::Receiver<u64>,
}

impl Trail {
    /// Opens the trail of `config` (resuming its chain from the last record on disk, which must
    /// verify) and starts the writer thread. Fails when the trail cannot be opened for writing.
    pub fn open(
        config: &AuditConfig,
        key: AuditKey,
        metrics: Arc<Metrics>,
        origin: Arc<str>,
        checkpoints: Option<Checkpoints>,
    ) -> Result<Trail, String> {
        let sink = Sink::open(config, &key)?;
        let signer = match (checkpoints, &sink) {
            (None, _) => None,
            (Some(settings), Sink::Stdout { .. }) => {
                Some(Signer::new(settings, origin.clone(), LinesDigest::new()))
            }
            (Some(settings), Sink::File(file)) => {
                let (files, _) = present_files(&file.path).map_err(|e| {
                    format!("cannot read the trail at {}: {e}", file.path.display())
                })?;
                let digest = checkpoint::resume(&files, &key)
                    .map_err(|e| format!("cannot resume the signed checkpoints: {e}"))?;
                Some(Signer::new(settings, origin.clone(), digest))
            }
        };
        // What is on disk at start is what the previous process left: durable.
        let (durable_tx, durable) = watch::channel(sink.seq());
        let (queue, jobs) = sync_channel(QUEUE);
        let health = Arc::new(Health::default());
        health.healthy.store(true, Ordering::Relaxed);
        health.free_bytes.store(u64::MAX, Ordering::Relaxed);
        health
            .min_free_bytes
            .store(config.min_free_bytes, Ordering::Relaxed);
        let faults = Arc::new(Faults::default());
        let writer = Writer {
            sink,
            key,
            fsync: config.fsync,
            jobs,
            health: health.clone(),
            metrics: metrics.clone(),
            faults: faults.clone(),
            dirty: false,
            signer,
            durable: durable_tx,
        };
        // Readiness is right from the start, before the writer's first look.
        writer.check_space();
        std::thread::Builder::new()
            .name("tokengate-audit".into())
            .spawn(move || writer.run())
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        metrics.set_audit_ready(health.low_space().is_none());
        Ok(Trail {
            queue,
            health,
            metrics,
            faults,
            max_record_bytes: config.max_record_bytes,
            queue_bytes: config.queue_bytes,
            origin,
            durable,
        })
    }

    /// Follows the `seq` of the last durable record (0 before the first): it moves after each
    /// synced batch (`fsync = "always"`), or each sync (`"interval"`), never to a record a failed
    /// write may still take back.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// The writer's injectable faults (tests only).
    #[doc(hidden)]
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Sets `audit.min_free_bytes` (a reload): the writer's next look at the free space, within
    /// a second, judges readiness by it.
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.health.min_free_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The longest a record may be once sealed (`audit.max_record_bytes`).
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// The replica that writes this trail (`origin` in every record).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Appends one record (without `v`, `seq`, `ts`, `prev`, `hash`, which the writer adds) and
    /// waits until it is durable (`fsync = "always"`) or written (`"interval"`), at most
    /// [`WAIT`].
    pub async fn append(&self, record: Draft) -> Result<(), AuditError> {
        self.append_until(record, Deadline::now() + WAIT).await
    }

    /// [`Trail::append`], waiting no later than `deadline` (a request's: SPEC §6 bounds a
    /// refusal by `min(3 s, what is left of server.request_timeout_ms)`). When the wait ends
    /// first the record stays queued, and is written when the trail can take it.
    pub async fn append_until(&self, record: Draft, deadline: Deadline) -> Result<(), AuditError> {
        let (done, answer) = oneshot::channel();
        let job = Job::Append {
            record,
            done: Some(done),
        };
        self.submit(job, answer, deadline).await
    }

    /// Queues one record without waiting for it: the refusal of a request whose own record
    /// could not be made durable, whose caller must not wait a second time (SPEC §6). Fails only
    /// when the queue cannot take it.
    pub fn enqueue(&self, record: Draft) -> Result<(), AuditError> {
        let result = self.send(Job::Append { record, done: None });
        if result.is_err() {
            self.metrics.audit_record_dropped();
        }
        result
    }

    /// Waits until everything appended so far is on disk (at shutdown).
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (done, answer) = oneshot::channel();
        self.submit(Job::Flush { done }, answer, Deadline::now() + WAIT)
            .await
    }

    /// Flushes the trail and stops its writer, which releases the trail's lock (SPEC §6: one
    /// writer per trail) even while handles to it remain: at shutdown. Appends after it fail.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (done, answer) = oneshot::channel();
        self.submit(Job::Close { done }, answer, Deadline::now() + WAIT)
            .await
    }

    async fn submit(
        &self,
        job: Job,
        answer: oneshot::Receiver<Result<(), AuditError>>,
        deadline: Deadline,
    ) -> Result<(), AuditError> {
        let result = match self.send(job) {
            Ok(()) => {
                let started = Deadline::now();
                let until = deadline.min(started + WAIT);
                match tokio::time::timeout_at(until, answer).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(AuditError("the audit writer has stopped".into())),
                    Err(_) => Err(AuditError(format!(
                        "no answer from the audit writer within {} ms (the record stays queued)",
                        until.saturating_duration_since(started).as_millis()
                    ))),
                }
            }
            Err(error) => Err(error),
        };
        if result.is_err() {
            self.metrics.audit_failure();
        }
        result
    }

    /// Hands `job` to the writer, or says why it cannot take it: the queue holds `QUEUE`
    /// records or `audit.queue_bytes` bytes already (records of requests already answered wait
    /// there too while the disk is stuck, so without a bound in bytes memory grew with every
    /// refused body), or the writer has stopped.
    fn send(&self, job: Job) -> Result<(), AuditError> {
        let bytes = job.bytes();
        let before = self.health.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if bytes > 0 && before + bytes > self.queue_bytes {
            self.health.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(AuditError(format!(
                "the audit queue is full: {before} bytes of records wait for the disk (audit.queue_bytes is {})",
                self.queue_bytes
            )));
        }
        let refused = match self.queue.try_send(job) {
            Ok(()) => {
                let depth = self.health.queued.fetch_add(1, Ordering::Relaxed) + 1;
                self.metrics.set_audit_queue_depth(depth);
                self.metrics
                    .set_audit_queue_bytes(before.saturating_add(bytes));
                return Ok(());
            }
            Err(TrySendError::Full(_)) => AuditError(format!(
                "the audit queue is full: {QUEUE} records wait for the disk"
            )),
            Err(TrySendError::Disconnected(_)) => AuditError("the audit writer has stopped".into()),
        };
        self.health.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        Err(refused)
    }

    /// Whether the trail can be written now (for `/readyz`), and if not, why.
    pub fn ready(&self) -> Result<(), String> {
        let busy_since = self.health.busy_since_ms.load(Ordering::Relaxed);
        if busy_since != 0 && now_ms() - busy_since > STUCK.as_millis() as i64 {
            return Err(format!(
                "the audit writer has been stuck for over {} s",
                STUCK.as_secs()
            ));
        }
        if !self.health.healthy.load(Ordering::Relaxed) {
            let problem = self
                .health
                .problem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return Err(problem.unwrap_or_else(|| "the audit trail cannot be written".into()));
        }
        // Before writes start failing (SPEC §6): a load balancer moves callers elsewhere while
        // this gateway can still record what it was asked.
        if let Some((free, min)) = self.health.low_space() {
            return Err(format!(
                "the audit trail's file system has {free} bytes free, less than audit.min_free_bytes ({min})"
            ));
        }
        Ok(())
    }
}

/// Where records go: a file (rotated) or standard output.
enum Sink {
    File(FileSink),
    Stdout { seq: u64, prev: String },
}

struct FileSink {
    /// Held for as long as the trail is written: one writer per trail (SPEC §6).
    _lock: TrailLock,
    path: PathBuf,
    rotate_bytes: u64,
    /// The open live file and its (device, inode), or none after a failure.
    file: Option<(File, (u64, u64))>,
    size: u64,
    /// The highest `<path>.<n>` on disk: the next rotation is to `n + 1`, whatever older files
    /// were archived (counting the files instead would rename onto the newest one).
    rotated: u64,
    seq: u64,
    prev: String,
    /// A file a failed batch left partly written and that could not be cut back (its
    /// `set_len` or sync failed), with the size to cut it to. While
    /// set, nothing is written (the next record would follow a partial line, or reuse the `seq`s
    /// of whole lines left behind); the probe retries the cut (SPEC §6, fail closed).
    unsound: Option<(File, u64)>,
}

impl Sink {
    /// The `seq` of the last record written.
    fn seq(&self) -> u64 {
        match self {
            Sink::File(sink) => sink.seq,
            Sink::Stdout { seq, .. } => *seq,
        }
    }

    fn open(config: &AuditConfig, key: &AuditKey) -> Result<Sink, String> {
        if config.path.as_os_str() == "-" {
            return Ok(Sink::Stdout {
                seq: 0,
                prev: GENESIS.to_string(),
            });
        }
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let lock = TrailLock::take(&path)?;
        // Only the newest record is needed to resume (SPEC §6, retention): older rotated files
        // may have been archived or deleted, and a gap among them is for `verify` to report.
        let (files, rotated) = present_files(&path)
            .map_err(|e| format!("cannot read the trail at {}: {e}", path.display()))?;
        let (seq, prev) = match tail(&files, key) {
            Ok(Some((seq, hash))) => (seq, hash),
            Ok(None) => (0, GENESIS.to_string()),
            // Moving the trail aside would restart it at seq 1 and hide the records before:
            // a torn write is cut by `audit repair`, anything else needs a person.
            Err(failure) if failure.torn => {
                return Err(format!(
                    "the audit trail ends in a torn write ({failure}); refusing to extend it: \
                     run `tokengate audit repair` (with the same --config) to cut the torn line off \
                     (its bytes are kept in {}), then start again",
                    super::repair::torn_path(&path).display()
                ))
            }
            Err(failure) => {
                return Err(format!(
                    "the audit trail's last record does not verify ({failure}); refusing to extend a broken chain: \
                     check the key (audit.hmac_key_*); if the key is right the record was changed, \
                     and `tokengate audit verify` shows where the trail breaks"
                ))
            }
        };
        let mut sink = FileSink {
            _lock: lock,
            path,
            rotate_bytes: config.rotate_bytes,
            file: None,
            size: 0,
            rotated,
            seq,
            prev,
            unsound: None,
        };
        sink.ensure_open()
            .map_err(|e| format!("cannot open the audit trail for writing: {e}"))?;
        Ok(Sink::File(sink))
    }
}

impl FileSink {
    /// Opens the live file if it is not open; notices a file removed or replaced under us.
    fn ensure_open(&mut self) -> Result<(), String> {
        if let Some((_, identity)) = &self.file {
            match std::fs::metadata(&self.path) {
                Ok(meta) if identity_of(&meta) == *identity => return Ok(()),
                Ok(_) => {
                    self.file = None;
                    return Err(format!(
                        "{} was replaced by another file; starting a new live file",
                        self.path.display()
                    ));
                }
                Err(_) => {
                    self.file = None;
                    return Err(format!(
                        "{} was removed; starting a new live file",
                        self.path.display()
                    ));
                }
            }
        }
        let file = open_append(&self.path)
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", self.path.display()));
        }
        self.size = meta.len();
        self.file = Some((file, identity_of(&meta)));
        sync_dir(&self.path);
        Ok(())
    }

    /// Renames a full live file to `<path>.<n+1>` and starts a new one; the chain runs on.
    fn rotate_if_full(&mut self) -> Result<(), String> {
        if self.size < self.rotate_bytes || self.size == 0 {
            return Ok(());
        }
        let next = PathBuf::from(format!("{}.{}", self.path.display(), self.rotated + 1));
        std::fs::rename(&self.path, &next)
            .map_err(|e| format!("cannot rotate to {}: {e}", next.display()))?;
        self.rotated += 1;
        self.file = None;
        sync_dir(&self.path);
        self.ensure_open()
    }

    /// Refuses to write while a partial write could not be cut back, after trying the cut once
    /// more (at each batch and each probe, so writing resumes as soon as the cut succeeds).
    fn check_sound(&mut self) -> Result<(), String> {
        let Some((file, size)) = &self.unsound else {
            return Ok(());
        };
        match cut_back(file, *size) {
            Ok(()) => {
                tracing::info!(
                    "the failed write at the end of {} was cut back",
                    self.path.display()
                );
                self.unsound = None;
                Ok(())
            }
            Err(problem) => Err(format!(
                "{} ends in a failed write that could not be cut back ({problem}); nothing is written to it until it is",
                self.path.display()
            )),
        }
    }

    /// Checks that the file system takes a write and a sync in the trail's directory, after
    /// cutting back a partial write that could not be cut before.
    fn probe(&mut self) -> Result<(), String> {
        self.check_sound()?;
        let probe = PathBuf::from(format!("{}.probe", self.path.display()));
        let result = (|| {
            let mut file = File::create(&probe)?;
            file.write_all(&[0u8; 4096])?;
            file.sync_data()
        })();
        let _ = std::fs::remove_file(&probe);
        result.map_err(|e| format!("the trail's directory cannot be written: {e}"))?;
        self.ensure_open()
    }
}

struct Writer {
    sink: Sink,
    key: AuditKey,
    fsync: Fsync,
    jobs: Receiver<Job>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
    /// Written since the last sync (`fsync = "interval"`).
    dirty: bool,
    /// Signs checkpoints, with `audit.checkpoint_key_*` (SPEC §6.3).
    signer: Option<Signer>,
    /// Where the `seq` of the last durable record is published ([`Trail::durable`]).
    durable: watch::Sender<u64>,
}

impl Writer {
    fn run(mut self) {
        let mut last_sync = Instant::now();
        let mut last_probe = Instant::now();
        let mut last_space = Instant::now();
        loop {
            if last_space.elapsed() >= SPACE_EVERY {
                last_space = Instant::now();
                self.check_space();
            }
            let first = match self.jobs.recv_timeout(TICK) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    // Records wait no longer than `audit.checkpoint_interval_s` to be signed,
                    // whether or not more come.
                    if self.health.healthy.load(Ordering::Relaxed)
                        && self.signer.as_ref().is_some_and(Signer::due_by_time)
                    {
                        self.health.busy_since_ms.store(now_ms(), Ordering::Relaxed);
                        self.faults.wait_while_stalled();
                        let result = self.commit(&[], false);
                        self.health.busy_since_ms.store(0, Ordering::Relaxed);
                        self.report(&result);
                    }
                    if self.dirty && last_sync.elapsed() >= TICK {
                        self.interval_sync();
                        last_sync = Instant::now();
                    }
                    if !self.health.healthy.load(Ordering::Relaxed)
                        && last_probe.elapsed() >= PROBE_EVERY
                    {
                        last_probe = Instant::now();
                        self.probe();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Every handle is gone: the records written are signed before the end.
                    let _ = self.commit(&[], true);
                    let _ = self.sync();
                    return;
                }
            };
            let mut bytes = first.bytes();
            let mut batch = vec![first];
            while batch.len() < BATCH && bytes < BATCH_BYTES as u64 {
                match self.jobs.try_recv() {
                    Ok(job) => {
                        bytes += job.bytes();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            let depth = self
                .health
                .queued
                .fetch_sub(batch.len() as i64, Ordering::Relaxed)
                - batch.len() as i64;
            self.metrics.set_audit_queue_depth(depth.max(0));
            self.health.busy_since_ms.store(now_ms(), Ordering::Relaxed);
            self.faults.wait_while_stalled();
            let closing = batch.iter().any(|job| matches!(job, Job::Close { .. }));
            let result = self.commit(&batch, closing);
            if self.fsync == Fsync::Interval && last_sync.elapsed() >= TICK && self.dirty {
                self.interval_sync();
                last_sync = Instant::now();
            }
            self.health.busy_since_ms.store(0, Ordering::Relaxed);
            self.report(&result);
            // The batch's records are written or refused: their bytes no longer wait for the disk.
            let left = self
                .health
                .queued_bytes
                .fetch_sub(bytes, Ordering::Relaxed)
                .saturating_sub(bytes);
            self.metrics.set_audit_queue_bytes(left);
            if closing {
                // The trail's file and lock go with the writer, before `close` is answered: whoever
                // opens the trail next (a restarted gateway in the same process) finds it free.
                drop(self);
                answer(batch, &result);
                return;
            }
            answer(batch, &result);
        }
    }

    /// Seals and writes every record of the batch with one write, then syncs once. Checkpoints
    /// (SPEC §6.3) go in where they are due: after every `audit.checkpoint_every`th record, and
    /// at the batch's end when the interval has passed or the trail is `closing`, if records
    /// were written since the last one.
    fn commit(&mut self, batch: &[Job], closing: bool) -> Result<(), AuditError> {
        // A flush that shares a batch with appends still asks for the fsync.
        let flush_asked = batch
            .iter()
            .any(|job| matches!(job, Job::Flush { .. } | Job::Close { .. }));
        let ts = timestamp(SystemTime::now());
        // What is on disk before this batch: a failed write or sync cuts the file back to it.
        let (seq, prev, size_before) = match &mut self.sink {
            Sink::File(sink) => {
                sink.check_sound().map_err(AuditError)?;
                sink.ensure_open().map_err(AuditError)?;
                sink.rotate_if_full().map_err(AuditError)?;
                (&mut sink.seq, &mut sink.prev, sink.size)
            }
            Sink::Stdout { seq, prev } => (seq, prev, 0),
        };
        let (first_seq, first_prev) = (*seq, prev.clone());
        let digest_before = self.signer.as_ref().map(Signer::snapshot);
        let mut bytes = Vec::with_capacity(batch.len() * 640);
        let mut unsealed = Vec::with_capacity(640);
        let mut records = 0u64;
        // Whether the batch holds a checkpoint: once durable, the interval starts again.
        let mut signed = false;
        for job in batch.iter() {
            let Job::Append { record, .. } = job else {
                continue;
            };
            *seq += 1;
            let start = bytes.len();
            *prev = record.seal(&self.key, (*seq, &ts, prev), &mut unsealed, &mut bytes);
            records += 1;
            if let Some(signer) = &mut self.signer {
                signer.add(&bytes[start..]);
                if signer.due_by_count() {
                    append_checkpoint(signer, &self.key, (seq, &ts, prev), &mut bytes);
                    records += 1;
                    signed = true;
                }
            }
        }
        if let Some(signer) = &mut self.signer {
            if signer.pending() && (closing || signer.due_by_time()) {
                append_checkpoint(signer, &self.key, (seq, &ts, prev), &mut bytes);
                records += 1;
                signed = true;
            }
        }
        let written = if bytes.is_empty() {
            Ok(())
        } else {
            self.write(&bytes)
        };
        let mut durable = false;
        let synced = written.and_then(|()| match self.fsync {
            Fsync::Always => {
                durable = true;
                self.sync()
            }
            Fsync::Interval if flush_asked => {
                durable = true;
                self.sync()
            }
            Fsync::Interval => {
                self.dirty = true;
                Ok(())
            }
        });
        match synced {
            Ok(()) => {
                self.metrics.audit_records(records);
                if signed {
                    if let Some(signer) = &mut self.signer {
                        signer.written();
                    }
                }
                if durable {
                    self.publish_durable();
                }
                Ok(())
            }
            Err(problem) => {
                // The lines of the batch are cut off the file: the digest goes back with them.
                if let (Some(signer), Some(digest)) = (&mut self.signer, digest_before) {
                    signer.restore(digest);
                }
                match self.rollback(first_seq, first_prev, size_before) {
                    Ok(()) => Err(AuditError(problem)),
                    Err(cut) => Err(AuditError(format!(
                        "{problem}; then the partial write could not be cut back ({cut}): nothing more is written until it is"
                    ))),
                }
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.sink {
            Sink::File(sink) => {
                let Some((file, _)) = &mut sink.file else {
                    return Err("the trail file is not open".into());
                };
                file.write_all(bytes)
                    .map_err(|e| format!("write to {} failed: {e}", sink.path.display()))?;
                sink.size += bytes.len() as u64;
                Ok(())
            }
            Sink::Stdout { .. } => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("write to standard output failed: {e}"))
            }
        }
    }

    fn sync(&mut self) -> Result<(), String> {
        self.dirty = false;
        let Sink::File(sink) = &mut self.sink else {
            return Ok(());
        };
        let Some((file, _)) = &sink.file else {
            return Err("the trail file is not open".into());
        };
        let started = Instant::now();
        let result = file
            .sync_data()
            .map_err(|e| format!("fsync of {} failed: {e}", sink.path.display()));
        self.metrics.audit_fsync(started.elapsed());
        result
    }

    /// The periodic sync of `fsync = "interval"`. Its records were already answered, so a failure
    /// cannot refuse them; it is counted and reported, and the trail turns not ready until a write
    /// or a probe succeeds again.
    fn interval_sync(&mut self) {
        match self.sync() {
            Ok(()) => self.publish_durable(),
            Err(problem) => {
                self.metrics.audit_failure();
                self.report(&Err(AuditError(problem)));
            }
        }
    }

    /// Publishes the last record written as durable (after a successful sync).
    fn publish_durable(&self) {
        let seq = self.sink.seq();
        self.durable.send_if_modified(|last| {
            let moved = *last != seq;
            *last = seq;
            moved
        });
    }

    /// After a failed batch: the chain state goes back to the record before the batch, and the
    /// file is cut back to `size_before` (whatever of the batch reached it: a failed sync after a
    /// good write left all of it, whose `seq`s the next batch reuses) and closed (reopened by the
    /// next attempt). If the cut itself fails, the file is kept as unsound and the error returned:
    /// writing on would put records after a partial line, or reuse `seq`s, so nothing is written
    /// until the probe manages the cut (or a restart finds the torn tail, for `audit repair`).
    fn rollback(&mut self, seq: u64, prev: String, size_before: u64) -> Result<(), String> {
        match &mut self.sink {
            Sink::Stdout {
                seq: last_seq,
                prev: last_prev,
            } => {
                *last_seq = seq;
                *last_prev = prev;
                Ok(())
            }
            Sink::File(sink) => {
                sink.seq = seq;
                sink.prev = prev;
                sink.size = size_before;
                let Some((file, _)) = sink.file.take() else {
                    return Ok(());
                };
                let cut = cut_back(&file, size_before);
                if cut.is_err() {
                    sink.unsound = Some((file, size_before));
                }
                cut
            }
        }
    }

    fn probe(&mut self) {
        let result = match &mut self.sink {
            Sink::File(sink) => sink.probe(),
            Sink::Stdout { .. } => Ok(()),
        };
        if result.is_ok() {
            tracing::info!("the audit trail is writable again");
        }
        self.report(&result.map_err(AuditError));
    }

    /// Looks at the free space of the trail's file system: sets `tokengate_audit_free_bytes`,
    /// and readiness by `audit.min_free_bytes` (logged once each way).
    fn check_space(&self) {
        let Sink::File(sink) = &self.sink else {
            return;
        };
        let free = free_bytes(&sink.path);
        if let Some(free) = free {
            self.metrics.set_audit_free_bytes(free);
        }
        let was_low = self.health.low_space().is_some();
        self.health
            .free_bytes
            .store(free.unwrap_or(u64::MAX), Ordering::Relaxed);
        let low = self.health.low_space();
        match (was_low, low) {
            (false, Some((free, min))) => tracing::warn!(
                free_bytes = free,
                min_free_bytes = min,
                "the audit trail's file system is nearly full: not ready until audit.min_free_bytes is free again"
            ),
            (true, None) => tracing::info!("the audit trail's file system has room again"),
            _ => {}
        }
        self.metrics
            .set_audit_min_free_bytes(self.health.min_free_bytes.load(Ordering::Relaxed));
        self.metrics
            .set_audit_ready(low.is_none() && self.health.healthy.load(Ordering::Relaxed));
    }

    fn report(&self, result: &Result<(), AuditError>) {
        let healthy = result.is_ok();
        let was = self.health.healthy.swap(healthy, Ordering::Relaxed);
        let mut problem = self
            .health
            .problem
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => *problem = None,
            Err(error) => {
                if was {
                    tracing::error!(
                        "{error}; audited requests are refused until it can be written"
                    );
                }
                *problem = Some(error.0.clone());
            }
        }
        self.metrics
            .set_audit_ready(healthy && self.health.low_space().is_none());
    }
}

/// Seals a signed checkpoint record after record `seq` (whose hash is `prev`) into `out`, and
/// starts the signer's next range with its line.
/// Answers every waiter of `batch` with the batch's `result`.
fn answer(batch: Vec<Job>, result: &Result<(), AuditError>) {
    for job in batch {
        let done = match job {
            Job::Append { done, .. } => done,
            Job::Flush { done } | Job::Close { done } => Some(done),
        };
        if let Some(done) = done {
            let _ = done.send(result.clone());
        }
    }
}

fn append_checkpoint(
    signer: &mut Signer,
    key: &AuditKey,
    (seq, ts, prev): (&mut u64, &str, &mut String),
    out: &mut Vec<u8>,
) {
    let draft = signer.draft(*seq, prev);
    *seq += 1;
    let start = out.len();
    let mut scratch = Vec::with_capacity(draft.len() + 256);
    *prev = draft.seal(key, (*seq, ts, prev), &mut scratch, out);
    signer.restart(&out[start..]);
}

/// Bytes available to an unprivileged writer on the file system holding `path` (`statvfs` of its
/// directory: blocks available times the fragment size), if the system says.
#[cfg(unix)]
fn free_bytes(path: &Path) -> Option<u64> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(unix))]
fn free_bytes(_path: &Path) -> Option<u64> {
    None
}

/// Cuts `file` back to the last line end at or before `size` (what was durable before a failed
/// batch), if anything of the batch reached it, and syncs it. Every step's failure is reported:
/// a file left longer than that holds a partial line or records whose `seq`s come again.
fn cut_back(file: &File, size: u64) -> Result<(), String> {
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read its size: {e}"))?
        .len();
    let target = last_line_end(file, len.min(size));
    if len > target {
        file.set_len(target)
            .map_err(|e| format!("cannot truncate it to {target} bytes: {e}"))?;
    }
    file.sync_data()
        .map_err(|e| format!("cannot sync it: {e}"))?;
    match file.metadata() {
        Ok(meta) if meta.len() == target => Ok(()),
        Ok(meta) => Err(format!(
            "it is {} bytes long after truncating to {target}",
            meta.len()
        )),
        Err(e) => Err(format!("cannot read its size: {e}")),
    }
}

/// Where the last complete line of `file` ends, at or before `len` (a failed write may have left
/// part of a line).
fn last_line_end(file: &File, len: u64) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file;
    let start = len.saturating_sub(1 << 20);
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(len - start).read_to_end(&mut tail).is_err()
    {
        return len;
    }
    match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => start + i as u64 + 1,
        None if start == 0 => 0,
        None => len,
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true).read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Makes a new or renamed directory entry durable.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
}

/// A file's identity (device and inode): a trail file replaced under the same name (rotated or
/// removed by hand) has another. The shipper's reader tells files apart by it too.
#[cfg(unix)]
pub(crate) fn identity_of(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
pub(crate) fn identity_of(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 in UTC with milliseconds: `2026-11-22T15:13:23.123Z`.
pub fn timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `close` answers only once the trail's lock is released: a trail closed and opened again
    /// at once (a gateway restarted in the same process) is never found in use. The writer used
    /// to answer first and release the lock as its thread ended, which a loaded machine showed.
    #[tokio::test]
    async fn a_closed_trail_can_be_opened_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuditConfig {
            path: dir.path().join("trail.jsonl"),
            ..AuditConfig::default()
        };
        let key = AuditKey::new(&[7u8; 32]).unwrap();
        for round in 0..50 {
            let trail = Trail::open(
                &config,
                key.clone(),
                Arc::new(Metrics::new()),
                "test".into(),
                None,
            )
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
            trail.close().await.unwrap();
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(1_795_359_006)),
            "2026-11-22T14:50:06.000Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59.000Z"
        );
    }
}
