//! Reading a default-jobs directory and checking every file in it, without
//! a database: what `jobsd validate` runs, and the first half of every scan
//! of the service.
//!
//! - The files are the directory's `*.yaml` and `*.yml` entries (regular
//!   files, or links to them), not its subdirectories, and not hidden names
//!   (`.x.yaml`: editors' lock and swap files, Kubernetes' `..data`).
//! - A file larger than the limit (`--max-default-job-file-bytes`, default
//!   [`MAX_FILE_BYTES`]), unreadable, or not UTF-8 is a problem of that
//!   file; so is one nested deeper than `parse.rs` allows, which is found
//!   before the YAML parser sees it.
//! - Two files giving the same `job_id` are both refused, each naming the
//!   other: which one should win is the operator's call, not file order.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::parse::parse;
use crate::handlers::HandlerRegistry;
use crate::job_spec::{FieldError, ValidationContext};
use crate::store::NewJob;

/// Larger files are refused by default: a job definition is a few lines.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// One problem of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The file as the directory was named (`default_jobs/backup.yaml`).
    pub file: PathBuf,
    /// The job field (`periodically`, `kwargs/url`), or `yaml` for a syntax
    /// error and `file` for a problem with the file as a whole.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.field,
            self.message
        )
    }
}

/// A file that passed every check.
#[derive(Debug, Clone)]
pub struct ValidFile {
    /// The job to store, validated as the API validates.
    pub job: NewJob,
    /// Whether the file gives `when` (without it, a stored job keeps its
    /// schedule's anchor; see `upsert.rs`).
    pub has_when: bool,
}

/// One file of the directory and what checking it found.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// The path as the directory was named, for people.
    pub path: PathBuf,
    /// The absolute path, stored as the job's `source`.
    pub source: String,
    /// A hash of the content: a scan re-applies a file only when it changed.
    pub hash: u64,
    pub result: Result<ValidFile, Vec<FieldError>>,
}

impl FileEntry {
    pub fn problems(&self) -> Vec<FileProblem> {
        match &self.result {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .iter()
                .map(|p| FileProblem {
                    file: self.path.clone(),
                    field: p.field.clone(),
                    message: p.message.clone(),
                })
                .collect(),
        }
    }
}

/// Every file of a directory, checked.
#[derive(Debug, Clone)]
pub struct DirScan {
    /// The directory's absolute path, ending in `/`: the prefix of every
    /// `source` of its files.
    pub prefix: String,
    /// Sorted by file name.
    pub files: Vec<FileEntry>,
}

impl DirScan {
    pub fn problems(&self) -> Vec<FileProblem> {
        self.files.iter().flat_map(FileEntry::problems).collect()
    }
}

/// Why a directory could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("no directory at {0}")]
    Missing(PathBuf),
    #[error("cannot read the directory {0}: {1}")]
    Unreadable(PathBuf, std::io::Error),
}

/// Reads and checks every default-job file in `dir`. `now` is the time
/// validation counts from (the database's, in the service); files larger
/// than `max_file_bytes` are refused.
pub fn scan_dir(
    dir: &Path,
    registry: &HandlerRegistry,
    now: DateTime<Utc>,
    max_file_bytes: u64,
) -> Result<DirScan, DirError> {
    let unreadable = |e: std::io::Error| {
        if e.kind() == ErrorKind::NotFound {
            DirError::Missing(dir.to_path_buf())
        } else {
            DirError::Unreadable(dir.to_path_buf(), e)
        }
    };
    let absolute = std::fs::canonicalize(dir).map_err(unreadable)?;
    if !absolute.is_dir() {
        return Err(DirError::Unreadable(
            dir.to_path_buf(),
            std::io::Error::other("not a directory"),
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&absolute).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // Follows links; a dangling link or a directory named x.yaml is skipped.
        if is_yaml && !name.starts_with('.') && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();

    let ctx = |source: &str| ValidationContext {
        registry,
        now,
        source: source.to_string(),
    };
    let mut files = Vec::with_capacity(names.len());
    let mut declared_ids: Vec<Option<String>> = Vec::with_capacity(names.len());
    for name in names {
        let source = absolute.join(&name).to_string_lossy().into_owned();
        let (hash, checked, job_id) = match read_text(&absolute.join(&name), max_file_bytes) {
            Ok(text) => {
                let (checked, job_id) = check(&text, &ctx(&source));
                (hash_of(&text), checked, job_id)
            }
            Err(problem) => (0, Err(vec![problem]), None),
        };
        declared_ids.push(job_id);
        files.push(FileEntry {
            path: dir.join(&name),
            source,
            hash,
            result: checked,
        });
    }

    // The same job_id in several files: refuse them all.
    let mut by_id: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, id) in declared_ids.iter().enumerate() {
        if let Some(id) = id {
            by_id.entry(id.as_str()).or_default().push(i);
        }
    }
    let mut clashes: BTreeMap<usize, FieldError> = BTreeMap::new();
    for (id, indexes) in by_id.into_iter().filter(|(_, v)| v.len() > 1) {
        for &i in &indexes {
            let others: Vec<String> = indexes
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| files[j].path.display().to_string())
                .collect();
            clashes.insert(
                i,
                FieldError::new(
                    "job_id",
                    format!(
                        "{id:?} is also defined in {}; a job_id may appear in one file only, so none of them is loaded",
                        others.join(", ")
                    ),
                ),
            );
        }
    }
    for (i, clash) in clashes {
        let entry = &mut files[i];
        match &mut entry.result {
            Ok(_) => entry.result = Err(vec![clash]),
            Err(problems) => problems.push(clash),
        }
    }
    Ok(DirScan {
        prefix: format!("{}/", absolute.to_string_lossy().trim_end_matches('/')),
        files,
    })
}

