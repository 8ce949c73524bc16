//! Run contexts: the static part of a run (module, world, policy and its
//! digest, caller, limits), written once per log file as a `run.context`
//! record and referenced from each run record by its number (`ctx`).
//!
//! Under load thousands of runs share one context, so repeating it in
//! every record was most of the log's volume. A context number is only
//! meaningful in the file that defines it: each file starts its own table,
//! so a file read on its own (or left after older files were pruned) still
//! resolves every reference.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::record::Record;

/// Kind of the record that defines a context.
pub const CONTEXT_KIND: &str = "run.context";
/// Kind of the one record of a run that started and ended within one batch,
/// with nothing else recorded about it in between.
pub const RUN_KIND: &str = "run";
/// Kind of the record of several runs, each of which would otherwise be a
/// `run` record, sharing one context: the writer puts the short runs of
/// one round that share a context into one record, up to 64 a record
/// (see [`unfold`]).
pub const RUNS_KIND: &str = "runs";
/// The columns of a run in a `runs` record, in order, as the record's
/// `cols` field names them.
pub const RUNS_COLUMNS: &str = r#"["run_id","outcome","fuel","mem","wall_us","cpu_us"]"#;
/// The names [`RUNS_COLUMNS`] spells, the only columns [`unfold`] reads.
const RUNS_COLUMN_NAMES: [&str; 6] = ["run_id", "outcome", "fuel", "mem", "wall_us", "cpu_us"];
/// Of [`RUNS_COLUMNS`], those a `run` record keeps under `usage`.
const USAGE_COLUMNS: [&str; 4] = ["fuel", "mem", "wall_us", "cpu_us"];
/// Kind of the record of a run that started (written only when the run
/// outlives one batch interval, or something else is recorded about it).
pub const STARTED_KIND: &str = "run.started";
/// Kind of the record of a run that ended after its `run.started`.
pub const ENDED_KIND: &str = "run.ended";

/// The field that carries a context number.
pub const CONTEXT_FIELD: &str = "ctx";

/// A run's id as the log's messages carry it: at most [`RunId::MAX`]
/// bytes, kept inline, so handing a run's start and end to the writer
/// allocates nothing on the run's thread and frees nothing on the writer's
/// (a shared `Arc<str>` per run cost both, and freeing memory another
/// thread allocated is the slow path of the allocator).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId {
    len: u8,
    bytes: [u8; RunId::MAX],
}

impl RunId {
    /// The longest id: 32 bytes, the hex of the host's 128-bit run ids.
    pub const MAX: usize = 32;

    /// `id` as a run id, or `None` when it is longer than [`RunId::MAX`].
    pub fn new(id: &str) -> Option<Self> {
        let mut bytes = [0u8; Self::MAX];
        bytes.get_mut(..id.len())?.copy_from_slice(id.as_bytes());
        Some(Self {
            len: id.len() as u8,
            bytes,
        })
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .expect("made from a str, cut at its end")
    }
}

impl std::fmt::Debug for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most contexts one file's table keeps before starting over (numbers keep
/// counting up, so none is reused within a file).
const MAX_CONTEXTS: usize = 4096;

/// A run's context as the caller hands it to the log: the JSON object's
/// text, made once per run and shared (not copied) by its start and end.
/// The writer keys its table by this text, so building a context costs one
/// serialisation on the caller and a hash lookup on the writer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunContext(Arc<str>);

impl RunContext {
    /// The context of `fields`, which must be a JSON object.
    pub fn new(fields: &impl serde::Serialize) -> Self {
        Self(
            serde_json::to_string(fields)
                .expect("a run context always serialises")
                .into(),
        )
    }

    /// The context's JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The context as a JSON object (for the record that defines it).
    pub(crate) fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

/// Most contexts one shard of a [`ContextCache`] keeps.
const CACHED_CONTEXTS: usize = 16;

/// Shards of a [`ContextCache`]: threads use them by turns, so each of a
/// runtime's few worker threads has one to itself.
const CACHE_SHARDS: usize = 8;

/// The last few run contexts built, each with the key it was built from,
/// so runs that share a module, policy, caller and limits share one
/// context's text instead of each serialising it. Bounded: the oldest
/// entry of a shard makes room for a new one.
///
/// Sharded by thread: a run takes its thread's shard, so two workers never
/// take turns at one lock, and each shard's contexts are its own `Arc`s,
/// whose counts only that shard's runs (and the writer) touch. One shared
/// lock and `Arc` bounced between the cores on every run, about a tenth
/// of what the log cost a run's thread.
#[derive(Debug)]
pub struct ContextCache<K> {
    shards: Box<[Shard<K>]>,
}

/// One shard of a [`ContextCache`]: its entries and the one the next new
/// context replaces once it is full. Each on cache lines of its own: two
/// shards side by side shared a line, which the two workers' locks then
/// took from each other on every run.
#[derive(Debug)]
#[repr(align(128))]
struct Shard<K>(std::sync::Mutex<(usize, Vec<(K, RunContext)>)>);

impl<K> Default for ContextCache<K> {
    fn default() -> Self {
        Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| Shard(std::sync::Mutex::new((0, Vec::new()))))
                .collect(),
        }
    }
}

