//! The policies a server offers, by name, loaded from a directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{Policy, PolicyError};

/// Policies by name.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    by_name: BTreeMap<String, Arc<Policy>>,
}

impl PolicySet {
    /// Loads every `*.toml` in `dir`. Any invalid file, two files with
    /// the same policy name, or preopen roots of two policies that nest
    /// where one is `rw` ([`check_roots`](super::check_roots)) is an error:
    /// a server must not start with a policy silently missing or one
    /// tenant able to redirect another's directory.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let mut set = Self::default();
        for path in paths {
            let policy = Policy::load(&path)?;
            if let Some(other) = set.by_name.get(&policy.name) {
                return Err(PolicyError::Invalid {
                    path: path.clone(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "policy name `{}` is already used by {}",
                        policy.name,
                        other.source.as_deref().unwrap_or(Path::new("?")).display()
                    ),
                });
            }
            set.by_name.insert(policy.name.clone(), Arc::new(policy));
        }
        super::check_roots(set.by_name.values().map(|p| p.as_ref()))?;
        Ok(set)
    }

    /// Adds or replaces a policy.
    pub fn insert(&mut self, policy: Policy) {
        self.by_name.insert(policy.name.clone(), Arc::new(policy));
    }

    /// The policy named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Policy>> {
        self.by_name.get(name).cloned()
    }

    /// Every policy, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.by_name.values()
    }

    /// How many policies.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policies_load_as_a_set() {
        let set = PolicySet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
            .unwrap();
        assert!(set.get("reporter").is_some());
        assert!(set.get("github-fetcher").is_some());
        assert!(set.len() >= 3);
    }

    #[test]
    fn a_root_inside_another_policys_rw_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "name = \"a\"\n[[filesystem]]\nhost = \"/tmp/x\"\nguest = \"/work\"\nmode = \"rw\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "name = \"b\"\n[[filesystem]]\nhost = \"/tmp/x/in\"\nguest = \"/in\"\nmode = \"ro\"\n",
        )
        .unwrap();
        let err = PolicySet::load_dir(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PolicyError::OverlappingRoots(o)
                if (o.policy.as_str(), o.other_policy.as_str()) == ("b", "a")),
            "{err}"
        );
    }

    #[test]
    fn two_files_with_one_name_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "name = \"same\"").unwrap();
        std::fs::write(dir.path().join("b.toml"), "name = \"same\"").unwrap();
        let err = PolicySet::load_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("already used by"), "{err}");
    }
}
