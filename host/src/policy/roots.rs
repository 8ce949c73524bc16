//! Preopen roots that overlap a writable root.
//!
//! A guest with `rw` on a directory can replace anything under it, for
//! example a subdirectory with a symlink to `/`. If another preopen root
//! (of the same policy or of any other policy the host loads) lies inside
//! that directory, the next run opening it would be redirected; if it
//! contains it, the writable tree is visible through a second root. Both
//! are refused at load. Roots are compared lexically, component by
//! component: the sandbox opens every root without following symlinks
//! (see `sandbox::preopen`), so a root that opens at all is its own real
//! path and the lexical answer is the true one.

use std::path::{Component, Path};

use super::{Mode, Policy, PolicyError, Preopen, RootOverlap};

/// How root `a` relates to root `b`, if one strictly contains the other.
pub(super) fn nesting(a: &str, b: &str) -> Option<&'static str> {
    let parts = |p: &str| -> Vec<String> {
        Path::new(p)
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    let (a, b) = (parts(a), parts(b));
    if a.len() > b.len() && a.starts_with(&b) {
        Some("lies inside")
    } else if b.len() > a.len() && b.starts_with(&a) {
        Some("contains")
    } else {
        None
    }
}

/// The first root of `existing` that `candidate` overlaps where either is
/// writable, with how they relate.
pub(super) fn overlap<'a>(
    candidate: &Preopen,
    existing: impl IntoIterator<Item = &'a Preopen>,
) -> Option<(&'a Preopen, &'static str)> {
    existing.into_iter().find_map(|o| {
        if candidate.mode != Mode::ReadWrite && o.mode != Mode::ReadWrite {
            return None;
        }
        nesting(&candidate.host, &o.host).map(|how| (o, how))
    })
}

/// Refuses any root of one policy that lies inside, or contains, a root of
/// another policy where either is `rw`. Called on every set of policies a
/// host loads and by `chassis policy check` on the files it is given.
pub fn check_roots<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Result<(), PolicyError> {
    let all: Vec<&Policy> = policies.into_iter().collect();
    for (i, p) in all.iter().enumerate() {
        for q in &all[i + 1..] {
            for root in &p.preopens {
                if let Some((other, relation)) = overlap(root, &q.preopens) {
                    // Reported from the later policy's side: its file is the one to fix.
                    return Err(PolicyError::OverlappingRoots(Box::new(RootOverlap {
                        path: q.source.clone().unwrap_or_default(),
                        policy: q.name.clone(),
                        root: format!("{} ({})", other.host, other.mode),
                        relation: invert(relation),
                        other_path: p.source.clone().unwrap_or_default(),
                        other_policy: p.name.clone(),
                        other_root: format!("{} ({})", root.host, root.mode),
                    })));
                }
            }
        }
    }
    Ok(())
}

fn invert(relation: &'static str) -> &'static str {
    if relation == "lies inside" {
        "contains"
    } else {
        "lies inside"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, roots: &[(&str, &str)]) -> Policy {
        let mut text = format!("name = \"{name}\"\n");
        for (i, (host, mode)) in roots.iter().enumerate() {
            text.push_str(&format!(
                "[[filesystem]]\nhost = \"{host}\"\nguest = \"/d{i}\"\nmode = \"{mode}\"\n"
            ));
        }
        Policy::parse(&text, Path::new(&format!("{name}.toml"))).unwrap()
    }

    #[test]
    fn nesting_is_by_whole_components() {
        assert_eq!(nesting("/tmp/x/in", "/tmp/x"), Some("lies inside"));
        assert_eq!(nesting("/tmp/x", "/tmp/x/in/deep"), Some("contains"));
        assert_eq!(nesting("/tmp/x/./in", "/tmp//x/"), Some("lies inside"));
        assert_eq!(
            nesting("/tmp/xy", "/tmp/x"),
            None,
            "a shared prefix is not nesting"
        );
        assert_eq!(nesting("/tmp/x", "/tmp/x/"), None, "the same directory");
        assert_eq!(nesting("/a", "/b/a"), None);
    }

    #[test]
    fn a_root_inside_another_policys_rw_root_names_both() {
        let work = policy("work", &[("/tmp/x", "rw")]);
        let reader = policy("reader", &[("/tmp/x/in", "ro")]);
        let err = check_roots([&work, &reader]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("reader.toml"), "{text}");
        assert!(
            text.contains("`/tmp/x/in (ro)` (policy `reader`) lies inside"),
            "{text}"
        );
        assert!(
            text.contains("`/tmp/x (rw)`, a root of policy `work` (work.toml)"),
            "{text}"
        );
        assert_eq!(err.kind(), crate::error::ErrorKind::InvalidRequest);
        // Either order, either direction.
        assert!(check_roots([&reader, &work]).is_err());
        let outer = policy("outer", &[("/tmp", "ro")]);
        let text = check_roots([&outer, &work]).unwrap_err().to_string();
        assert!(
            text.contains("`/tmp/x (rw)` (policy `work`) lies inside `/tmp (ro)`"),
            "{text}"
        );
    }

    #[test]
    fn read_only_nesting_and_disjoint_roots_are_fine() {
        let a = policy("a", &[("/srv/data", "ro"), ("/srv/out-a", "rw")]);
        let b = policy("b", &[("/srv/data/sub", "ro"), ("/srv/out-b", "rw")]);
        let shared = policy("shared", &[("/srv/out-a", "rw")]);
        check_roots([&a, &b, &shared]).unwrap();
    }
}
