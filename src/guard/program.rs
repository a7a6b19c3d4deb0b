//! The `command` allow list (`--command-allow`). Programs are compared by
//! canonical absolute path after a PATH lookup, so `ls`, `/bin/ls` and
//! `/usr/bin/ls` (where /bin links to /usr/bin) are one program, and a job
//! cannot reach an unlisted program by naming it another way.
//!
//! - The list is resolved once, at start-up, against jobsd's PATH; a
//!   listed program that is not found is a start-up error.
//! - A job's program is resolved the same way: a name through jobsd's own
//!   PATH (never the PATH the job's `env` sets), a path with a `/` from the
//!   job's `cwd`. It is checked when the job is created and again when it
//!   runs, and the run executes the path that was checked.
//! - Canonical paths compare files, not names: a multi-call binary
//!   (busybox) listed under one name admits all of its names.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// A program found: where (absolute, as found) and what it is (canonical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    pub canonical: PathBuf,
}

/// Whether `path` is a file this process could execute.
fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// Finds `program` as `execvp` would: a name with no `/` in each directory
/// of `search` (a PATH value) in turn, a path with a `/` from `base`.
pub fn locate(program: &str, search: Option<&OsStr>, base: &Path) -> Result<Located, String> {
    if program.is_empty() {
        return Err("the program is empty".into());
    }
    let found = if program.contains('/') {
        let path = base.join(program);
        if !is_executable(&path) {
            return Err(format!(
                "{program:?} is not an executable file (looked at {})",
                path.display()
            ));
        }
        path
    } else {
        let dirs = search.map(std::env::split_paths).into_iter().flatten();
        let mut found = None;
        for dir in dirs {
            // An empty PATH entry means the current directory.
            let dir = if dir.as_os_str().is_empty() {
                base.to_path_buf()
            } else {
                base.join(dir)
            };
            let candidate = dir.join(program);
            if is_executable(&candidate) {
                found = Some(candidate);
                break;
            }
        }
        found.ok_or_else(|| format!("{program:?} is not found in jobsd's PATH"))?
    };
    let canonical = std::fs::canonicalize(&found)
        .map_err(|e| format!("{program:?}: cannot resolve {}: {e}", found.display()))?;
    Ok(Located {
        path: found,
        canonical,
    })
}

/// The programs `command` may run.
#[derive(Debug, Clone)]
pub struct ProgramAllowList {
    /// As listed, and the canonical path each stands for.
    programs: Vec<(String, PathBuf)>,
}

impl ProgramAllowList {
    /// Resolves the listed programs (blank entries skipped) against this
    /// process's PATH and working directory; `None` for an empty list
    /// (no allow list). A program that is not found is an error.
    pub fn resolve(listed: &[String]) -> Result<Option<ProgramAllowList>, String> {
        let search = std::env::var_os("PATH");
        let base = std::env::current_dir()
            .map_err(|e| format!("--command-allow: cannot read the working directory: {e}"))?;
        Self::resolve_in(listed, search.as_deref(), &base)
    }

