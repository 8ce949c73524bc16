//! Opening a preopen root so that it cannot be redirected.
//!
//! wasmtime-wasi opens a preopen by path and follows symlinks on the way.
//! A guest with `rw` over a parent of some root could replace that root
//! with a symlink to `/` and every later run would be handed the host's
//! root directory. So the sandbox walks the root itself, one component at
//! a time from `/`, each with `O_NOFOLLOW | O_DIRECTORY` relative to the
//! directory before it, and hands wasmtime `/proc/self/fd/N` for the result:
//! that magic link reopens exactly the directory already opened, whatever
//! happens to the path meanwhile. A symlink anywhere in the root's path is
//! refused, not followed: name the real directory in the policy.
//!
//! Policy loading also refuses roots nested with a `rw` root, so no guest
//! can write a component of another root in the first place; this is the
//! second wall.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;

/// A preopen root opened without following any symlink.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens absolute `path`, refusing a symlink in any component.
    pub(crate) fn open(path: &str) -> Result<Self, String> {
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err("not an absolute path".into());
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut dir = rustix::fs::openat(CWD, "/", flags, Mode::empty())
            .map_err(|e| format!("opening `/`: {e}"))?;
        let mut walked = std::path::PathBuf::from("/");
        for component in path.components() {
            let name = match component {
                Component::RootDir | Component::CurDir => continue,
                Component::Normal(name) => name,
                // Policy validation refuses `..`; refuse it here too rather
                // than walk up.
                Component::ParentDir | Component::Prefix(_) => {
                    return Err("`..` is not allowed in a preopen root".into());
                }
            };
            walked.push(name);
            dir = rustix::fs::openat(&dir, name, flags, Mode::empty()).map_err(|e| match e {
                // O_NOFOLLOW on a symlink: ELOOP; O_DIRECTORY on one: ENOTDIR.
                Errno::LOOP | Errno::NOTDIR if is_symlink(&walked) => format!(
                    "`{}` is a symbolic link; preopen roots are opened without following \
                     symlinks (name the real directory in the policy)",
                    walked.display()
                ),
                e => format!("`{}`: {}", walked.display(), std::io::Error::from(e)),
            })?;
        }
        Ok(Self { fd: dir })
    }

    /// A path that reopens exactly this directory (through `/proc`), for
    /// APIs that only take a path.
    pub(crate) fn reopen_path(&self) -> String {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd())
    }
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_real_directory_opens_and_reopens_as_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        let path = dir.path().join("in");
        let root = Root::open(path.to_str().unwrap()).unwrap();
        let reopened = std::fs::metadata(root.reopen_path()).unwrap();
        let real = std::fs::metadata(&path).unwrap();
        assert_eq!((reopened.dev(), reopened.ino()), (real.dev(), real.ino()));
    }

    #[test]
    fn a_symlink_in_any_component_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("real/sub")).unwrap();
        std::os::unix::fs::symlink("real", base.join("link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../..", base.join("real/up")).unwrap();
        for path in [
            base.join("link"),
            base.join("link/sub"),
            base.join("real/up"),
        ] {
            let err = Root::open(path.to_str().unwrap()).unwrap_err();
            assert!(
                err.contains("is a symbolic link"),
                "{}: {err}",
                path.display()
            );
        }
        let err = Root::open(base.join("real/missing").to_str().unwrap()).unwrap_err();
        assert!(err.contains("No such file"), "{err}");
        Root::open(base.join("real/sub").to_str().unwrap()).unwrap();
    }
}
