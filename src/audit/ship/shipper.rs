//! The shipper (SPEC §6.3): one task, one connection, copying every durable record of the local
//! trail to the central table, in order and in batches, off the request path.
//!
//! The local trail stays the write-ahead record: a request waits for its record's fsync, never
//! for PostgreSQL. The task follows the writer's durable `seq` ([`Trail::durable`], a watch: no
//! polling), reads the new records back from the files ([`Source`]) and inserts them in batches of
//! at most [`BATCH`] records, each batch one statement in one transaction. It starts from the
//! highest `seq` the table holds for its origin (after checking that the row there is this
//! trail's record), so a restart, a crash or an outage never skips or repeats a record. Inserts
//! are idempotent (`ON CONFLICT DO NOTHING`); a row already there with other bytes is tampering,
//! or a second trail under the same origin: shipping stops, logged as an error and counted,
//! until an operator acts (and restarts the gateway). PostgreSQL down or restarted: the task
//! reconnects with a backoff (0.5 s doubling to 30 s), the lag grows meanwhile, and shipping
//! catches up by itself; readiness is never affected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use super::source::{Gap, Source};
use super::table::Batch;
use super::target::Target;
use crate::audit::writer::Trail;
use crate::metrics::Metrics;

/// The most records in one insert.
pub const BATCH: usize = 1000;
/// The most bytes of lines in one insert (past the first record).
const BATCH_BYTES: usize = 4 << 20;
/// Reconnection backoff.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The longest one batch may take before the connection is given up as dead.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait before reading again when a durable record is not readable yet (the live
/// file being rotated under the reader).
const REREAD: Duration = Duration::from_millis(100);

/// The running shipper, for shutdown to wait on.
#[derive(Debug)]
pub struct Shipper {
    shipped: watch::Receiver<u64>,
    durable: watch::Receiver<u64>,
    halted: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    target: String,
}

impl Shipper {
    /// Starts shipping `trail` (whose live file is `live`) to `target`, on the current runtime.
    pub fn start(
        target: Target,
        trail: &Trail,
        live: &std::path::Path,
        metrics: Arc<Metrics>,
    ) -> Shipper {
        let (shipped_tx, shipped) = watch::channel(0);
        let halted = Arc::new(AtomicBool::new(false));
        let durable = trail.durable();
        let described = target.describe().to_owned();
        let task = Task {
            target,
            origin: trail.origin().to_owned(),
            live: live.to_path_buf(),
            durable: durable.clone(),
            shipped: shipped_tx,
            halted: halted.clone(),
            metrics,
            closed: false,
        };
        tokio::spawn(report_lag(
            durable.clone(),
            shipped.clone(),
            task.metrics.clone(),
        ));
        Shipper {
            shipped,
            durable,
            halted,
            task: tokio::spawn(task.run()),
            target: described,
        }
    }

