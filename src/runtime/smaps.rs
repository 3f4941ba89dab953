//! This process's memory mappings as /proc/self/smaps lists them: for tests that check what
//! is resident, or advised, where.

use std::ops::Range;

/// One mapping: its address range, its header line (which ends with the mapped file's path,
/// if any) and its `Key: value` lines.
pub(crate) struct Mapping {
    pub(crate) range: Range<usize>,
    pub(crate) header: String,
    fields: Vec<(String, String)>,
}

impl Mapping {
    /// The value of the line `key:` (`Rss`, `VmFlags`, ...), without its key.
    pub(crate) fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }
}

/// Every mapping of this process, in address order.
pub(crate) fn mappings() -> Vec<Mapping> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let address = |hex| usize::from_str_radix(hex, 16).unwrap();
            mappings.push(Mapping {
                range: address(start)..address(end),
                header: line.to_string(),
                fields: Vec::new(),
            });
        } else if let (Some(mapping), Some((key, value))) =
            (mappings.last_mut(), line.split_once(':'))
        {
            mapping
                .fields
                .push((key.to_string(), value.trim().to_string()));
        }
    }
    mappings
}
