//! Target `cli`: every option parser of vmm/src/config.rs, the `ghvmm` command line
//! (vmm/src/cli.rs, clap plus `into_config`, which resolves the NUMA topology) and the
//! `ghvmm-remote` command line, from arbitrary strings.
//!
//! The input is text: its first line names what to parse (`cpus`, `memory`, `numa`, ...,
//! `argv` for a ghvmm command line, `remote` for a ghvmm-remote one, one argument per line);
//! an unknown first line makes the whole input a ghvmm command line. Seeds stay readable.
//!
//! Checked: no panic; every error prints as one line (`--option: ...` for option errors); every
//! accepted value keeps the documented limits and comes back equal when written out in the
//! canonical syntax and parsed again; an accepted command line has a consistent topology
//! (ids 0..n-1, an n x n SLIT with 10 on the diagonal and 11-255 elsewhere, each vCPU in
//! exactly one node, GH slots on segments 1..); a device ghvmm-remote accepts is accepted by
//! the API server with the same path, id and slot.

use std::cell::RefCell;

use clap::{CommandFactory, FromArgMatches};
use vmm::config::cli::CliParser;
use vmm::config::numa::{Initiator, Topology};
use vmm::config::{
    parse_console, parse_cpu_list, parse_distances, parse_id, parse_size, ApiSocketConfig,
    ConfigError, CpusConfig, DeviceConfig, GhConfig, GhSlotRequest, MemoryConfig, NumaConfig,
    PlatformConfig, SerialConfig, MAX_NUMA_NODES, MAX_VCPUS,
};

/// The error as the binaries print it (`vmm::config::cli::error_line`): one line, no control
/// characters, whatever the option value that the message quotes carried.
fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = vmm::config::cli::error_line(&e.to_string());
    assert!(
        !s.chars().any(char::is_control),
        "error line with control characters: {s:?}"
    );
    assert!(!s.is_empty(), "empty error");
    s
}

/// Option errors name their option.
fn option_error<T>(option: &str, r: Result<T, ConfigError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let s = one_line(&e);
            assert!(s.starts_with(&format!("--{option}")), "{s}");
            None
        }
    }
}

fn value_error<T>(r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            one_line(&e);
            None
        }
    }
}

fn cpu_list(cpus: &[u8]) -> String {
    let items: Vec<String> = cpus.iter().map(u8::to_string).collect();
    format!("[{}]", items.join(","))
}

fn distances_str(d: &[(u32, u8)]) -> String {
    let items: Vec<String> = d.iter().map(|(n, v)| format!("{n}@{v}")).collect();
    format!("[{}]", items.join(","))
}

fn gh_slot_str(s: GhSlotRequest) -> String {
    match s {
        GhSlotRequest::Auto => "auto".into(),
        GhSlotRequest::Index(n) => n.to_string(),
    }
}

fn numa_str(n: &NumaConfig) -> String {
    let mut s = format!("guest_numa_id={}", n.guest_numa_id);
    if let Some(c) = &n.cpus {
        s += &format!(",cpus={}", cpu_list(c));
    }
    if !n.distances.is_empty() {
        s += &format!(",distances={}", distances_str(&n.distances));
    }
    if let Some(d) = &n.device_id {
        s += &format!(",device_id={d}");
    }
    if !n.memory_zones.is_empty() {
        s += &format!(",memory_zones=[{}]", n.memory_zones.join(","));
    }
    s
}

fn device_str(d: &DeviceConfig) -> String {
    let mut s = format!("{}={}", d.source.key(), d.source.path().display());
    if let Some(id) = &d.id {
        s += &format!(",id={id}");
    }
    if let Some(g) = d.gh_slot {
        s += &format!(",gh_slot={}", gh_slot_str(g));
    }
    s
}

fn gh_str(g: &GhConfig) -> String {
    format!(
        "slots={},nodes={},distance={},dsd={},bar_space={}",
        g.slots,
        g.nodes,
        g.distance,
        if g.dsd { "on" } else { "off" },
        g.bar_space
    )
}

fn check_cpus(c: &[u8]) {
    assert!(!c.is_empty());
    assert!(
        c.windows(2).all(|w| w[0] < w[1]),
        "cpu list not sorted/unique: {c:?}"
    );
    assert!(c.iter().all(|&x| x < MAX_VCPUS), "{c:?}");
}

fn check_distances(from: u32, d: &[(u32, u8)]) {
    for (i, &(to, v)) in d.iter().enumerate() {
        if to == from {
            assert_eq!(v, 10, "self distance");
        } else {
            assert!(v >= 11, "distance {v}");
        }
        assert!(!d[..i].iter().any(|(t, _)| *t == to), "node {to} twice");
    }
}