fn read_text(path: &Path, max: u64) -> Result<String, FieldError> {
    let too_big = |size: u64| {
        FieldError::new(
            "file",
            format!(
                "{size} bytes is too large for a job definition (at most {max}; \
                 --max-default-job-file-bytes)"
            ),
        )
    };
    let cannot = |e: std::io::Error| FieldError::new("file", format!("cannot read it: {e}"));
    let size = std::fs::metadata(path).map_err(cannot)?.len();
    if size > max {
        return Err(too_big(size));
    }
    // Read no more than one byte past the limit: the file may be growing.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(max.saturating_add(1)).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        FieldError::new(
            "file",
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Parses and validates one file's text; also returns the `job_id` it
/// declares (even when the file has other problems), for the duplicate check.
fn check(
    text: &str,
    ctx: &ValidationContext<'_>,
) -> (Result<ValidFile, Vec<FieldError>>, Option<String>) {
    let parsed = parse(text);
    let mut problems = parsed.problems;
    let Some(spec) = parsed.spec else {
        return (Err(problems), None);
    };
    let job_id = spec.job_id.clone();
    match spec.validate(ctx) {
        Ok(job) if problems.is_empty() => (
            Ok(ValidFile {
                job,
                has_when: spec.when.is_some(),
            }),
            job_id,
        ),
        Ok(_) => (Err(problems), job_id),
        Err(more) => {
            // A field refused while parsing is left out of the spec; do not
            // report it a second time as missing.
            let named: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
            problems.extend(more.into_iter().filter(|p| !named.contains(&p.field)));
            (Err(problems), job_id)
        }
    }
}

fn hash_of(text: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::BuiltinConfig;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let name = format!("jobsd-files-{}", uuid::Uuid::new_v4().simple());
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).expect("temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scan(dir: &Path) -> DirScan {
        let registry = HandlerRegistry::with_builtins(BuiltinConfig::default());
        scan_dir(dir, &registry, Utc::now(), MAX_FILE_BYTES).expect("a readable directory")
    }

    #[test]
    fn unreadable_files_are_problems_of_their_own() {
        let dir = TempDir::new();
        let big = format!(
            "job_id: big\nhandler: log\nmessage: \"{}\"\n",
            "x".repeat(MAX_FILE_BYTES as usize)
        );
        std::fs::write(dir.0.join("big.yaml"), big).expect("write");
        std::fs::write(dir.0.join("latin1.yaml"), b"job_id: caf\xe9\n").expect("write");
        std::fs::write(
            dir.0.join("ok.yaml"),
            "job_id: ok\nhandler: log\nmessage: x\n",
        )
        .expect("write");
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.0.join("nowhere.yaml"), dir.0.join("dangling.yaml"))
            .expect("symlink");
        let scan = scan(&dir.0);
        let names: Vec<String> = scan
            .files
            .iter()
            .map(|f| {
                f.path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["big.yaml", "latin1.yaml", "ok.yaml"]);
        let problems = scan.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("too large"), "{}", problems[0]);
        assert!(problems[1].message.contains("not UTF-8"), "{}", problems[1]);
        assert!(problems.iter().all(|p| p.field == "file"));
        assert!(scan.files[2].result.is_ok());
        assert!(scan.prefix.ends_with('/'));
        assert!(scan.files[2].source.starts_with(&scan.prefix));
    }

    #[test]
    fn a_sub_millisecond_duration_in_a_file_names_its_field() {
        let registry = HandlerRegistry::with_builtins(BuiltinConfig::default());
        let ctx = ValidationContext {
            registry: &registry,
            now: Utc::now(),
            source: "/tmp/x.yaml".into(),
        };
        for (text, field) in [
            (
                "job_id: a\nhandler: log\nmessage: x\nperiodically: 0.0004\n",
                "periodically",
            ),
            (
                "job_id: a\nhandler: log\nmessage: x\ntimeout: \"0.0001\"\n",
                "timeout",
            ),
        ] {
            let (result, job_id) = check(text, &ctx);
            let problems = result.err().unwrap_or_default();
            assert_eq!(job_id.as_deref(), Some("a"));
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, field);
            assert!(
                problems[0].message.contains("at least 1 millisecond"),
                "{}",
                problems[0]
            );
        }
    }

    #[test]
    fn a_missing_directory_is_its_own_error() {
        let dir = TempDir::new();
        let registry = HandlerRegistry::with_builtins(BuiltinConfig::default());
        let missing = dir.0.join("not-here");
        assert!(matches!(
            scan_dir(&missing, &registry, Utc::now(), MAX_FILE_BYTES),
            Err(DirError::Missing(_))
        ));
        let file = dir.0.join("a-file");
        std::fs::write(&file, "x").expect("write");
        assert!(matches!(
            scan_dir(&file, &registry, Utc::now(), MAX_FILE_BYTES),
            Err(DirError::Unreadable(..))
        ));
    }
}
