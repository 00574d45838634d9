// SPDX-License-Identifier: GPL-2.0
/*
 * ghvmm_test_vfio: a vfio-pci variant driver for QEMU's ivshmem (1af4:1110) that presents
 * ivshmem's BAR2 as GPU-like device memory, so the rig can test ghvmm against both
 * BAR-padding contracts (docs/contract.md) with the host's backing file as the memory.
 *
 *   mode=vmm_pads     region size = length (not a power of two): the VMM pads.
 *   mode=kernel_pads  region size = roundup_pow_of_two(length) with one sparse-mmap area
 *                     [0, length): reads past length return 0xff, writes there are dropped
 *                     (what nvgrace-gpu does).
 *   length=BYTES      the real length, at most ivshmem's BAR2 size.
 *   lengths=B1,B2,..  instead of length=: each device gets the first of these that fits in
 *                     its BAR2 (whatever the probe order), so one L2 can hold a GH-sized and a
 *                     small device and the bench can alternate them.
 *   bad_info=1        report a sparse area larger than the region (ghvmm must refuse it).
 *   cap_loop=1        the memory region's capability chain is a loop: its sparse-mmap
 *                     capability names itself as the next (ghvmm must refuse it, not follow it).
 *   map_length=BYTES  only [0, map_length) may be mmapped (a sparse-mmap area in either mode);
 *                     the rest of the real memory is reached through read/write only.
 *   fail_after=N      fault injection: after N read/write calls on the memory region since
 *                     the device was opened, every further one fails with -EIO.
 *
 * Like nvgrace-gpu, the BAR2/BAR3 registers are emulated as one 64-bit prefetchable BAR of
 * the reported size, and mmap is only allowed inside the real length.
 */
#include <linux/io.h>
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vfio_pci_core.h>

static char *mode = "vmm_pads";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "vmm_pads or kernel_pads");
static ulong ghtest_default_length = 48UL << 20;
module_param_named(length, ghtest_default_length, ulong, 0444);
MODULE_PARM_DESC(length, "real length of the device memory in bytes");
#define MAX_LENGTHS 8
static ulong lengths[MAX_LENGTHS];
static int n_lengths;
module_param_array(lengths, ulong, &n_lengths, 0444);
MODULE_PARM_DESC(lengths, "real lengths; a device gets the first that fits in its BAR2");

static ulong ghtest_length(u64 avail)
{
	int i;

	for (i = 0; i < n_lengths; i++)
		if (lengths[i] && lengths[i] <= avail)
			return lengths[i];
	return ghtest_default_length;
}
static bool bad_info;
module_param(bad_info, bool, 0444);
MODULE_PARM_DESC(bad_info, "report invalid region info");
static bool cap_loop;
module_param(cap_loop, bool, 0444);
MODULE_PARM_DESC(cap_loop, "make the memory region's capability chain a loop");
static ulong map_length;
module_param(map_length, ulong, 0444);
MODULE_PARM_DESC(map_length, "mmappable part in bytes (0: all of length)");
static ulong fail_after;
module_param(fail_after, ulong, 0444);
MODULE_PARM_DESC(fail_after, "fail memory region read/write with -EIO after this many calls (0: never)");

#define MEM_BAR 2
#define BAR_REG(bar) (PCI_BASE_ADDRESS_0 + 4 * (bar))

struct ghtest_device {
	struct vfio_pci_core_device core;
	phys_addr_t mem_phys;
	u64 mem_len;
	u64 map_len;
	u64 region_size;
	atomic64_t rw_calls;
	bool kernel_pads;
	void __iomem *mem;
	u64 bar_value;
};

static struct ghtest_device *to_ghtest(struct vfio_device *vdev)
{
	return container_of(vdev, struct ghtest_device, core.vdev);
}

static int ghtest_open_device(struct vfio_device *vdev)
{
	struct ghtest_device *g = to_ghtest(vdev);
	int ret;

	ret = vfio_pci_core_enable(&g->core);
	if (ret)
		return ret;
	g->mem = ioremap_wc(g->mem_phys, g->mem_len);
	if (!g->mem) {
		vfio_pci_core_disable(&g->core);
		return -ENOMEM;
	}
	g->bar_value = 0;
	atomic64_set(&g->rw_calls, 0);
	vfio_pci_core_finish_enable(&g->core);
	return 0;
}