/// This thread's shard number (threads numbered in the order they first
/// ask).
fn shard_of_thread() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    SHARD.with(|shard| *shard % CACHE_SHARDS)
}

impl<K> ContextCache<K> {
    /// The context whose key `matches`, or one made by `build` (and kept).
    pub fn get_or_build(
        &self,
        matches: impl Fn(&K) -> bool,
        build: impl FnOnce() -> (K, RunContext),
    ) -> RunContext {
        let shard = &self.shards[shard_of_thread()].0;
        let mut guard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, context)) = guard.1.iter().find(|(k, _)| matches(k)) {
            return context.clone();
        }
        let (key, context) = build();
        let (next, entries) = &mut *guard;
        if entries.len() < CACHED_CONTEXTS {
            entries.push((key, context.clone()));
        } else {
            entries[*next] = (key, context.clone());
            *next = (*next + 1) % CACHED_CONTEXTS;
        }
        context
    }
}

/// How a run ended, as its `run` or `run.ended` record says it: the
/// outcome (`ok` or an error kind, `cancelled`, `interrupted`,
/// `host-crashed`), the error, the usage and the denial count. Typed rather
/// than a JSON map so the end of a run costs no map building on the run's
/// thread; absent figures are left out of the record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunOutcome {
    /// `ok`, or what went wrong.
    pub outcome: std::borrow::Cow<'static, str>,
    /// The error, as the caller was told it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the run used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<RunUsage>,
    /// Capability denials (recorded and dropped), when there were any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denials: Option<u64>,
}

impl RunOutcome {
    /// An outcome with nothing else to say.
    pub fn new(outcome: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self {
            outcome: outcome.into(),
            error: None,
            usage: None,
            denials: None,
        }
    }
}

/// A run's usage as the audit log keeps it: short names, one per figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RunUsage {
    /// Fuel units consumed.
    pub fuel: u64,
    /// Peak linear memory, bytes.
    pub mem: u64,
    /// Wall time, µs.
    pub wall_us: u64,
    /// CPU time, µs.
    pub cpu_us: u64,
}

/// The writer's table for the current file: context → number.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<RunContext, u64, foldhash::fast::RandomState>,
    next: u64,
    /// The contexts looked up last and their numbers: runs sharing a
    /// context share one of a few `Arc`s (one per [`ContextCache`] shard),
    /// so most lookups end at a pointer comparison instead of hashing the
    /// context's text.
    recent: Vec<(RunContext, u64)>,
    /// The entry of `recent` the next miss replaces.
    next_recent: usize,
}

/// Entries of [`Interner`]'s pointer-compared front: one per cache shard.
const RECENT: usize = CACHE_SHARDS;

impl Interner {
    /// A table continuing the contexts `file` defined (`defined` as read).
    pub(crate) fn continuing(defined: &Contexts) -> Self {
        let mut table = Self::default();
        for (id, context) in &defined.by_id {
            table.ids.insert(RunContext::new(context), *id);
            table.next = table.next.max(*id);
        }
        table
    }

    /// The number of `context`, or `None` when it must be defined first
    /// (then [`Interner::define`]).
    pub(crate) fn get(&mut self, context: &RunContext) -> Option<u64> {
        if let Some((_, id)) = self
            .recent
            .iter()
            .find(|(recent, _)| Arc::ptr_eq(&recent.0, &context.0))
        {
            return Some(*id);
        }
        let id = self.ids.get(context).copied()?;
        self.remember(context, id);
        Some(id)
    }

    /// Puts `context` at the pointer-compared front.
    fn remember(&mut self, context: &RunContext, id: u64) {
        if self.recent.len() < RECENT {
            self.recent.push((context.clone(), id));
        } else {
            self.recent[self.next_recent] = (context.clone(), id);
            self.next_recent = (self.next_recent + 1) % RECENT;
        }
    }

    /// The fields of a new `run.context` record for `context`, and its
    /// number. Call [`Interner::defined`] once the record is written.
    pub(crate) fn define(&self, context: &RunContext) -> (u64, Value) {
        let id = self.next + 1;
        let mut fields = Map::new();
        fields.insert(CONTEXT_FIELD.into(), id.into());
        if let Value::Object(map) = context.to_value() {
            fields.extend(map);
        }
        (id, Value::Object(fields))
    }

