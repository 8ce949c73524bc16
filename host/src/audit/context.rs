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

use serde_json::{Map, Value};

use super::record::Record;

/// Kind of the record that defines a context.
pub const CONTEXT_KIND: &str = "run.context";
/// Kind of the one record of a run that started and ended within one batch,
/// with nothing else recorded about it in between.
pub const RUN_KIND: &str = "run";
/// Kind of the record of a run that started (written only when the run
/// outlives one batch interval, or something else is recorded about it).
pub const STARTED_KIND: &str = "run.started";
/// Kind of the record of a run that ended after its `run.started`.
pub const ENDED_KIND: &str = "run.ended";

/// The field that carries a context number.
pub const CONTEXT_FIELD: &str = "ctx";

/// Most contexts one file's table keeps before starting over (numbers keep
/// counting up, so none is reused within a file).
const MAX_CONTEXTS: usize = 4096;

/// The writer's table for the current file: context → number.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<String, u64>,
    next: u64,
}

impl Interner {
    /// A table continuing the contexts `file` defined (`defined` as read).
    pub(crate) fn continuing(defined: &Contexts) -> Self {
        let mut table = Self::default();
        for (id, context) in &defined.by_id {
            table.ids.insert(context.to_string(), *id);
            table.next = table.next.max(*id);
        }
        table
    }

    /// The number of `context`, or `None` when it must be defined first
    /// (then [`Interner::define`]).
    pub(crate) fn get(&self, context: &Value) -> Option<u64> {
        self.ids.get(&context.to_string()).copied()
    }

    /// The fields of a new `run.context` record for `context`, and its
    /// number. Call [`Interner::defined`] once the record is written.
    pub(crate) fn define(&self, context: &Value) -> (u64, Value) {
        let id = self.next + 1;
        let mut fields = Map::new();
        fields.insert(CONTEXT_FIELD.into(), id.into());
        if let Value::Object(map) = context {
            fields.extend(map.clone());
        }
        (id, Value::Object(fields))
    }

    /// Records that context `id` is now on file.
    pub(crate) fn defined(&mut self, context: &Value, id: u64) {
        if self.ids.len() >= MAX_CONTEXTS {
            self.ids.clear();
        }
        self.ids.insert(context.to_string(), id);
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
    fn a_reference_expands_to_the_context_its_file_defined() {
        let context = serde_json::json!({"module": "m", "caller": "local"});
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
}
