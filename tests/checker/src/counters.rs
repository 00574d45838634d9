//! L2 helpers for the vfio-user scenarios' counter phases (gate.rs is the guest side):
//! - `checker poke-ram PID GPA VALUE`: writes VALUE (a u64) at guest-physical address GPA of
//!   the VM whose VMM is PID, through the VMM's `/memfd:ghvmm-ram` (its guest RAM with
//!   `--memory shared=on`; the file offset is the guest-physical address below 3 GiB).
//! - `checker counters-sum FILE PREFIX [ID]`: the sum of the counters whose key starts with
//!   PREFIX in the JSON object in FILE (ghvmm's `vm.counters`, keyed by device ID, or the
//!   server's flat `counters {...}` object when no ID is given). Prints the sum; exit 1 when
//!   the file holds no such object.
//! - `checker counters-delta BEFORE AFTER [ID]`: every counter (of device ID, or of the flat
//!   object) that differs between the two files, as `key +N` (or `key -N`) joined by `, `
//!   in key order, or `none`: what moved between two gates, every kind and BAR at once, so
//!   that a check can want exactly `none` or exactly one `barN.padding +1`. A counter in only
//!   one file counts as 0 in the other. Exit 1 when a file holds no such object.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

/// Guest RAM below this address is at the same offset in the memfd (vmm/src/memory).
const LOW_RAM_END: u64 = 3 << 30;
const MEMFD: &str = "/memfd:ghvmm-ram";

pub fn poke_ram(args: &[String]) -> i32 {
    let [pid, gpa, value] = args else {
        eprintln!("usage: checker poke-ram PID GPA VALUE");
        return 2;
    };
    let (Some(gpa), Ok(value)) = (parse_hex(gpa), value.parse::<u64>()) else {
        eprintln!("checker poke-ram: GPA is hex, VALUE a decimal u64");
        return 2;
    };
    match poke(pid, gpa, value) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("checker poke-ram: {e}");
            1
        }
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

fn poke(pid: &str, gpa: u64, value: u64) -> Result<(), String> {
    if !gpa.is_multiple_of(8) || gpa + 8 > LOW_RAM_END {
        return Err(format!("{gpa:#x} is not an aligned address below 3 GiB"));
    }
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let fd = entries
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_link(p).is_ok_and(|l| l.to_string_lossy().starts_with(MEMFD)))
        .ok_or_else(|| format!("process {pid} holds no {MEMFD} (not ghvmm with shared=on?)"))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fd)
        .map_err(|e| format!("{}: {e}", fd.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if gpa + 8 > size {
        return Err(format!("{gpa:#x} is past the guest RAM ({size:#x} bytes)"));
    }
    file.write_all_at(&value.to_le_bytes(), gpa)
        .map_err(|e| format!("writing at {gpa:#x}: {e}"))
}

pub fn counters_sum(args: &[String]) -> i32 {
    let (file, prefix, id) = match args {
        [f, p] => (f, p, None),
        [f, p, id] => (f, p, Some(id.as_str())),
        _ => {
            eprintln!("usage: checker counters-sum FILE PREFIX [ID]");
            return 2;
        }
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("checker counters-sum: {file}: {e}");
            return 1;
        }
    };
    match sum(&text, prefix, id) {
        Ok(n) => {
            println!("{n}");
            0
        }
        Err(e) => {
            eprintln!("checker counters-sum: {file}: {e}");
            1
        }
    }
}