    /// Records that context `id` is now on file.
    pub(crate) fn defined(&mut self, context: &RunContext, id: u64) {
        if self.ids.len() >= MAX_CONTEXTS {
            self.ids.clear();
        }
        self.ids.insert(context.clone(), id);
        self.remember(context, id);
        self.next = self.next.max(id);
    }

    /// A new file: nothing is defined in it yet.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

/// The contexts one file defines, as a reader resolves them.
#[derive(Debug, Default, Clone)]
pub struct Contexts {
    by_id: HashMap<u64, Value>,
}

impl Contexts {
    /// Call at the start of each file: numbers are per file.
    pub fn new_file(&mut self) {
        self.by_id.clear();
    }

    /// Learns a `run.context` record; returns whether `record` was one.
    pub fn learn(&mut self, record: &Record) -> bool {
        if record.kind != CONTEXT_KIND {
            return false;
        }
        if let (Some(id), Value::Object(map)) =
            (record.fields[CONTEXT_FIELD].as_u64(), &record.fields)
        {
            let mut context = map.clone();
            context.remove(CONTEXT_FIELD);
            self.by_id.insert(id, Value::Object(context));
        }
        true
    }

    /// The context `record` refers to, if it names one this file defined.
    pub fn of(&self, record: &Record) -> Option<&Value> {
        self.by_id.get(&record.fields[CONTEXT_FIELD].as_u64()?)
    }

    /// The runs `record` stands for (see [`unfold`]), each with its
    /// context's fields filled in: what `chassis audit show` prints.
    pub fn expand_all(&self, record: &Record) -> Vec<Record> {
        unfold(record).iter().map(|r| self.expand(r)).collect()
    }