/// Parses one option value and checks what comes out.
fn option(mode: &str, s: &str) {
    match mode {
        "cpus" => {
            if let Some(c) = option_error("cpus", CpusConfig::parse(s)) {
                assert!(c.boot >= 1 && c.boot <= MAX_VCPUS);
                assert_eq!(CpusConfig::parse(&format!("boot={}", c.boot)), Ok(c));
            }
        }
        "memory" => {
            if let Some(m) = option_error("memory", MemoryConfig::parse(s)) {
                use vmm::config::memory::{MAX_MEMORY, MIN_MEMORY};
                use vmm::config::HugePages;
                // 0 is "the zones are the RAM", checked with the zones.
                assert!(m.size == 0 || (MIN_MEMORY..=MAX_MEMORY).contains(&m.size));
                assert!(m.size % 4096 == 0);
                let on = |b: bool| if b { "on" } else { "off" };
                let b = &m.backing;
                let huge = match b.hugepages {
                    HugePages::Off => "hugepages=off".to_string(),
                    HugePages::HostDefault => "hugepages=on".to_string(),
                    HugePages::Size(s) => format!("hugepages=on,hugepage_size={s}"),
                };
                let again = format!(
                    "size={},shared={},{huge},prefault={},thp={}",
                    m.size,
                    on(b.shared),
                    on(b.prefault),
                    on(b.thp)
                );
                assert_eq!(MemoryConfig::parse(&again), Ok(m));
            }
        }
        "serial" => {
            if let Some(SerialConfig::File(p)) = option_error("serial", SerialConfig::parse(s)) {
                assert!(!p.as_os_str().is_empty());
            }
        }
        "console" => {
            option_error("console", parse_console(s));
        }
        "platform" => {
            if let Some(p) = option_error("platform", PlatformConfig::parse(s)) {
                if let Some(sz) = p.mmio64_size {
                    assert!(sz.is_power_of_two() && sz >= 1 << 30);
                    let again = PlatformConfig::parse(&format!("mmio64_size={sz}"));
                    assert_eq!(again, Ok(p));
                }
            }
        }
        "device" => {
            if let Some(d) = option_error("device", DeviceConfig::parse(s)) {
                assert!(!d.source.path().as_os_str().is_empty());
                if let Some(id) = &d.id {
                    assert_eq!(parse_id(id).as_ref(), Ok(id));
                }
                // Written out again (a path with ',' or '=' cannot be, by design).
                let path = d.source.path().to_string_lossy();
                if !path.contains([',', '[', ']']) {
                    assert_eq!(DeviceConfig::parse(&device_str(&d)), Ok(d.clone()));
                }
                remote_add_device_matches(&d);
            }
        }
        "numa" => {
            if let Some(n) = option_error("numa", NumaConfig::parse(s)) {
                if let Some(c) = &n.cpus {
                    check_cpus(c);
                }
                check_distances(n.guest_numa_id, &n.distances);
                assert!(!(n.cpus.is_some() && n.device_id.is_some()));
                assert!(!(n.device_id.is_some() && !n.memory_zones.is_empty()));
                for z in &n.memory_zones {
                    assert_eq!(parse_id(z).as_ref(), Ok(z));
                }
                assert_eq!(NumaConfig::parse(&numa_str(&n)), Ok(n));
            }
        }
        "gh" => {
            if let Some(g) = option_error("gh", GhConfig::parse(s)) {
                assert!(g.slots >= 1 && usize::from(g.slots) <= MAX_NUMA_NODES);
                assert!(g.nodes >= 1 && g.nodes as usize <= MAX_NUMA_NODES);
                assert!(g.distance >= 11);
                assert!(g.bar_space.is_power_of_two() && g.bar_space >= 1 << 30);
                assert_eq!(GhConfig::parse(&gh_str(&g)), Ok(g));
            }
        }
        "api-socket" => match option_error("api-socket", ApiSocketConfig::parse(s)) {
            Some(ApiSocketConfig::Fd(fd)) => assert!(fd > 2),
            Some(ApiSocketConfig::Path(p)) => assert!(!p.as_os_str().is_empty()),
            None => {}
        },
        "size" => {
            if let Some(n) = value_error(parse_size(s)) {
                assert_eq!(parse_size(&n.to_string()), Ok(n));
            }
        }
        "cpu-list" => {
            if let Some(c) = value_error(parse_cpu_list(s)) {
                check_cpus(&c);
                assert_eq!(parse_cpu_list(&cpu_list(&c)), Ok(c));
            }
        }
        "distances" => {
            // "FROM:LIST"
            let (from, list) = s.split_once(' ').unwrap_or(("0", s));
            let from = from.parse().unwrap_or(0);
            if let Some(d) = value_error(parse_distances(from, list)) {
                check_distances(from, &d);
                assert_eq!(parse_distances(from, &distances_str(&d)), Ok(d));
            }
        }
        "id" => {
            if let Some(id) = value_error(parse_id(s)) {
                assert_eq!(id, s);
            }
        }
        "gh-slot" => {
            if let Some(g) = value_error(GhSlotRequest::parse(s)) {
                assert_eq!(GhSlotRequest::parse(&gh_slot_str(g)), Ok(g));
            }
        }
        _ => unreachable!(),
    }
}

