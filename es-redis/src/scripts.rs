//! The Lua scripts, kept in `src/scripts/*.lua` and run with [`redis::Script`] (`EVALSHA`,
//! loading the script and retrying when the server does not know it yet).
//!
//! Each script starts with a `#!lua` shebang (Redis 7 or later): Redis then checks
//! `maxmemory` before a writing script starts rather than at its first write, so an append
//! refused for memory writes nothing, and the read scripts, flagged `no-writes`, may run on
//! replicas.

use std::sync::LazyLock;

use redis::Script;

/// The scripts, each hashed once per process.
pub(crate) struct Scripts {
    /// Checks the expected version, then XADDs the events and extends the index.
    pub append: Script,
    /// One page of an aggregate's events.
    pub read_stream: Script,
    /// The snapshot (if of the wanted layout) and the first page of events after it.
    pub load_snapshot_and_tail: Script,
    /// Saves a snapshot unless a newer one is stored.
    pub save_snapshot: Script,
    /// Applies a read-model update unless its entry was applied, and records it.
    pub read_model_commit: Script,
    /// Forgets applied entries that can no longer be delivered.
    pub prune_applied: Script,
    /// Copies an entry to a dead-letter stream and acknowledges it.
    pub dead_letter: Script,
    /// A consumer group's progress on one stream.
    pub group_status: Script,
    /// A data subject's key, made if it has none.
    pub subject_key: Script,
    /// Erases a data subject's key.
    pub erase_subject: Script,
    /// Deletes an aggregate hard and leaves its tombstone.
    pub delete_stream: Script,
}

const WRITES: &str = "#!lua\n";
const NO_WRITES: &str = "#!lua flags=no-writes\n";
const ENTRY_IDS: &str = include_str!("scripts/entry_ids.lua");
const READ_PAGE: &str = include_str!("scripts/read_page.lua");

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    append: Script::new(&[WRITES, ENTRY_IDS, include_str!("scripts/append.lua")].concat()),
    read_stream: Script::new(
        &[
            NO_WRITES,
            ENTRY_IDS,
            READ_PAGE,
            include_str!("scripts/read_stream.lua"),
        ]
        .concat(),
    ),
    load_snapshot_and_tail: Script::new(
        &[
            NO_WRITES,
            ENTRY_IDS,
            READ_PAGE,
            include_str!("scripts/load_snapshot_and_tail.lua"),
        ]
        .concat(),
    ),
    save_snapshot: Script::new(&[WRITES, include_str!("scripts/save_snapshot.lua")].concat()),
    read_model_commit: Script::new(
        &[WRITES, include_str!("scripts/read_model_commit.lua")].concat(),
    ),
    prune_applied: Script::new(&[WRITES, include_str!("scripts/prune_applied.lua")].concat()),
    dead_letter: Script::new(&[WRITES, include_str!("scripts/dead_letter.lua")].concat()),
    group_status: Script::new(&[NO_WRITES, include_str!("scripts/group_status.lua")].concat()),
    subject_key: Script::new(&[WRITES, include_str!("scripts/subject_key.lua")].concat()),
    erase_subject: Script::new(&[WRITES, include_str!("scripts/erase_subject.lua")].concat()),
    delete_stream: Script::new(
        &[WRITES, ENTRY_IDS, include_str!("scripts/delete_stream.lua")].concat(),
    ),
});