    /// `record` with its context's fields filled in (fields it carries
    /// itself win), so readers see a self-contained record.
    pub fn expand(&self, record: &Record) -> Record {
        let mut out = record.clone();
        if let (Some(Value::Object(context)), Value::Object(fields)) =
            (self.of(record), &mut out.fields)
        {
            for (k, v) in context {
                fields.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        out
    }
}

/// The records `record` stands for: a `runs` record as the `run` record of
/// each of its runs (its seq, time and `ctx`; the columns its `cols` names,
/// the figures under `usage`, as a `run` record has them), any other record
/// as itself. A `runs` record that is not of that shape (no runs, a column
/// other than [`RUNS_COLUMNS`]' own, which could otherwise stand in for a
/// context's `module` or `caller`, a row of another length) is returned
/// as it is, for its reader to see.
pub fn unfold(record: &Record) -> Vec<Record> {
    if record.kind != RUNS_KIND {
        return vec![record.clone()];
    }
    let (Some(cols), Some(runs)) = (
        record.fields["cols"].as_array(),
        record.fields["runs"].as_array(),
    ) else {
        return vec![record.clone()];
    };
    let known = |col: &Value| col.as_str().is_some_and(|c| RUNS_COLUMN_NAMES.contains(&c));
    if runs.is_empty() || !cols.iter().all(known) {
        return vec![record.clone()];
    }
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let Some(values) = run.as_array().filter(|v| v.len() == cols.len()) else {
            return vec![record.clone()];
        };
        let mut fields = Map::new();
        let mut usage = Map::new();
        for (col, value) in cols.iter().zip(values) {
            let Some(col) = col.as_str() else {
                return vec![record.clone()];
            };
            if USAGE_COLUMNS.contains(&col) {
                usage.insert(col.to_string(), value.clone());
            } else {
                fields.insert(col.to_string(), value.clone());
            }
        }
        fields.insert(CONTEXT_FIELD.into(), record.fields[CONTEXT_FIELD].clone());
        if !usage.is_empty() {
            fields.insert("usage".into(), Value::Object(usage));
        }
        out.push(Record {
            seq: record.seq,
            ts: record.ts.clone(),
            kind: RUN_KIND.into(),
            fields: Value::Object(fields),
            prev: record.prev.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, fields: Value) -> Record {
        Record {
            seq: 1,
            ts: "t".into(),
            kind: kind.into(),
            fields,
            prev: String::new(),
        }
    }

    #[test]
    fn the_cache_builds_a_context_once_per_key_and_stays_bounded() {
        let cache = ContextCache::<u32>::default();
        let built = std::cell::Cell::new(0);
        let get = |k: u32| {
            cache.get_or_build(
                |&e| e == k,
                || {
                    built.set(built.get() + 1);
                    (k, RunContext::new(&serde_json::json!({ "k": k })))
                },
            )
        };
        assert_eq!(get(1).as_str(), r#"{"k":1}"#);
        assert_eq!(get(1).as_str(), r#"{"k":1}"#);
        assert_eq!(built.get(), 1);
        for k in 2..=40 {
            assert_eq!(get(k).as_str(), format!(r#"{{"k":{k}}}"#));
        }
        assert_eq!(built.get(), 40);
        let shard = &cache.shards[shard_of_thread()].0;
        assert_eq!(shard.lock().unwrap().1.len(), CACHED_CONTEXTS);
        // 1 was pushed out long ago and is built again.
        get(1);
        assert_eq!(built.get(), 41);
    }

    #[test]
    fn threads_build_their_own_copy_and_the_writer_numbers_them_as_one() {
        let cache = Arc::new(ContextCache::<u32>::default());
        let build = |cache: &ContextCache<u32>| {
            cache.get_or_build(
                |&k| k == 1,
                || (1, RunContext::new(&serde_json::json!({ "k": 1 }))),
            )
        };
        let here = build(&cache);
        assert!(
            Arc::ptr_eq(&here.0, &build(&cache).0),
            "one copy per thread"
        );
        let other = {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || build(&cache)).join().unwrap()
        };
        assert_eq!(here, other);
        // Threads are numbered in turn, so the next thread has another shard.
        assert!(
            !Arc::ptr_eq(&here.0, &other.0),
            "the other thread's own copy"
        );

        let mut table = Interner::default();
        let (id, _) = table.define(&here);
        table.defined(&here, id);
        assert_eq!(table.get(&other), Some(id), "same text, same number");
        assert_eq!(table.get(&here), Some(id));
        assert_eq!(
            table.recent.len(),
            2,
            "both copies at the pointer-compared front"
        );
    }

    #[test]
    fn a_reference_expands_to_the_context_its_file_defined() {
        let context = RunContext::new(&serde_json::json!({"module": "m", "caller": "local"}));
        let mut table = Interner::default();
        assert_eq!(table.get(&context), None);
        let (id, fields) = table.define(&context);
        table.defined(&context, id);
        assert_eq!(table.get(&context), Some(id));

        let mut read = Contexts::default();
        assert!(read.learn(&record(CONTEXT_KIND, fields)));
        let run = record(
            RUN_KIND,
            serde_json::json!({"run_id": "r", "ctx": id, "outcome": "ok"}),
        );
        let full = read.expand(&run);
        assert_eq!(full.fields["module"], "m");
        assert_eq!(full.fields["caller"], "local");
        assert_eq!(full.fields["outcome"], "ok");

        // The next file defines its own numbers.
        read.new_file();
        assert_eq!(read.expand(&run).fields.get("module"), None);
        let continued = Interner::continuing(&read);
        assert_eq!(continued.define(&context).0, 1);
    }

    #[test]
    fn the_columns_a_runs_record_names_are_the_ones_unfold_reads() {
        let spelled: Vec<String> = serde_json::from_str(RUNS_COLUMNS).unwrap();
        assert_eq!(spelled, RUNS_COLUMN_NAMES);
        assert!(USAGE_COLUMNS.iter().all(|c| RUNS_COLUMN_NAMES.contains(c)));
    }

    #[test]
    fn a_runs_record_unfolds_only_when_it_has_the_shape_the_writer_writes() {
        let cols: Value = serde_json::from_str(RUNS_COLUMNS).unwrap();
        let row = serde_json::json!(["r1", "ok", 1, 2, 3, 4]);
        let runs = |cols: Value, rows: Value| {
            record(
                RUNS_KIND,
                serde_json::json!({"ctx": 1, "cols": cols, "runs": rows}),
            )
        };

        let good = runs(
            cols.clone(),
            serde_json::json!([row, ["r2", "ok", 5, 6, 7, 8]]),
        );
        let unfolded = unfold(&good);
        assert_eq!(unfolded.len(), 2);
        assert_eq!(unfolded[0].kind, RUN_KIND);
        assert_eq!(
            unfolded[1].fields,
            serde_json::json!({"run_id": "r2", "outcome": "ok", "ctx": 1,
                "usage": {"fuel": 5, "mem": 6, "wall_us": 7, "cpu_us": 8}})
        );

        // Each odd shape comes back as the record itself, nothing dropped
        // and nothing a context fills in overridden.
        let forged = serde_json::json!(["run_id", "outcome", "module", "mem", "wall_us", "cpu_us"]);
        for odd in [
            runs(cols.clone(), serde_json::json!([])),
            runs(forged, serde_json::json!([row])),
            runs(cols.clone(), serde_json::json!([["r1", "ok"]])),
            runs(serde_json::json!("run_id"), serde_json::json!([row])),
        ] {
            assert_eq!(unfold(&odd), vec![odd.clone()]);
        }
    }
}