static void ghtest_close_device(struct vfio_device *vdev)
{
	struct ghtest_device *g = to_ghtest(vdev);

	if (g->mem) {
		iounmap(g->mem);
		g->mem = NULL;
	}
	vfio_pci_core_close_device(vdev);
}

static long ghtest_region_info(struct ghtest_device *g, unsigned long arg)
{
	unsigned long minsz = offsetofend(struct vfio_region_info, offset);
	struct vfio_info_cap caps = { .buf = NULL, .size = 0 };
	struct vfio_region_info info;
	int ret = 0;

	if (copy_from_user(&info, (void __user *)arg, minsz))
		return -EFAULT;
	if (info.argsz < minsz)
		return -EINVAL;
	if (info.index != MEM_BAR)
		return vfio_pci_core_ioctl(&g->core.vdev, VFIO_DEVICE_GET_REGION_INFO, arg);

	info.offset = VFIO_PCI_INDEX_TO_OFFSET(MEM_BAR);
	info.size = g->region_size;
	info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE |
		     VFIO_REGION_INFO_FLAG_MMAP;
	if (g->kernel_pads || bad_info || cap_loop || g->map_len < g->mem_len) {
		struct vfio_region_info_cap_sparse_mmap *sparse;
		size_t size = struct_size(sparse, areas, 1);

		sparse = kzalloc(size, GFP_KERNEL);
		if (!sparse)
			return -ENOMEM;
		sparse->header.id = VFIO_REGION_INFO_CAP_SPARSE_MMAP;
		sparse->header.version = 1;
		sparse->nr_areas = 1;
		sparse->areas[0].offset = 0;
		sparse->areas[0].size = bad_info ? g->region_size * 2 : g->map_len;
		ret = vfio_info_add_capability(&caps, &sparse->header, size);
		kfree(sparse);
		if (ret)
			return ret;
	}
	if (caps.size) {
		info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
		if (info.argsz < sizeof(info) + caps.size) {
			info.argsz = sizeof(info) + caps.size;
			info.cap_offset = 0;
		} else {
			vfio_info_cap_shift(&caps, sizeof(info));
			/*
			 * The shift only moves nonzero offsets; the one capability's `next` is 0,
			 * so it is set here, after the shift, to the capability's own offset in
			 * the user's buffer.
			 */
			if (cap_loop)
				((struct vfio_info_cap_header *)caps.buf)->next = sizeof(info);
			if (copy_to_user((void __user *)arg + sizeof(info), caps.buf, caps.size))
				ret = -EFAULT;
			info.cap_offset = sizeof(info);
		}
		kfree(caps.buf);
	}
	if (!ret && copy_to_user((void __user *)arg, &info, minsz))
		ret = -EFAULT;
	return ret;
}

static long ghtest_ioctl(struct vfio_device *vdev, unsigned int cmd, unsigned long arg)
{
	if (cmd == VFIO_DEVICE_GET_REGION_INFO)
		return ghtest_region_info(to_ghtest(vdev), arg);
	return vfio_pci_core_ioctl(vdev, cmd, arg);
}

/* BAR2/BAR3 as one emulated 64-bit prefetchable BAR: sizing mask of the reported size. */
static u32 ghtest_bar_reg(struct ghtest_device *g, int reg)
{
	u64 v = (g->bar_value & ~(g->region_size - 1)) |
		PCI_BASE_ADDRESS_MEM_TYPE_64 | PCI_BASE_ADDRESS_MEM_PREFETCH;

	return reg == BAR_REG(MEM_BAR) ? lower_32_bits(v) : upper_32_bits(v);
}

static bool ghtest_is_bar_reg(loff_t pos, size_t count)
{
	return (pos == BAR_REG(MEM_BAR) || pos == BAR_REG(MEM_BAR + 1)) && count == 4;
}