/// What ghvmm-remote sends for `--device`-syntax argument is what the server accepts.
fn remote_add_device_matches(d: &DeviceConfig) {
    use vmm::api::client::RemoteCommand;
    let cmd = RemoteCommand::AddDevice {
        device: device_str_raw(d),
    };
    let Ok(req) = cmd.request() else {
        return; // only for a path that cannot be written as an option
    };
    let body = req.body.expect("add-device has a body");
    let request = crate::api::http::Request {
        method: req.method.into(),
        path: format!("/api/v1/{}", req.endpoint),
        body: Some(body.into_bytes()),
    };
    let vm = crate::api::FakeVm::default();
    let r = crate::api::serve(&vm, &request);
    if d.id.as_deref() != Some("gpu0") && d.id.as_deref() != Some("weird") {
        assert_eq!(
            r.status, 200,
            "the server refused what ghvmm-remote sent for {d:?}"
        );
        let calls = vm.calls.lock();
        let want = vmm::api::AddDevice {
            source: d.source.clone(),
            id: d.id.clone(),
            pci_segment: None,
            gh_slot: d.gh_slot,
        };
        assert_eq!(calls.as_slice(), [format!("add {want:?}")]);
    }
}

fn device_str_raw(d: &DeviceConfig) -> String {
    device_str(d)
}

/// The resolved topology of an accepted command line is one the ACPI code can write down.
pub fn check_topology(t: &Topology, boot: u8) {
    let n = t.nodes.len();
    assert!((1..=MAX_NUMA_NODES).contains(&n), "{n} nodes");
    assert_eq!(t.distances.len(), n);
    for (i, node) in t.nodes.iter().enumerate() {
        assert_eq!(node.guest_numa_id as usize, i, "ids are 0..n-1");
        assert_eq!(t.distances[i].len(), n);
        for (j, &d) in t.distances[i].iter().enumerate() {
            if i == j {
                assert_eq!(d, 10);
            } else {
                assert!(d >= 11, "distance {i}->{j} is {d}");
            }
        }
        if node.initiator.is_some() {
            assert!(node.cpus.is_empty(), "a Generic Initiator node with vCPUs");
        }
    }
    let mut owner = vec![None; usize::from(boot)];
    for (i, node) in t.nodes.iter().enumerate() {
        for &c in &node.cpus {
            let slot = owner
                .get_mut(usize::from(c))
                .expect("a vCPU that does not exist");
            assert!(slot.replace(i).is_none(), "vCPU {c} in two nodes");
        }
    }
    assert!(owner.iter().all(Option::is_some), "a vCPU in no node");
    assert!(!t.nodes[t.memory_node].cpus.is_empty());
    assert!(t.nodes[..t.memory_node].iter().all(|n| n.cpus.is_empty()));
    for (k, s) in t.slots.iter().enumerate() {
        assert_eq!(usize::from(s.index), k);
        assert_eq!(s.segment, s.index + 1);
        for &node in &s.nodes {
            assert_eq!(t.nodes[node].initiator, Some(Initiator::GhSlot(s.index)));
        }
    }
}

// The parsers, built once per thread: building one (clap checks the whole definition in
// this debug-assertions build) cost more than the parse itself. `CliParser` is what
// `Cli::parse_from_args` uses; vmm's tests show a reused one answers as a fresh one.
thread_local! {
    static GHVMM: RefCell<CliParser> = RefCell::new(CliParser::default());
    static REMOTE: RefCell<clap::Command> =
        RefCell::new(vmm::api::client::RemoteCli::command());
}

fn argv(args: &[&str]) {
    let parsed =
        GHVMM.with_borrow_mut(|p| p.parse(std::iter::once("ghvmm").chain(args.iter().copied())));
    let cli = match parsed {
        Ok(c) => c,
        Err(vmm::config::cli::ParseError::Clap(e)) => {
            // main.rs prints the first line of clap's message.
            let _ = vmm::api::client::arg_error_line(&e);
            return;
        }
        Err(e) => {
            one_line(&e);
            return;
        }
    };
    match cli.into_config() {
        Ok(cfg) => {
            assert!(cfg.cpus.boot >= 1);
            if let Some(t) = vmm::config::numa::resolve(&cfg).expect("resolved once already") {
                check_topology(&t, cfg.cpus.boot);
            }
        }
        Err(e) => {
            one_line(&e);
        }
    }
}

