//! The `command` handler: runs one program, without a shell.
//!
//! Guarantees:
//! - refuses to run (fatal error, and `disabled_reason`) unless enabled in the
//!   configuration;
//! - with `--command-allow`, runs only the listed programs (compared by
//!   canonical path after a PATH lookup, `crate::guard::program`): another
//!   program is refused when the job is created and, should the list have
//!   changed since, as a fatal error when it runs; the run executes the
//!   path that was checked, found through jobsd's PATH, not the job's;
//! - `program` is executed directly with `args`; nothing is interpreted by a
//!   shell. `env` is added to the inherited environment, `cwd` sets the working
//!   directory; stdin is `/dev/null`; `env` values are secrets, shown as
//!   `"***"` everywhere but in the program's environment
//!   ([`crate::redact`]);
//! - stdout and stderr are read concurrently until the program closes them;
//!   each is kept up to `max_output_bytes` and the rest is read and discarded,
//!   so the program never blocks on a full pipe (`stdout_truncated` /
//!   `stderr_truncated` say so);
//! - on cancellation, or when the run's future is dropped, the program is
//!   killed (SIGKILL; only the direct child, not processes it spawned);
//! - the result is `{"exit_code", "stdout", "stderr", "stdout_truncated",
//!   "stderr_truncated"}`; a non-zero exit or death by a signal is a retryable
//!   error holding the exit code (or signal) and the tail of stderr; a program
//!   that cannot be started is a fatal error naming it.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{bounded_text, cancelled, fatal, parse_kwargs, retryable, tail};
use crate::guard::ProgramAllowList;
use crate::handlers::{Handler, HandlerResult, RunContext};
use crate::redact::SecretField;

const NAME: &str = "command";
const DISABLED: &str = "the command handler is disabled; start jobsd with --enable-command-handler (JOBSD_ENABLE_COMMAND_HANDLER=true) to allow it";
/// How much of the end of stderr goes into a failure's message.
const ERROR_TAIL_BYTES: usize = 2048;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandKwargs {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
}

/// Runs a program per run, when enabled.
pub struct CommandHandler {
    enabled: bool,
    /// When set, the only programs it runs.
    allow: Option<Arc<ProgramAllowList>>,
    max_output_bytes: usize,
}

impl CommandHandler {
    pub fn new(
        enabled: bool,
        allow: Option<Arc<ProgramAllowList>>,
        max_output_bytes: usize,
    ) -> Self {
        CommandHandler {
            enabled,
            allow,
            max_output_bytes,
        }
    }

    /// What to execute for `program`: the path the allow list checked, or
    /// the program as given when there is no list.
    fn executable(&self, program: &str, cwd: Option<&str>) -> Result<String, String> {
        match &self.allow {
            None => Ok(program.to_string()),
            Some(list) => list
                .check(program, cwd)
                .map(|path| path.to_string_lossy().into_owned()),
        }
    }
}

/// One output stream: its first bytes, up to a bound, and its last bytes.
#[derive(Default)]
struct Captured {
    /// At most one byte more than the bound, so `bounded_text` can tell both
    /// that and where to cut.
    head: Vec<u8>,
    /// The last `ERROR_TAIL_BYTES` or so of the whole stream.
    tail: Vec<u8>,
}

/// Reads `reader` to its end, keeping at most `max + 1` bytes of its start.
async fn capture(reader: Option<impl AsyncRead + Unpin>, max: usize) -> std::io::Result<Captured> {
    let mut captured = Captured::default();
    let Some(mut reader) = reader else {
        return Ok(captured);
    };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            return Ok(captured);
        }
        let chunk = &buffer[..n];
        let room = max.saturating_add(1) - captured.head.len();
        captured.head.extend_from_slice(&chunk[..room.min(n)]);
        captured.tail.extend_from_slice(chunk);
        if captured.tail.len() > 2 * ERROR_TAIL_BYTES {
            let excess = captured.tail.len() - ERROR_TAIL_BYTES;
            captured.tail.drain(..excess);
        }
    }
}

/// "exited with code 3", "was killed by signal 9".
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    format!("ended with {status}")
}

