//! CPU time of the bench process, for figures such as CPU per event, in total and by
//! thread name (tokio workers, librdkafka's threads, a producer's polling thread...).

use std::collections::BTreeMap;

/// User plus system CPU seconds of this process, from /proc/self/stat.
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| stat_seconds(&stat))
        .unwrap_or(0.0)
}

/// CPU seconds of this process's live threads, summed by thread name.
#[allow(dead_code)]
pub fn cpu_seconds_by_thread() -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if let Some(seconds) = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|stat| stat_seconds(&stat))
        {
            *by_name.entry(name.trim().to_string()).or_insert(0.0) += seconds;
        }
    }
    by_name
}

/// utime plus stime of a /proc stat line, in seconds.
fn stat_seconds(stat: &str) -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // Fields after the command name (which may hold spaces); utime and stime are the 14th
    // and 15th fields, the 12th and 13th after it.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}