    /// At a clean shutdown, after the trail is closed: waits, at most `within`, until every
    /// record is shipped (SPEC §6.3), then stops the task. Says how it ended in the log.
    pub async fn drain(&self, within: Duration) {
        let mut shipped = self.shipped.clone();
        let durable = *self.durable.borrow();
        let halted = self.halted.clone();
        let done = tokio::time::timeout(within, async move {
            loop {
                if halted.load(Ordering::Relaxed) || *shipped.borrow_and_update() >= durable {
                    return;
                }
                if shipped.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        self.task.abort();
        let lag = durable.saturating_sub(*self.shipped.borrow());
        if lag == 0 {
            tracing::info!(
                postgres = %self.target,
                last_seq = durable,
                "every audit record is in the central store"
            );
        } else {
            tracing::warn!(
                postgres = %self.target,
                lag,
                timed_out = done.is_err(),
                "audit records not yet in the central store at exit: the next start ships them"
            );
        }
    }
}

/// Why a shipping session ended.
enum End {
    /// PostgreSQL failed: reconnect after a backoff.
    Retry(String),
    /// Shipping this origin cannot go on without an operator.
    Halt(String),
    /// The trail was closed and everything is shipped.
    Done,
}

impl From<tokio_postgres::Error> for End {
    fn from(error: tokio_postgres::Error) -> End {
        End::Retry(error.to_string())
    }
}

impl From<Gap> for End {
    fn from(gap: Gap) -> End {
        End::Halt(gap.0)
    }
}

struct Task {
    target: Target,
    origin: String,
    live: std::path::PathBuf,
    durable: watch::Receiver<u64>,
    shipped: watch::Sender<u64>,
    halted: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// The writer has stopped: no more records will come.
    closed: bool,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        let mut failing = false;
        loop {
            match self.session(&mut failing).await {
                End::Done => return,
                End::Retry(reason) => {
                    self.metrics.audit_ship_failure();
                    if !failing {
                        // A new outage (the last session had shipped): the backoff starts over.
                        backoff = BACKOFF_FIRST;
                        tracing::warn!(
                            postgres = %self.target.describe(),
                            origin = %self.origin,
                            "shipping audit records to PostgreSQL failed ({reason}); retrying, records wait in the local trail"
                        );
                        failing = true;
                    }
                    self.sleep_watching_close(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                End::Halt(reason) => {
                    self.metrics.audit_ship_failure();
                    self.halted.store(true, Ordering::Relaxed);
                    tracing::error!(
                        postgres = %self.target.describe(),
                        table = %self.target.table().name(),
                        origin = %self.origin,
                        "shipping of this origin's audit records is STOPPED: {reason}; the local trail is unaffected; find out why (tampering with the table, or two trails under one origin), then restart the gateway"
                    );
                    // Waits for the end; the lag gauge keeps growing meanwhile, for alerts.
                    loop {
                        self.sleep_watching_close(BACKOFF_MAX).await;
                        if self.closed {
                            return;
                        }
                    }
                }
            }
            if self.closed && self.lag() == 0 {
                return;
            }
        }
    }

    fn lag(&self) -> u64 {
        self.durable.borrow().saturating_sub(*self.shipped.borrow())
    }

    /// Sleeps `pause`, noticing meanwhile when the trail closes (the lag gauge is kept by
    /// [`report_lag`], whatever this task does). The close cuts the sleep short: the shutdown has
    /// only its grace to ship what waits, so the shipper tries at once rather than sitting out a
    /// backoff of up to 30 s; a failure after the close sleeps its whole backoff (the shutdown
    /// ends the wait).
    async fn sleep_watching_close(&mut self, pause: Duration) {
        let until = tokio::time::Instant::now() + pause;
        loop {
            if self.closed {
                tokio::time::sleep_until(until).await;
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                changed = self.durable.changed() => {
                    if changed.is_err() {
                        self.closed = true;
                        return;
                    }
                }
            }
        }
    }

    /// Connects, finds where the table ends, and ships until PostgreSQL fails, the trail is
    /// closed and shipped, or shipping must stop.
    async fn session(&mut self, failing: &mut bool) -> End {
        let mut client = match self.target.connect().await {
            Ok(client) => client,
            Err(reason) => return End::Retry(reason),
        };
        if let Err(error) = self.target.ensure_table(&mut client).await {
            return End::Retry(format!("cannot create the table: {error}"));
        }
        let mut source = match self.resume(&client).await {
            Ok(source) => source,
            Err(end) => return end,
        };
        if *failing {
            tracing::info!(
                postgres = %self.target.describe(),
                origin = %self.origin,
                from_seq = source.next_seq(),
                "shipping audit records to PostgreSQL again"
            );
            *failing = false;
        }
        let insert = match client
            .prepare(&self.target.table().insert_statement())
            .await
        {
            Ok(statement) => statement,
            Err(error) => return End::Retry(error.to_string()),
        };
        loop {
            let durable = *self.durable.borrow_and_update();
            if source.next_seq() > durable {
                if self.closed {
                    return End::Done;
                }
                if self.durable.changed().await.is_err() {
                    self.closed = true;
                }
                continue;
            }
            // Reading and parsing up to a batch of lines is file work: off the async threads.
            let read = tokio::task::spawn_blocking(move || {
                let batch = read_batch(&mut source, durable);
                (source, batch)
            })
            .await;
            let batch = match read {
                Ok((back, Ok(batch))) => {
                    source = back;
                    batch
                }
                Ok((_, Err(gap))) => return gap.into(),
                Err(error) => return End::Retry(format!("reading the trail back failed: {error}")),
            };
            if batch.is_empty() {
                // Durable but not readable yet (a rotation under way): look again shortly.
                tokio::time::sleep(REREAD).await;
                continue;
            }
            // A server that stopped answering (frozen, or a network that drops packets) ends the
            // session like one that refuses: reconnect, resume from the table.
            match tokio::time::timeout(BATCH_TIMEOUT, self.ship(&mut client, &insert, batch)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(end)) => return end,
                Err(_) => {
                    return End::Retry(format!(
                        "no answer to a batch within {} s",
                        BATCH_TIMEOUT.as_secs()
                    ))
                }
            }
        }
    }

    /// Where shipping resumes: after the highest `seq` the table holds for this origin, once the
    /// row there is found to be this trail's record.
    async fn resume(&mut self, client: &Client) -> Result<Source, End> {
        let table = self.target.table().sql();
        let row = client
            .query_opt(
                &format!(
                    "SELECT seq, line FROM {table} WHERE origin = $1 ORDER BY seq DESC LIMIT 1"
                ),
                &[&self.origin],
            )
            .await?;
        let Some(row) = row else {
            self.shipped.send_replace(0);
            return Ok(Source::new(&self.live, 1));
        };
        let seq: i64 = row.try_get(0)?;
        let line: String = row.try_get(1)?;
        let seq = u64::try_from(seq).unwrap_or(0);
        let durable = *self.durable.borrow();
        if seq > durable {
            return Err(End::Halt(format!(
                "the table holds seq {seq} for origin {:?}, past this trail's last record (seq {durable}): a second trail under the same origin, or a trail started over",
                self.origin
            )));
        }
        // The record there must be ours, byte for byte (unless archived locally). The source that
        // found it goes on from the next record, so the files are searched once.
        let live = self.live.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut check = Source::new(&live, seq);
            let local = check.read(seq);
            (check, local)
        })
        .await
        .map_err(|error| End::Retry(format!("reading the trail back failed: {error}")))?;
        let source = match found {
            (_, Ok(Some(local))) if local.text != line => {
                return Err(End::Halt(format!(
                    "the table's row at seq {seq} differs from this trail's record there"
                )))
            }
            (check, Ok(Some(_))) => check,
            _ => Source::new(&self.live, seq + 1),
        };
        self.shipped.send_replace(seq);
        Ok(source)
    }

    /// Inserts one batch in one transaction; rows already there must hold the same lines.
    async fn ship(
        &mut self,
        client: &mut Client,
        insert: &tokio_postgres::Statement,
        batch: Batch,
    ) -> Result<(), End> {
        let count = batch.len() as u64;
        let last = batch.seq.last().copied().unwrap_or(0);
        let tx = client.transaction().await?;
        let inserted = tx
            .query(
                insert,
                &[
                    &self.origin,
                    &batch.seq,
                    &batch.ts,
                    &batch.phase,
                    &batch.request_id,
                    &batch.client,
                    &batch.op,
                    &batch.token_ids,
                    &batch.outcome,
                    &batch.line,
                    &batch.nul,
                ],
            )
            .await?;
        if inserted.len() < batch.len() {
            let fresh: std::collections::HashSet<i64> = inserted
                .iter()
                .filter_map(|row| row.try_get(0).ok())
                .collect();
            let already: Vec<i64> = batch
                .seq
                .iter()
                .copied()
                .filter(|seq| !fresh.contains(seq))
                .collect();
            let table = self.target.table().sql();
            let rows = tx
                .query(
                    &format!("SELECT seq, line FROM {table} WHERE origin = $1 AND seq = ANY($2)"),
                    &[&self.origin, &already],
                )
                .await?;
            for row in rows {
                let seq: i64 = row.try_get(0)?;
                let line: String = row.try_get(1)?;
                // The batch's seqs are consecutive, so sorted.
                let ours = batch
                    .seq
                    .binary_search(&seq)
                    .ok()
                    .map(|i| batch.line[i].as_str());
                if ours != Some(line.as_str()) {
                    return Err(End::Halt(format!(
                        "the table already holds a row at seq {seq} whose line differs from this trail's record"
                    )));
                }
            }
        }
        tx.commit().await?;
        self.shipped.send_replace(u64::try_from(last).unwrap_or(0));
        self.metrics.audit_shipped(count);
        Ok(())
    }
}

/// Keeps `tokengate_audit_ship_lag_records` at the durable records not yet shipped, whatever the
/// shipper is doing (connecting, backing off, halted), until the trail is closed and the shipper
/// stops.
async fn report_lag(
    mut durable: watch::Receiver<u64>,
    mut shipped: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
) {
    loop {
        let lag = durable
            .borrow_and_update()
            .saturating_sub(*shipped.borrow_and_update());
        metrics.set_audit_ship_lag(lag);
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { break },
            changed = shipped.changed() => if changed.is_err() { break },
        }
    }
    // The trail is closed (or the shipper stopped): only the shipped count moves now.
    while shipped.changed().await.is_ok() {
        let lag = durable.borrow().saturating_sub(*shipped.borrow());
        metrics.set_audit_ship_lag(lag);
    }
}

/// Reads up to [`BATCH`] durable records (and [`BATCH_BYTES`]) into a batch.
fn read_batch(source: &mut Source, durable: u64) -> Result<Batch, Gap> {
    let mut batch = Batch::default();
    while batch.len() < BATCH && batch.bytes < BATCH_BYTES {
        let Some(line) = source.read(durable)? else {
            break;
        };
        batch.push(line.seq, &line.record, line.text);
    }
    Ok(batch)
}