static ssize_t ghtest_mem_rw(struct ghtest_device *g, char __user *ubuf, size_t count,
			     u64 off, bool write)
{
	size_t done = 0;
	u8 chunk[64];

	if (off >= g->region_size)
		return -EINVAL;
	if (fail_after && atomic64_inc_return(&g->rw_calls) > fail_after)
		return -EIO;
	count = min_t(u64, count, g->region_size - off);
	while (done < count) {
		size_t n = min_t(size_t, sizeof(chunk), count - done);
		u64 at = off + done;
		size_t real = at < g->mem_len ? min_t(u64, n, g->mem_len - at) : 0;

		if (write) {
			if (copy_from_user(chunk, ubuf + done, n))
				return -EFAULT;
			if (real)
				memcpy_toio(g->mem + at, chunk, real);
			/* bytes past the real length are dropped */
		} else {
			if (real)
				memcpy_fromio(chunk, g->mem + at, real);
			memset(chunk + real, 0xff, n - real);
			if (copy_to_user(ubuf + done, chunk, n))
				return -EFAULT;
		}
		done += n;
	}
	return done;
}

static ssize_t ghtest_read(struct vfio_device *vdev, char __user *buf, size_t count, loff_t *ppos)
{
	struct ghtest_device *g = to_ghtest(vdev);
	unsigned int index = VFIO_PCI_OFFSET_TO_INDEX(*ppos);
	u64 off = *ppos & VFIO_PCI_OFFSET_MASK;
	ssize_t ret;

	if (index == MEM_BAR) {
		ret = ghtest_mem_rw(g, buf, count, off, false);
		if (ret > 0)
			*ppos += ret;
		return ret;
	}
	if (index == VFIO_PCI_CONFIG_REGION_INDEX && ghtest_is_bar_reg(off, count)) {
		__le32 v = cpu_to_le32(ghtest_bar_reg(g, off));

		if (copy_to_user(buf, &v, 4))
			return -EFAULT;
		*ppos += 4;
		return 4;
	}
	return vfio_pci_core_read(vdev, buf, count, ppos);
}

static ssize_t ghtest_write(struct vfio_device *vdev, const char __user *buf, size_t count,
			    loff_t *ppos)
{
	struct ghtest_device *g = to_ghtest(vdev);
	unsigned int index = VFIO_PCI_OFFSET_TO_INDEX(*ppos);
	u64 off = *ppos & VFIO_PCI_OFFSET_MASK;
	ssize_t ret;

	if (index == MEM_BAR) {
		ret = ghtest_mem_rw(g, (char __user *)buf, count, off, true);
		if (ret > 0)
			*ppos += ret;
		return ret;
	}
	if (index == VFIO_PCI_CONFIG_REGION_INDEX && ghtest_is_bar_reg(off, count)) {
		__le32 v;
		u64 val;

		if (copy_from_user(&v, buf, 4))
			return -EFAULT;
		val = le32_to_cpu(v);
		if (off == BAR_REG(MEM_BAR))
			g->bar_value = (g->bar_value & GENMASK_ULL(63, 32)) | val;
		else
			g->bar_value = (g->bar_value & GENMASK_ULL(31, 0)) | (val << 32);
		*ppos += 4;
		return 4;
	}
	return vfio_pci_core_write(vdev, buf, count, ppos);
}

/*
 * Pages are inserted at fault time, 2 MiB around the faulting address at once, not all at
 * mmap: mapping GH-sized memory (96 GiB) eagerly with 4 KiB PTEs would cost 192 MiB of page
 * tables and seconds of work per mmap, a cost of this test driver that would hide what the
 * VMM costs; one page per fault makes every first touch of a page a full fault.
 */
static vm_fault_t ghtest_mmap_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	unsigned long base_pfn = (unsigned long)vma->vm_private_data;
	unsigned long start = max(vma->vm_start, ALIGN_DOWN(vmf->address, PMD_SIZE));
	unsigned long end = min(vma->vm_end, ALIGN_DOWN(vmf->address, PMD_SIZE) + PMD_SIZE);
	unsigned long addr;
	vm_fault_t ret = VM_FAULT_NOPAGE;

	for (addr = start; addr < end; addr += PAGE_SIZE) {
		ret = vmf_insert_pfn(vma, addr, base_pfn + ((addr - vma->vm_start) >> PAGE_SHIFT));
		if (ret & VM_FAULT_ERROR)
			break;
	}
	return ret;
}

static const struct vm_operations_struct ghtest_mmap_ops = {
	.fault = ghtest_mmap_fault,
};

