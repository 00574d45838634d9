//! Kernel modules for L2: dependency closure from modules.dep, in load order.

use std::collections::HashMap;

/// Parses modules.dep ("path: dep dep ...") into path -> deps.
pub fn parse_deps(text: &str) -> HashMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((
                m.trim().to_string(),
                deps.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect()
}

/// Module file name without directory and extension, with '-' and '_' unified.
fn stem(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The modules named in `wanted` and everything they need, dependencies first.
/// Returns an error naming a module that modules.dep does not know (it may be built in:
/// the caller decides).
pub fn closure(deps: &HashMap<String, Vec<String>>, wanted: &[&str]) -> (Vec<String>, Vec<String>) {
    let by_stem: HashMap<String, &String> = deps.keys().map(|k| (stem(k), k)).collect();
    let mut order = Vec::new();
    let mut missing = Vec::new();
    fn visit(m: &str, deps: &HashMap<String, Vec<String>>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, order);
        }
        order.push(m.to_string());
    }
    for w in wanted {
        match by_stem.get(&w.replace('-', "_")) {
            Some(path) => visit(path, deps, &mut order),
            None => missing.push(w.to_string()),
        }
    }
    (order, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/drivers/crypto/ccp/ccp.ko:
kernel/virt/lib/irqbypass.ko:
kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/virt/lib/irqbypass.ko
";

    #[test]
    fn closure_puts_dependencies_first_once() {
        let deps = parse_deps(DEP);
        let (order, missing) = closure(&deps, &["kvm_amd", "vfio-pci", "nonexistent"]);
        let stems: Vec<String> = order.iter().map(|p| stem(p)).collect();
        assert_eq!(
            stems,
            [
                "ccp",
                "irqbypass",
                "kvm",
                "kvm_amd",
                "vfio_pci_core",
                "vfio_pci"
            ]
        );
        assert_eq!(missing, ["nonexistent"]);
    }
}