pub fn counters_delta(args: &[String]) -> i32 {
    let (before, after, id) = match args {
        [b, a] => (b, a, None),
        [b, a, id] => (b, a, Some(id.as_str())),
        _ => {
            eprintln!("usage: checker counters-delta BEFORE AFTER [ID]");
            return 2;
        }
    };
    let read = |file: &String| {
        std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|t| counters(&t, id))
            .map_err(|e| format!("checker counters-delta: {file}: {e}"))
    };
    match read(before).and_then(|b| Ok((b, read(after)?))) {
        Ok((b, a)) => {
            println!("{}", delta(&b, &a));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// The counters that differ from `before` to `after` (`key +N`, `key -N`), or `none`.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let moved: Vec<String> = keys
        .into_iter()
        .filter_map(|k| {
            let (b, a) = (
                before.get(k).copied().unwrap_or(0),
                after.get(k).copied().unwrap_or(0),
            );
            match a.cmp(&b) {
                std::cmp::Ordering::Equal => None,
                std::cmp::Ordering::Greater => Some(format!("{k} +{}", a - b)),
                std::cmp::Ordering::Less => Some(format!("{k} -{}", b - a)),
            }
        })
        .collect();
    if moved.is_empty() {
        "none".into()
    } else {
        moved.join(", ")
    }
}

/// A JSON value as far as counters go: unsigned numbers, objects, and strings, booleans or
/// null (kept as `Other`, so that a field beside the counters does not break the sum).
/// Arrays and escapes are refused.
#[derive(Debug, PartialEq)]
enum Value {
    Number(u64),
    Object(Vec<(String, Value)>),
    Other,
}

/// The sum of the counters under `prefix` in the top-level object (or in its member `id`).
fn sum(text: &str, prefix: &str, id: Option<&str>) -> Result<u64, String> {
    let mut n = 0u64;
    for (key, v) in members(text, id)?
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
    {
        n += v.ok_or_else(|| format!("{key} is not a number"))?;
    }
    Ok(n)
}

/// Every member of the object as a counter; one that is not a number (a corrupt counter, or
/// an unknown field) is an error rather than a silent 0.
fn counters(text: &str, id: Option<&str>) -> Result<BTreeMap<String, u64>, String> {
    members(text, id)?
        .into_iter()
        .map(|(k, v)| match v {
            Some(n) => Ok((k, n)),
            None => Err(format!("{k} is not a number")),
        })
        .collect()
}

/// The members of the top-level object (or of its member `id`), each with its value when it
/// is a number.
fn members(text: &str, id: Option<&str>) -> Result<Vec<(String, Option<u64>)>, String> {
    let start = text.find('{').ok_or("no JSON object")?;
    let mut p = Parser {
        s: &text.as_bytes()[start..],
        at: 0,
    };
    let top = p.value()?;
    let object = match (top, id) {
        (Value::Object(members), Some(id)) => members
            .into_iter()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("no member {id:?}"))?,
        (v, _) => v,
    };
    let Value::Object(members) = object else {
        return Err("not an object".into());
    };
    Ok(members
        .into_iter()
        .map(|(k, v)| match v {
            Value::Number(n) => (k, Some(n)),
            _ => (k, None),
        })
        .collect())
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        self.skip_ws();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.at))
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_ws();
        match self.s.get(self.at) {
            Some(b'{') => self.object(),
            Some(b'"') => self.string().map(|_| Value::Other),
            Some(_)
                if [&b"true"[..], b"false", b"null"]
                    .iter()
                    .any(|w| self.s[self.at..].starts_with(w)) =>
            {
                while self.s.get(self.at).is_some_and(u8::is_ascii_alphabetic) {
                    self.at += 1;
                }
                Ok(Value::Other)
            }
            Some(c) if c.is_ascii_digit() => {
                let from = self.at;
                while self.s.get(self.at).is_some_and(u8::is_ascii_digit) {
                    self.at += 1;
                }
                std::str::from_utf8(&self.s[from..self.at])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .map(Value::Number)
                    .ok_or_else(|| format!("bad number at byte {from}"))
            }
            _ => Err(format!(
                "expected a number or an object at byte {}",
                self.at
            )),
        }
    }

    fn object(&mut self) -> Result<Value, String> {
        self.expect(b'{')?;
        let mut members = Vec::new();
        self.skip_ws();
        if self.s.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(Value::Object(members));
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            members.push((key, self.value()?));
            self.skip_ws();
            match self.s.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.at)),
            }
        }
    }

    /// A key; counter names need no escapes, so none are accepted.
    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let from = self.at;
        while let Some(&c) = self.s.get(self.at) {
            match c {
                b'"' => {
                    self.at += 1;
                    return Ok(String::from_utf8_lossy(&self.s[from..self.at - 1]).into_owned());
                }
                b'\\' => return Err(format!("escape in a key at byte {}", self.at)),
                _ => self.at += 1,
            }
        }
        Err("unterminated string".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_devices_counters() {
        let ghvmm = r#"{
  "gpu0": {"bar2.padding": 3, "bar2.forwarded": 4, "bar1.msix": 9},
  "nic0": {"bar2.forwarded": 100}
}"#;
        assert_eq!(sum(ghvmm, "bar2.", Some("gpu0")), Ok(7));
        assert_eq!(sum(ghvmm, "bar1.", Some("gpu0")), Ok(9));
        assert_eq!(sum(ghvmm, "bar2.", Some("nic0")), Ok(100));
        assert!(sum(ghvmm, "bar2.", Some("gpu1")).is_err());
        assert_eq!(sum(r#"{"gpu0": {}}"#, "bar2.", Some("gpu0")), Ok(0));
    }

    #[test]
    fn sums_the_servers_line() {
        let line = r#"counters {"bar2.padding":1,"bar2.forwarded":20,"bar0.forwarded":5}"#;
        assert_eq!(sum(line, "bar2.", None), Ok(21));
        assert_eq!(sum(line, "bar0.", None), Ok(5));
        assert_eq!(sum(line, "bar4.", None), Ok(0));
        assert!(sum("counters", "bar2.", None).is_err());
        assert!(sum(r#"counters {"bar2.x":1"#, "bar2.", None).is_err());
        assert!(sum(r#"{"bar2.x":"1"}"#, "bar2.", None).is_err());
        assert_eq!(
            sum(r#"{"id":"gpu0","up":true,"bar2.x":2}"#, "bar2.", None),
            Ok(2)
        );
        assert!(sum(r#"{"bar2.x":[1]}"#, "bar2.", None).is_err());
    }

    #[test]
    fn deltas_name_every_counter_that_moved() {
        let at = |text: &str| counters(text, Some("gpu0")).unwrap();
        let g1 = at(r#"{"gpu0": {"bar2.padding": 3, "bar0.forwarded": 4, "config": 9}}"#);
        assert_eq!(delta(&g1, &g1), "none");
        let g2 = at(r#"{"gpu0": {"bar2.padding": 4, "bar0.forwarded": 4, "config": 9}}"#);
        assert_eq!(delta(&g1, &g2), "bar2.padding +1");
        let g3 = at(
            r#"{"gpu0": {"bar2.padding": 4, "bar0.forwarded": 2, "config": 12, "bar4.msix": 1}}"#,
        );
        assert_eq!(
            delta(&g2, &g3),
            "bar0.forwarded -2, bar4.msix +1, config +3"
        );
        // A counter that vanished went down to 0.
        let g4 = at(r#"{"gpu0": {"bar2.padding": 4, "bar0.forwarded": 4}}"#);
        assert_eq!(delta(&g2, &g4), "config -9");
        let server = |t: &str| counters(t, None).unwrap();
        assert_eq!(
            delta(
                &server(r#"counters {"bar2.padding":0,"bar2.forwarded":7}"#),
                &server(r#"counters {"bar2.padding":1,"bar2.forwarded":7}"#)
            ),
            "bar2.padding +1"
        );
    }

    #[test]
    fn a_delta_refuses_what_is_not_a_counter() {
        assert!(counters(r#"{"gpu0": {"bar2.padding": "3"}}"#, Some("gpu0")).is_err());
        assert!(counters(r#"{"gpu0": {"bar2.padding": 3}}"#, Some("gpu1")).is_err());
        assert!(counters("error: connection refused", None).is_err());
        assert!(counters(r#"{"gpu0": {"x": {"y": 1}}}"#, Some("gpu0")).is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_hex("0x1f000"), Some(0x1f000));
        assert_eq!(parse_hex("1f000"), Some(0x1f000));
        assert!(poke("1", 0x1001, 1).is_err());
        assert!(poke("1", 3 << 30, 1).is_err());
    }
}