static int ghtest_mmap(struct vfio_device *vdev, struct vm_area_struct *vma)
{
	struct ghtest_device *g = to_ghtest(vdev);
	unsigned int index = vma->vm_pgoff >> (VFIO_PCI_OFFSET_SHIFT - PAGE_SHIFT);
	u64 pgoff, len;

	if (index != MEM_BAR)
		return vfio_pci_core_mmap(vdev, vma);
	pgoff = vma->vm_pgoff & ((1ULL << (VFIO_PCI_OFFSET_SHIFT - PAGE_SHIFT)) - 1);
	len = vma->vm_end - vma->vm_start;
	/* Only the real memory may be mapped, as with nvgrace-gpu (and only map_length of it). */
	if ((pgoff << PAGE_SHIFT) + len > g->map_len)
		return -EINVAL;
	vma->vm_page_prot = pgprot_writecombine(vma->vm_page_prot);
	vma->vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
	vma->vm_private_data = (void *)(unsigned long)(PHYS_PFN(g->mem_phys) + pgoff);
	vma->vm_ops = &ghtest_mmap_ops;
	return 0;
}

static const struct vfio_device_ops ghtest_ops = {
	.name = "ghvmm-test-vfio",
	.init = vfio_pci_core_init_dev,
	.release = vfio_pci_core_release_dev,
	.open_device = ghtest_open_device,
	.close_device = ghtest_close_device,
	.ioctl = ghtest_ioctl,
	.device_feature = vfio_pci_core_ioctl_feature,
	.read = ghtest_read,
	.write = ghtest_write,
	.mmap = ghtest_mmap,
	.request = vfio_pci_core_request,
	.match = vfio_pci_core_match,
};

static int ghtest_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct ghtest_device *g;
	u64 avail = pci_resource_len(pdev, MEM_BAR);
	ulong length = ghtest_length(avail);
	int ret;

	if (!length || length > avail) {
		pci_err(pdev, "length %lu must be between 1 and BAR2's %llu bytes\n", length, avail);
		return -EINVAL;
	}
	if (map_length > length || map_length % PAGE_SIZE) {
		pci_err(pdev, "map_length %lu must be a multiple of the page size, at most length\n",
			map_length);
		return -EINVAL;
	}
	if (strcmp(mode, "vmm_pads") && strcmp(mode, "kernel_pads")) {
		pci_err(pdev, "mode must be vmm_pads or kernel_pads, not %s\n", mode);
		return -EINVAL;
	}
	g = vfio_alloc_device(ghtest_device, core.vdev, &pdev->dev, &ghtest_ops);
	if (IS_ERR(g))
		return PTR_ERR(g);
	dev_set_drvdata(&pdev->dev, &g->core);
	g->mem_phys = pci_resource_start(pdev, MEM_BAR);
	g->mem_len = length;
	g->map_len = map_length ? map_length : length;
	g->kernel_pads = !strcmp(mode, "kernel_pads");
	g->region_size = g->kernel_pads ? roundup_pow_of_two(length) : length;
	ret = vfio_pci_core_register_device(&g->core);
	if (ret) {
		vfio_put_device(&g->core.vdev);
		return ret;
	}
	pci_info(pdev, "%s, device memory %llu bytes (%llu mappable), region %llu bytes\n", mode,
		 g->mem_len, g->map_len, g->region_size);
	return 0;
}

static void ghtest_remove(struct pci_dev *pdev)
{
	struct vfio_pci_core_device *core = dev_get_drvdata(&pdev->dev);

	vfio_pci_core_unregister_device(core);
	vfio_put_device(&core->vdev);
}

static const struct pci_device_id ghtest_table[] = {
	{ PCI_DRIVER_OVERRIDE_DEVICE_VFIO(0x1af4, 0x1110) },
	{}
};
MODULE_DEVICE_TABLE(pci, ghtest_table);

static struct pci_driver ghtest_driver = {
	.name = KBUILD_MODNAME,
	.id_table = ghtest_table,
	.probe = ghtest_probe,
	.remove = ghtest_remove,
	.err_handler = &vfio_pci_core_err_handlers,
	.driver_managed_dma = true,
};
module_pci_driver(ghtest_driver);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ghvmm test: ivshmem BAR2 as GPU-like device memory with either BAR-padding contract");