fn remote(args: &[&str]) {
    use vmm::api::client::RemoteCli;
    let cli = std::iter::once("ghvmm-remote").chain(args.iter().copied());
    let Ok(matches) = REMOTE.with_borrow_mut(|c| c.try_get_matches_from_mut(cli)) else {
        return;
    };
    let Ok(cli) = RemoteCli::from_arg_matches(&matches) else {
        return;
    };
    match cli.command.request() {
        Ok(req) => {
            if let Some(body) = req.body {
                serde_json::from_str::<serde_json::Value>(&body).expect("a JSON body");
            }
        }
        Err(e) => {
            one_line(&e);
        }
    }
}

pub const MODES: &[&str] = &[
    "cpus",
    "memory",
    "serial",
    "console",
    "platform",
    "device",
    "numa",
    "gh",
    "api-socket",
    "size",
    "cpu-list",
    "distances",
    "id",
    "gh-slot",
];

pub fn fuzz(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (mode, rest) = text.split_once('\n').unwrap_or((text, ""));
    match mode {
        "argv" => argv(&rest.split('\n').take(64).collect::<Vec<_>>()),
        "remote" => remote(&rest.split('\n').take(16).collect::<Vec<_>>()),
        m if MODES.contains(&m) => option(m, rest),
        _ => argv(&text.split('\n').take(64).collect::<Vec<_>>()),
    }
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let s: &[(&str, &str)] = &[
        ("cpus", "cpus\nboot=4,max=4"),
        ("memory", "memory\nsize=1G"),
        ("memory-odd", "memory\nsize=33554433"),
        ("memory-shared", "memory\nsize=512M,shared=on"),
        ("serial", "serial\nfile=/tmp/console.log"),
        ("console", "console\noff"),
        ("platform", "platform\nmmio64_size=512G"),
        ("device", "device\npath=/sys/bus/pci/devices/0000:01:00.0,id=gpu0,gh_slot=auto"),
        ("numa", "numa\nguest_numa_id=1,cpus=[0-2,5],distances=[0@20,2@30]"),
        ("numa-old-syntax", "numa\nguest_numa_id=1,cpus=0-2:5,distances=0@20:2@30"),
        ("numa-gi", "numa\nguest_numa_id=2,device_id=nic0"),
        ("numa-zones", "numa\nguest_numa_id=1,memory_zones=[m0,m1]"),
        ("gh", "gh\nslots=2,nodes=8,distance=20,dsd=on,bar_space=256G"),
        ("api-socket", "api-socket\npath=/run/ghvmm.sock"),
        ("api-socket-fd", "api-socket\nfd=3"),
        ("size", "size\n17179869183T"),
        ("cpu-list", "cpu-list\n[0-3,7,9-10]"),
        ("distances", "distances\n1 [0@20,2@255]"),
        ("id", "id\ngpu-0_a"),
        ("gh-slot", "gh-slot\n65535"),
        (
            "argv-ch",
            "argv\n--kernel\n/k\n--cpus\nboot=4\n--memory\nsize=2G\n--numa\nguest_numa_id=0,cpus=0-1\n--numa\nguest_numa_id=1,cpus=2-3,distances=0@20",
        ),
        (
            "argv-gh",
            "argv\n--kernel\n/k\n--cpus\nboot=2\n--gh\nslots=2,dsd=on\n--device\npath=/g0,id=gpu0,gh_slot=auto\n--device\npath=/g1,gh_slot=0\n--api-socket\npath=/tmp/api.sock",
        ),
        (
            "argv-gi",
            "argv\n--kernel\n/k\n--cpus\nboot=3\n--numa\nguest_numa_id=0,cpus=[0,2],distances=[1@30,2@40]\n--numa\nguest_numa_id=1,cpus=[1]\n--numa\nguest_numa_id=2,device_id=nic\n--device\npath=/sys/bus/pci/devices/0000:00:03.0,id=nic",
        ),
        ("argv-bad", "argv\n--kernel\n/k\n--numa\nguest_numa_id=0,memory_zones=[m0]"),
        ("remote-add", "remote\n--api-socket\n/tmp/api.sock\nadd-device\npath=/g,id=gpu1,gh_slot=3"),
        ("remote-remove", "remote\n--api-socket\n/tmp/api.sock\nremove-device\ngpu1"),
    ];
    s.iter()
        .map(|(name, text)| (*name, text.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold_the_invariants() {
        for (_, bytes) in super::seeds() {
            super::fuzz(&bytes);
        }
    }
}
