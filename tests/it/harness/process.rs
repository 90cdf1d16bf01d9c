//! A child process for a test: output captured to files, readiness read from its output, killed on drop,
//! logs printed when the test fails.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct ChildProcess {
    name: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: Arc<(Mutex<u64>, std::sync::Condvar)>,
    log_path: Option<PathBuf>,
}

impl ChildProcess {
    /// Start `cmd` with stdout and stderr captured (interleaved, line by line).
    pub fn spawn(name: &str, mut cmd: Command) -> ChildProcess {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let new_line = Arc::new((Mutex::new(0u64), std::sync::Condvar::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        ] {
            let (log, lines, new_line) = (log.clone(), lines.clone(), new_line.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    lines.lock().unwrap().push(line);
                    let (m, c) = &*new_line;
                    *m.lock().unwrap() += 1;
                    c.notify_all();
                }
            });
        }
        ChildProcess {
            name: name.to_string(),
            child: Some(child),
            log,
            lines,
            new_line,
            log_path: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until a printed line satisfies `pred` and return it; panics (with the log) after `timeout` or when
    /// the process exits first.
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some(l) = lines[seen..].iter().find(|l| pred(l)) {
                    return l.clone();
                }
                seen = lines.len();
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Give the reader threads a moment to drain what is left.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(l) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                    return l.clone();
                }
                panic!(
                    "{} exited ({status}) before it was ready; its output:\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} was not ready within {timeout:?}; its output:\n{}",
                    self.name,
                    self.output()
                );
            }
            let (m, c) = &*self.new_line;
            let g = m.lock().unwrap();
            let _ = c.wait_timeout(g, Duration::from_millis(50)).unwrap();
        }
    }

    /// Wait for the process to exit by itself and return its exit code (None when killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("process already reaped");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?}; its output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Send a signal (by number) to the process.
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Also keep the log in this file when the process ends (useful for scanning logs after the fact).
    pub fn keep_log_at(&mut self, p: &Path) {
        self.log_path = Some(p.to_path_buf());
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
        let log = self.output();
        if let Some(p) = &self.log_path {
            let _ = std::fs::write(p, &log);
        }
        if std::thread::panicking() {
            eprintln!(
                "----- output of {} -----\n{}----- end of {} -----",
                self.name, log, self.name
            );
        }
    }
}
