//! `walsync watch --exec "CMD ARGS"` (or `exec` in the config): walsync
//! runs the application as its child, Litestream's `-exec` idiom for
//! containers where one process must own the lifetime of both.
//!
//! Order, and why:
//! 1. walsync starts replicating first, and starts the child only once
//!    every database is open: if walsync cannot start (bad config, a
//!    missing database), the child is never started, so an application
//!    never runs unreplicated.
//! 2. SIGINT and SIGTERM sent to walsync are forwarded to the child and do
//!    not stop walsync: the application decides when to end, and its last
//!    commits happen while walsync still replicates. A SIGINT the terminal
//!    sent (Ctrl-C reaches the whole foreground process group, the child
//!    too) is not forwarded a second time. A signal that arrives before
//!    the child runs stops walsync instead, and the child never starts
//!    (signals are blocked from its spawn until its ID is recorded, so none
//!    falls in between).
//! 3. When the child exits, walsync ships what is committed, stops, and
//!    exits with the child's code (128 + the signal's number when a signal
//!    ended it), so the container's exit status is the application's. If
//!    the child succeeded but walsync could not store everything by the
//!    shutdown timeout, walsync's own error and exit code win: a failed
//!    last upload is never hidden behind a 0.

use crate::error::{Error, Result};
use crate::event::EventSink;
use crate::watch::{self, Controls, WatchOptions};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Splits a command line as a shell would, without expanding anything:
/// words separated by blanks, 'single' and "double" quotes, and backslash
/// escapes (outside single quotes).
pub fn split(command: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars();
    let unclosed = || Error::Usage(format!("--exec: unclosed quote in '{command}'"));
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next().ok_or_else(unclosed)? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next().ok_or_else(unclosed)? {
                        '"' => break,
                        '\\' => w.push(chars.next().ok_or_else(unclosed)?),
                        c => w.push(c),
                    }
                }
            }
            '\\' => {
                let escaped = chars.next().unwrap_or('\\');
                word.get_or_insert_with(String::new).push(escaped);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err(Error::Usage("--exec: the command is empty".into()));
    }
    Ok(words)
}

/// The child's process ID while it runs (0: none), for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// A signal that came while no child ran (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// Forwards the signal to the child, or records it while there is none.
/// Only atomics and kill(2), errno kept: async-signal-safe.
extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo_t to an SA_SIGINFO handler.
    let from_terminal = !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL;
    let pid = CHILD.load(Ordering::SeqCst);
    if pid <= 0 {
        PENDING.store(signal, Ordering::SeqCst);
        return;
    }
    if from_terminal {
        return; // the child is in our process group: it has it already
    }
    // SAFETY: errno is thread-local; kill(2) is async-signal-safe and
    // `pid` is our child's, not yet reaped.
    unsafe {
        let errno = *libc::__errno_location();
        libc::kill(pid, signal);
        *libc::__errno_location() = errno;
    }
}

/// Installs [`forward`] for SIGINT and SIGTERM.
fn install_forwarding() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with our handler, SA_SIGINFO and an
        // empty mask; the handler is async-signal-safe.
        let ok = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut()) == 0
        };
        if !ok {
            return Err(Error::Other(format!(
                "cannot install the signal handler: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Blocks (`true`) or unblocks SIGINT and SIGTERM in this thread.
fn block_signals(block: bool) {
    // SAFETY: a local signal set, and pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let how = if block {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Starts the child with SIGINT and SIGTERM blocked in walsync until its ID
/// is recorded, so none falls between spawn and record; the child unblocks
/// them before exec (it inherits the mask otherwise: seen here, a child
/// that never got the SIGTERM walsync forwarded) and gets back the
/// open-files limit walsync found at start (walsync raised its own).
fn spawn(program: &str, args: &[String]) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let limit = super::original_open_files_limit();
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: between fork and exec only async-signal-safe calls:
    // pthread_sigmask and setrlimit on values copied in.
    unsafe {
        command.pre_exec(move || {
            block_signals(false);
            if let Some(limit) = limit {
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            Ok(())
        });
    }
    block_signals(true);
    let spawned = command.spawn();
    if let Ok(child) = &spawned {
        CHILD.store(child.id() as i32, Ordering::SeqCst);
    }
    block_signals(false);
    spawned
}

/// Runs `watch` with `command` as its child; returns the exit code.
pub fn run(
    command: &[String],
    storage: Arc<dyn crate::storage::Storage>,
    selection: crate::selection::Selection,
    options: WatchOptions,
    controls: Controls,
    events: Arc<dyn EventSink>,
) -> Result<i32> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Error::Usage("--exec: the command is empty".into()))?;
    install_forwarding()?;
    let watching = controls.clone();
    let watcher =
        std::thread::spawn(move || watch::watch(storage, selection, &options, &watching, events));
    // Until every database is open; a watch that ended did not start, and
    // a signal meanwhile (or before the spawn) stops walsync before the
    // child ever runs.
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let started = controls.started.take();
        let signal = PENDING.load(Ordering::SeqCst);
        if signal != 0 {
            eprintln!("walsync: stopping before the --exec command started (signal {signal})");
            controls.stop.cancel();
            return match watcher.join() {
                Ok(Err(e)) => Err(e),
                _ => Ok(128 + signal),
            };
        }
        if started {
            break;
        }
        if watcher.is_finished() {
            return match watcher.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::Other("watch stopped as it started".into())),
            };
        }
    }
    let code = match spawn(program, args) {
        Ok(mut child) => {
            let status = child.wait();
            CHILD.store(0, Ordering::SeqCst);
            let code = status.map(exit_code).map_err(|e| {
                Error::Other(format!("waiting for the --exec command '{program}': {e}"))
            });
            eprintln!(
                "walsync: the --exec command exited ({}); shipping what is committed",
                match &code {
                    Ok(c) => format!("code {c}"),
                    Err(e) => e.to_string(),
                }
            );
            code
        }
        Err(e) => Err(Error::Usage(format!(
            "cannot start the --exec command '{program}': {e}"
        ))),
    };
    controls.stop.cancel();
    let shipped = watcher
        .join()
        .unwrap_or_else(|_| Err(Error::Other("the watch thread panicked".into())));
    match (code, shipped) {
        (Err(e), _) => Err(e),
        (Ok(0), Err(e)) => Err(e),
        (Ok(code), Err(e)) => {
            eprintln!("walsync: {e}");
            Ok(code)
        }
        (Ok(code), Ok(())) => Ok(code),
    }
}

/// The exit code a shell would report for the child's status.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_as_a_shell_would_without_expanding() {
        let words = split(r#"python3 -c 'print("a b")' "x \"y\"" a\ b $HOME"#).unwrap();
        assert_eq!(
            words,
            [
                "python3",
                "-c",
                r#"print("a b")"#,
                r#"x "y""#,
                "a b",
                "$HOME"
            ]
        );
        assert!(split("  ").is_err());
        assert!(split("echo 'unclosed").is_err());
    }
}
