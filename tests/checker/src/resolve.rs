//! `checker resolve ADDR...` (in L2): names kernel addresses from /proc/kallsyms, one
//! `@@RESOLVE <addr> <symbol+off> [module]` line each. The rig runs it in a fresh L2 after a
//! scenario hung silently: L2 boots with `nokaslr` and loads the same modules in the same
//! order, so the hung L2's RIPs name the same code.

/// (address, name, module) of every text symbol, sorted.
pub fn parse(kallsyms: &str) -> Vec<(u64, String, String)> {
    let mut v: Vec<(u64, String, String)> = kallsyms
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let addr = u64::from_str_radix(w.next()?, 16).ok()?;
            let kind = w.next()?;
            let name = w.next()?.to_string();
            let module = w.next().unwrap_or("").to_string();
            (addr != 0 && matches!(kind, "T" | "t" | "W" | "w")).then_some((addr, name, module))
        })
        .collect();
    v.sort();
    v
}

pub fn name(symbols: &[(u64, String, String)], addr: u64) -> Option<String> {
    let i = symbols.partition_point(|(a, _, _)| *a <= addr);
    let (start, name, module) = symbols.get(i.checked_sub(1)?)?;
    let off = addr - start;
    if off > 0x10000 {
        return None; // far past any function: not kernel text
    }
    Some(format!("{name}+{off:#x} {module}").trim_end().to_string())
}

pub fn main(args: &[String]) -> i32 {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let symbols = parse(&text);
    for a in args {
        let addr = u64::from_str_radix(a.trim_start_matches("0x"), 16).ok();
        let named = addr
            .and_then(|x| name(&symbols, x))
            .unwrap_or_else(|| "?".into());
        println!("@@RESOLVE {a} {named}");
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_kernel_and_module_text() {
        let s = parse(
            "ffffffff81000000 T _stext\n\
             ffffffff81000100 t do_thing\n\
             ffffffff82000000 D data\n\
             ffffffffc0100000 t __apic_accept_irq\t[kvm]\n\
             0000000000000000 T hidden\n",
        );
        assert_eq!(
            name(&s, 0xffff_ffff_8100_0172).as_deref(),
            Some("do_thing+0x72")
        );
        assert_eq!(
            name(&s, 0xffff_ffff_c010_0072).as_deref(),
            Some("__apic_accept_irq+0x72 [kvm]")
        );
        assert_eq!(name(&s, 0x1000), None);
        assert_eq!(name(&s, 0xffff_ffff_8200_0000), None, "data is not text");
    }
}