    /// [`ProgramAllowList::resolve`] against a given PATH and directory.
    pub fn resolve_in(
        listed: &[String],
        search: Option<&OsStr>,
        base: &Path,
    ) -> Result<Option<ProgramAllowList>, String> {
        let mut programs = Vec::new();
        for program in listed.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let located =
                locate(program, search, base).map_err(|e| format!("--command-allow: {e}"))?;
            programs.push((program.to_string(), located.canonical));
        }
        Ok((!programs.is_empty()).then_some(ProgramAllowList { programs }))
    }

    /// The path to execute for a job's `program` (with its `cwd`), or why
    /// it is refused.
    pub fn check(&self, program: &str, cwd: Option<&str>) -> Result<PathBuf, String> {
        let search = std::env::var_os("PATH");
        let here = std::env::current_dir()
            .map_err(|e| format!("cannot read jobsd's working directory: {e}"))?;
        let base = match cwd {
            Some(cwd) => here.join(cwd),
            None => here,
        };
        self.check_in(program, search.as_deref(), &base)
    }

    /// [`ProgramAllowList::check`] against a given PATH and directory.
    pub fn check_in(
        &self,
        program: &str,
        search: Option<&OsStr>,
        base: &Path,
    ) -> Result<PathBuf, String> {
        let located = locate(program, search, base)
            .map_err(|e| format!("{e}; --command-allow admits {}", self.listed()))?;
        if self.programs.iter().any(|(_, c)| *c == located.canonical) {
            Ok(located.path)
        } else {
            Err(format!(
                "program {program:?} ({}) is not in --command-allow ({})",
                located.canonical.display(),
                self.listed()
            ))
        }
    }

    /// The list as given, for messages and the start-up log.
    pub fn listed(&self) -> String {
        self.programs
            .iter()
            .map(|(name, canonical)| format!("{name} = {}", canonical.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let name = format!("jobsd-programs-{}", uuid::Uuid::new_v4().simple());
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(path.join("bin")).expect("temp dir");
            std::fs::create_dir_all(path.join("other")).expect("temp dir");
            TempDir(std::fs::canonicalize(path).expect("canonical"))
        }

        fn program(&self, relative: &str, mode: u32) -> PathBuf {
            let path = self.0.join(relative);
            std::fs::write(&path, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_are_looked_up_in_path_and_compared_canonically() {
        let dir = TempDir::new();
        let tool = dir.program("bin/tool", 0o755);
        dir.program("other/tool", 0o755);
        symlink(&tool, dir.0.join("other/alias")).expect("symlink");
        let search = std::env::join_paths([dir.0.join("bin"), dir.0.join("other")]).unwrap();
        let list = ProgramAllowList::resolve_in(&strings(&["tool"]), Some(&search), &dir.0)
            .unwrap()
            .expect("a list");
        let check = |program: &str| list.check_in(program, Some(&search), &dir.0);
        assert_eq!(check("tool"), Ok(tool.clone()));
        assert_eq!(check(tool.to_str().unwrap()), Ok(tool.clone()));
        assert_eq!(check("bin/tool"), Ok(dir.0.join("bin/tool")));
        // Another name for the same file passes; runs execute the path found.
        assert_eq!(check("alias"), Ok(dir.0.join("other/alias")));
        // Another file of the same name does not.
        let refused = check("other/tool").unwrap_err();
        assert!(
            refused.contains("is not in --command-allow (tool = "),
            "{refused}"
        );
        let missing = check("nothing").unwrap_err();
        assert!(missing.contains("not found in jobsd's PATH"), "{missing}");
    }

    #[test]
    fn files_that_cannot_be_executed_are_not_programs() {
        let dir = TempDir::new();
        dir.program("bin/plain", 0o644);
        let search = dir.0.join("bin").into_os_string();
        let error =
            ProgramAllowList::resolve_in(&strings(&["plain"]), Some(&search), &dir.0).unwrap_err();
        assert!(
            error.contains("--command-allow: \"plain\" is not found"),
            "{error}"
        );
        let error = locate("bin/plain", Some(&search), &dir.0).unwrap_err();
        assert!(error.contains("not an executable file"), "{error}");
        assert!(locate("", Some(&search), &dir.0).is_err());
        assert!(locate("bin", Some(&search), &dir.0).is_err());
    }

    #[test]
    fn an_empty_list_is_no_list() {
        let none = ProgramAllowList::resolve_in(&strings(&["", "  "]), None, Path::new("/"));
        assert!(matches!(none, Ok(None)));
    }

    #[test]
    fn real_programs_resolve_from_the_real_path() {
        let list = ProgramAllowList::resolve(&strings(&["sh"]))
            .unwrap()
            .expect("a list");
        let path = std::env::var_os("PATH");
        let sh = locate("sh", path.as_deref(), Path::new("/")).unwrap();
        assert_eq!(list.check("sh", None), Ok(sh.path.clone()));
        let canonical = sh.canonical.to_str().unwrap();
        assert_eq!(list.check(canonical, None), Ok(sh.canonical.clone()));
        let other = locate("true", path.as_deref(), Path::new("/")).unwrap();
        if other.canonical != sh.canonical {
            assert!(list.check("true", None).is_err());
        }
    }
}