#[async_trait]
impl Handler for CommandHandler {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "Runs a program (no shell) and stores its exit code and bounded stdout/stderr; disabled unless enabled"
    }

    fn disabled_reason(&self) -> Option<String> {
        (!self.enabled).then(|| DISABLED.to_string())
    }

    fn check_kwargs(&self, kwargs: &Value) -> Vec<(String, String)> {
        let (Some(_), Some(program)) = (&self.allow, kwargs["program"].as_str()) else {
            return Vec::new();
        };
        match self.executable(program, kwargs["cwd"].as_str()) {
            Ok(_) => Vec::new(),
            Err(why) => vec![("/program".to_string(), why)],
        }
    }

    fn secret_fields(&self) -> Vec<SecretField> {
        vec![SecretField::every_value("env")]
    }

    fn kwargs_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "program": {
                    "type": "string",
                    "minLength": 1,
                    "description": "The program to run: a path, or a name looked up in PATH. No shell is involved.",
                },
                "args": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Arguments, passed as they are.",
                },
                "env": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "writeOnly": true},
                    "writeOnly": true,
                    "description": "Environment variables added to the inherited environment. Every value is secret: stored, passed to the program, and shown everywhere else as \"***\" (a PATCH sending \"***\" keeps the stored value).",
                },
                "cwd": {
                    "type": "string",
                    "minLength": 1,
                    "description": "Working directory (default: jobsd's own).",
                },
            },
            "required": ["program"],
            "additionalProperties": false,
        })
    }

    fn example(&self) -> Value {
        json!({
            "program": "/usr/local/bin/backup",
            "args": ["--database", "main", "--compress"],
            "env": {"BACKUP_TARGET": "s3://backups/main"},
            "cwd": "/var/lib/backup",
        })
    }

    async fn execute(&self, ctx: RunContext, kwargs: Value) -> HandlerResult {
        if !self.enabled {
            return Err(fatal(DISABLED));
        }
        let kwargs: CommandKwargs = parse_kwargs(NAME, kwargs)?;
        let program = &kwargs.program;
        if program.is_empty() {
            return Err(fatal("program must not be empty"));
        }
        let executable = self
            .executable(program, kwargs.cwd.as_deref())
            .map_err(fatal)?;
        let mut command = tokio::process::Command::new(&executable);
        command
            .args(&kwargs.args)
            .envs(&kwargs.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cwd) = &kwargs.cwd {
            // Checked first: spawning in a missing directory reports "not found"
            // as if the program were missing. (One stat: not worth a blocking task.)
            if !std::path::Path::new(cwd).is_dir() {
                return Err(fatal(format!("cwd {cwd:?} is not an existing directory")));
            }
            command.current_dir(cwd);
        }

        let mut child = command.spawn().map_err(|e| {
            let message = format!("cannot start program {program:?}: {e}");
            match e.kind() {
                ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::InvalidInput => {
                    fatal(message)
                }
                // Out of processes, memory or file descriptors may pass.
                _ => retryable(message),
            }
        })?;
        tracing::debug!(run_id = %ctx.run_id, job_id = %ctx.job_id, program = %program, pid = ?child.id(), "command started");

        let max = self.max_output_bytes;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let outcome = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => None,
            outcome = async { tokio::join!(capture(stdout, max), capture(stderr, max), child.wait()) } => Some(outcome),
        };
        let Some((stdout, stderr, status)) = outcome else {
            // kill() also reaps the child; if it already exited there is nothing to do.
            if let Err(e) = child.kill().await {
                tracing::warn!(run_id = %ctx.run_id, program = %program, "cannot kill cancelled command: {e}");
            }
            return Err(cancelled(format!(
                "program {program:?} cancelled and killed"
            )));
        };
        let status =
            status.map_err(|e| retryable(format!("waiting for program {program:?}: {e}")))?;
        let stdout =
            stdout.map_err(|e| retryable(format!("reading stdout of {program:?}: {e}")))?;
        let stderr =
            stderr.map_err(|e| retryable(format!("reading stderr of {program:?}: {e}")))?;

        if !status.success() {
            // The kept tail may start inside a multi-byte character.
            let skip = stderr
                .tail
                .iter()
                .take(3)
                .take_while(|b| **b & 0xC0 == 0x80)
                .count();
            let (end, _) = bounded_text(&stderr.tail[skip..], usize::MAX);
            let end = tail(end.trim_end(), ERROR_TAIL_BYTES);
            let stderr_part = if end.is_empty() {
                "no stderr".to_string()
            } else {
                format!("stderr: {end}")
            };
            return Err(retryable(format!(
                "program {program:?} {}; {stderr_part}",
                describe(status)
            )));
        }
        let (stdout_text, stdout_cut) = bounded_text(&stdout.head, max);
        let (stderr_text, stderr_cut) = bounded_text(&stderr.head, max);
        Ok(json!({
            "exit_code": status.code(),
            "stdout": stdout_text,
            "stderr": stderr_text,
            "stdout_truncated": stdout_cut,
            "stderr_truncated": stderr_cut,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::tests::{assert_rejected, ctx};
    use super::*;
    use crate::handlers::HandlerError;

    fn handler() -> CommandHandler {
        CommandHandler::new(true, None, 64 * 1024)
    }

    async fn run(kwargs: Value) -> HandlerResult {
        handler().execute(ctx(), kwargs).await
    }

    fn message(error: &HandlerError) -> String {
        format!("{:#}", error.error)
    }

    #[tokio::test]
    async fn echo_captures_stdout() {
        let result = run(json!({"program": "echo", "args": ["hello", "world"]}))
            .await
            .unwrap();
        assert_eq!(
            result,
            json!({
                "exit_code": 0,
                "stdout": "hello world\n",
                "stderr": "",
                "stdout_truncated": false,
                "stderr_truncated": false,
            })
        );
    }

    #[tokio::test]
    async fn arguments_are_not_interpreted_by_a_shell() {
        let result = run(json!({"program": "echo", "args": ["$HOME", "a;b", "*"]}))
            .await
            .unwrap();
        assert_eq!(result["stdout"], "$HOME a;b *\n");
    }

    #[tokio::test]
    async fn stderr_is_captured() {
        let kwargs = json!({"program": "sh", "args": ["-c", "echo out; echo err >&2"]});
        let result = run(kwargs).await.unwrap();
        assert_eq!(result["stdout"], "out\n");
        assert_eq!(result["stderr"], "err\n");
    }

    #[tokio::test]
    async fn non_zero_exit_is_retryable_with_code_and_stderr_tail() {
        let error = run(json!({"program": "sh", "args": ["-c", "exit 3"]}))
            .await
            .unwrap_err();
        assert!(error.retryable);
        assert!(
            message(&error).contains("exited with code 3"),
            "{}",
            message(&error)
        );
        let script = "head -c 10000 /dev/zero | tr '\\0' x >&2; echo final words >&2; exit 7";
        let error = run(json!({"program": "sh", "args": ["-c", script]}))
            .await
            .unwrap_err();
        let text = message(&error);
        assert!(error.retryable);
        assert!(
            text.contains("exited with code 7") && text.contains("final words"),
            "{text}"
        );
        assert!(text.len() < ERROR_TAIL_BYTES + 200, "{}", text.len());
    }

    #[tokio::test]
    async fn death_by_signal_is_an_error() {
        let error = run(json!({"program": "sh", "args": ["-c", "kill -9 $$"]}))
            .await
            .unwrap_err();
        assert!(error.retryable);
        assert!(message(&error).contains("signal 9"), "{}", message(&error));
    }

    #[tokio::test]
    async fn env_and_cwd_are_honoured() {
        let dir = std::env::temp_dir();
        let kwargs = json!({
            "program": "sh",
            "args": ["-c", "echo \"$JOBSD_TEST_VAR\"; pwd; test -n \"$PATH\" && echo inherited"],
            "env": {"JOBSD_TEST_VAR": "from kwargs"},
            "cwd": dir.to_str().unwrap(),
        });
        let result = run(kwargs).await.unwrap();
        let expected_dir = dir.canonicalize().unwrap();
        let stdout = result["stdout"].as_str().unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[0], "from kwargs");
        assert_eq!(
            std::path::Path::new(lines[1]).canonicalize().unwrap(),
            expected_dir
        );
        assert_eq!(lines[2], "inherited");
    }

    #[tokio::test]
    async fn missing_cwd_is_fatal() {
        let kwargs = json!({"program": "echo", "cwd": "/nonexistent/jobsd-test-dir"});
        let error = run(kwargs).await.unwrap_err();
        assert!(!error.retryable);
        assert!(message(&error).contains("/nonexistent/jobsd-test-dir"));
    }

    #[tokio::test]
    async fn missing_program_is_fatal_and_named() {
        let error = run(json!({"program": "jobsd-no-such-program"}))
            .await
            .unwrap_err();
        assert!(!error.retryable);
        assert!(
            message(&error).contains("jobsd-no-such-program"),
            "{}",
            message(&error)
        );
    }

    #[tokio::test]
    async fn big_output_is_truncated_without_hanging() {
        let handler = CommandHandler::new(true, None, 1000);
        let kwargs = json!({
            "program": "sh",
            "args": ["-c", "head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2"],
        });
        let result = tokio::time::timeout(Duration::from_secs(30), handler.execute(ctx(), kwargs))
            .await
            .expect("the command must not hang")
            .unwrap();
        assert_eq!(result["stdout"].as_str().unwrap().len(), 1000);
        assert_eq!(result["stderr"].as_str().unwrap().len(), 1000);
        assert_eq!(result["stdout_truncated"], true);
        assert_eq!(result["stderr_truncated"], true);
        let kwargs = json!({"program": "head", "args": ["-c", "1000", "/dev/zero"]});
        let result = handler.execute(ctx(), kwargs).await.unwrap();
        assert_eq!(result["stdout_truncated"], false);
        // Cut at a char boundary: 7 bytes of 4-byte characters keep one.
        let kwargs = json!({"program": "printf", "args": ["%s", "😀😀😀"]});
        let result = CommandHandler::new(true, None, 7)
            .execute(ctx(), kwargs)
            .await
            .unwrap();
        assert_eq!(result["stdout"], "😀");
        assert_eq!(result["stdout_truncated"], true);
    }

    #[tokio::test]
    async fn cancellation_kills_the_program_promptly() {
        let ctx = ctx();
        let cancel = ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let error = handler()
            .execute(ctx, json!({"program": "sleep", "args": ["30"]}))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(message(&error).contains("cancelled"), "{}", message(&error));
    }

    #[tokio::test]
    async fn disabled_handler_refuses_with_the_reason() {
        let handler = CommandHandler::new(false, None, 1024);
        assert_eq!(handler.disabled_reason().as_deref(), Some(DISABLED));
        assert!(DISABLED.contains("--enable-command-handler"));
        let error = handler
            .execute(ctx(), json!({"program": "echo"}))
            .await
            .unwrap_err();
        assert!(!error.retryable);
        assert_eq!(error.error.to_string(), DISABLED);
        assert!(CommandHandler::new(true, None, 1)
            .disabled_reason()
            .is_none());
    }

    #[tokio::test]
    async fn bad_kwargs_are_fatal() {
        for kwargs in [
            json!({}),
            json!({"program": 1}),
            json!({"program": "echo", "shell": true}),
        ] {
            let error = run(kwargs.clone()).await.unwrap_err();
            assert!(!error.retryable, "{kwargs}");
            assert!(
                message(&error).contains("invalid kwargs"),
                "{}",
                message(&error)
            );
        }
    }

    #[test]
    fn schema_rejects_bad_kwargs_naming_the_field() {
        assert_rejected(NAME, json!({}), "program");
        assert_rejected(NAME, json!({"program": ""}), "/program");
        assert_rejected(NAME, json!({"program": "ls", "args": "-l"}), "/args");
        assert_rejected(NAME, json!({"program": "ls", "args": [1]}), "/args/0");
        assert_rejected(NAME, json!({"program": "ls", "env": {"A": 1}}), "/env/A");
        assert_rejected(NAME, json!({"program": "ls", "timeout": 5}), "timeout");
    }

    fn allowing(programs: &[&str]) -> CommandHandler {
        let listed: Vec<String> = programs.iter().map(|p| p.to_string()).collect();
        let list = ProgramAllowList::resolve(&listed).unwrap().map(Arc::new);
        CommandHandler::new(true, list, 1024)
    }

    #[tokio::test]
    async fn an_allow_list_runs_only_its_programs() {
        let handler = allowing(&["echo"]);
        let result = handler
            .execute(ctx(), json!({"program": "echo", "args": ["hi"]}))
            .await
            .unwrap();
        assert_eq!(result["stdout"], "hi\n");
        let error = handler
            .execute(ctx(), json!({"program": "sh", "args": ["-c", "echo no"]}))
            .await
            .unwrap_err();
        assert!(!error.retryable);
        assert!(
            message(&error).contains("is not in --command-allow (echo = /"),
            "{}",
            message(&error)
        );
        assert!(handler.check_kwargs(&json!({"program": "echo"})).is_empty());
        let problems = handler.check_kwargs(&json!({"program": "sh"}));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "/program");
        assert!(
            handler.check_kwargs(&json!({"program": "jobsd-no-such"}))[0]
                .1
                .contains("not found in jobsd's PATH")
        );
    }

    #[tokio::test]
    async fn the_jobs_own_path_cannot_swap_an_allowed_program() {
        // A directory whose `echo` would print something else.
        let dir =
            std::env::temp_dir().join(format!("jobsd-path-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("echo");
        std::fs::write(&fake, "#!/bin/sh\nprintf swapped\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let kwargs = json!({
            "program": "echo",
            "args": ["real"],
            "env": {"PATH": dir.to_str().unwrap()},
        });
        let result = allowing(&["echo"]).execute(ctx(), kwargs).await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(result["stdout"], "real\n");
    }

    #[test]
    fn example_fits_the_kwargs_struct() {
        let kwargs: CommandKwargs = serde_json::from_value(handler().example()).unwrap();
        assert_eq!(kwargs.args.len(), 3);
    }
}
