//! The Lua scripts, one file each under `lua/`: every multi-key change is
//! one script, so no crash can leave half of it.

use redis::Script;

/// The scripts, loaded once per backend.
pub(super) struct Scripts {
    /// Compare-and-set of a task, appending events; optionally takes it out
    /// of the delayed set (only with the score its caller saw, else nothing
    /// changes: -4), changes the tenant's running count (refusing over the
    /// cap), acks a queue entry, queues the task itself or schedules it for
    /// later, records the queue entry that now stands for the task
    /// (`entry`), releases dependents, and sets expiry — all in one step, so
    /// no crash can leave half of it.
    pub(super) cas: Script,
    /// Appends run events of the current attempt of an unfinished task, or
    /// (with no events) records the attempt's worker.
    pub(super) record: Script,
    /// Resets a lease's idle time if the attempt is still the task's current
    /// one and has not handed its lease back.
    pub(super) renew: Script,
    /// Stores new tasks under an idempotency key, atomically.
    pub(super) create: Script,
    /// Takes task ARGV[1] out of the delayed set if its score is still
    /// ARGV[2] (a newer schedule stays), and queues it when it is QUEUED
    /// (deferred by its tenant's running cap). 1 when queued.
    pub(super) unschedule: Script,
    /// Hands a running attempt's lease back: its pending entry moves to the
    /// `released` consumer with an idle time longer than any lease, so the
    /// next XAUTOCLAIM of any replica takes it over; `released` = the
    /// attempt, so its renewals fail from now on.
    pub(super) release: Script,
    /// Where an unfinished task stands: `held` when it is in the delayed set
    /// or its queue entry waits in the stream or is pending (a lease),
    /// `unknown` for a RUNNING task stored before tasks recorded their entry,
    /// else stranded: a QUEUED one is queued again here (`requeued`), others
    /// are left to a compare-and-set (`stranded`).
    pub(super) sweep: Script,
    /// Removes up to ARGV[3] consumers of group ARGV[1] idle longer than
    /// ARGV[2] ms with nothing pending (in one step, so none is handed an
    /// entry first).
    pub(super) dead_consumers: Script,
}

impl Scripts {
    pub(super) fn load() -> Self {
        Self {
            cas: Script::new(include_str!("lua/cas.lua")),
            record: Script::new(include_str!("lua/record.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            create: Script::new(include_str!("lua/create.lua")),
            unschedule: Script::new(include_str!("lua/unschedule.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            sweep: Script::new(include_str!("lua/sweep.lua")),
            dead_consumers: Script::new(include_str!("lua/dead_consumers.lua")),
        }
    }
}
