//! The process tree as /proc shows it: who descends from whom.
//!
//! A process that calls `setsid` leaves its process group, so killing a
//! group cannot reach it; following parent links can, as long as we are a
//! child subreaper (orphans are then re-parented to us instead of to init).
//! Used by slugbuilder to sweep what a buildpack step left running and by
//! slugrunner's supervisor to stop every descendant of the app.

use std::collections::HashMap;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The parent of every process visible in /proc (pid -> ppid).
fn parents() -> HashMap<i32, i32> {
    let mut map = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = read_ppid(pid) {
            map.insert(pid, ppid);
        }
    }
    map
}

/// The parent pid from `/proc/PID/stat` (the field after the state, which
/// follows the command name in parentheses; the name may contain anything).
fn read_ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// Every process that descends from `root` (not `root` itself), parents
/// before their children.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let parents = parents();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, &ppid) in &parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut queue = vec![root.as_raw()];
    while let Some(p) = queue.pop() {
        if let Some(kids) = children.get(&p) {
            for &k in kids {
                if !out.contains(&Pid::from_raw(k)) && k != root.as_raw() {
                    out.push(Pid::from_raw(k));
                    queue.push(k);
                }
            }
        }
    }
    out
}

/// The direct children of `pid`.
pub fn children(pid: Pid) -> Vec<Pid> {
    parents()
        .into_iter()
        .filter(|&(_, ppid)| ppid == pid.as_raw())
        .map(|(p, _)| Pid::from_raw(p))
        .collect()
}

/// Send `signal` to every descendant of `root`. Returns how many there were.
pub fn signal_descendants(root: Pid, signal: Signal) -> usize {
    let all = descendants(root);
    for &pid in &all {
        let _ = kill(pid, signal);
    }
    all.len()
}

/// Kill every child of this process with SIGKILL and reap it, until none is
/// left (the children of killed children come back to us as orphans when we
/// are a child subreaper). `keep` names children that must be left alone.
/// Returns how many processes were killed.
pub fn sweep_own_children(keep: &[Pid]) -> usize {
    let me = nix::unistd::getpid();
    let mut killed = 0;
    // Each round kills what is visible; orphans re-parented meanwhile are
    // found by the next. A bound keeps a fork bomb from holding us forever
    // (the caller's process-group and uid sweeps catch the rest).
    for _ in 0..1000 {
        let kids: Vec<Pid> = descendants(me)
            .into_iter()
            .filter(|p| !keep.contains(p))
            .collect();
        if kids.is_empty() {
            break;
        }
        for &pid in &kids {
            let _ = kill(pid, Signal::SIGKILL);
        }
        killed += kids.len();
        for &pid in &kids {
            reap(pid);
        }
    }
    killed
}

/// Wait for `pid` if it is our child (a grandchild is reaped by its parent,
/// or comes to us later).
fn reap(pid: Pid) {
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Err(Errno::EINTR) => continue,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(std::time::Duration::from_millis(1)),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn finds_grandchildren_that_left_the_process_group() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "setsid sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let found = wait_for(|| !descendants(pid).is_empty());
        let grandchildren = descendants(pid);
        let _ = kill(pid, Signal::SIGKILL);
        for p in &grandchildren {
            let _ = kill(*p, Signal::SIGKILL);
        }
        let _ = child.wait();
        assert!(found, "no descendant of {pid} found");
        assert_eq!(read_ppid(grandchildren[0].as_raw()).map(|_| ()), Some(()));
    }

    /// The command name in /proc/PID/stat is in parentheses and may hold
    /// parentheses and spaces itself.
    #[test]
    fn parses_names_with_parentheses_and_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a) 1 2 (b");
        std::fs::copy("/bin/sleep", &odd).unwrap();
        let mut child = std::process::Command::new(&odd).arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        let ok = wait_for(|| read_ppid(pid) == Some(me));
        let _ = child.kill();
        let _ = child.wait();
        assert!(ok, "ppid of {pid} not read as {me}");
    }
}
