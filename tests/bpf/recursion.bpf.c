// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Test fixture for Program.info(): a tracing program the kernel must skip.
 *
 * getpgid() from the test process makes `printk_on_getpgid` call bpf_printk,
 * which fires the bpf_trace_printk tracepoint. `nests` runs there and calls
 * bpf_printk itself: the tracepoint fires again, on the same CPU, inside
 * `nests`, so the kernel skips that nested run and counts it in the
 * program's recursion_misses. `never_nests` sits on the same tracepoint
 * without printing: it runs for both printk calls and is never skipped.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* The test process's tgid, written after load (bpf_printk's formats live in .rodata). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tgid SEC(".maps");

/* Runs per program: 0 printk_on_getpgid, 1 nests, 2 never_nests. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} runs SEC(".maps");

static __always_inline int ours(__u32 slot)
{
	__u32 zero = 0, *want = bpf_map_lookup_elem(&tgid, &zero);
	__u64 *n;

	if (!want || (bpf_get_current_pid_tgid() >> 32) != *want)
		return 0;
	n = bpf_map_lookup_elem(&runs, &slot);
	if (n)
		*n += 1;
	return 1;
}

SEC("tracepoint/syscalls/sys_enter_getpgid")
int printk_on_getpgid(void *ctx)
{
	if (ours(0))
		bpf_printk("podsight test: recursion");
	return 0;
}

SEC("tp_btf/bpf_trace_printk")
int nests(__u64 *ctx)
{
	if (ours(1))
		bpf_printk("podsight test: nested");
	return 0;
}

SEC("tp_btf/bpf_trace_printk")
int never_nests(__u64 *ctx)
{
	ours(2);
	return 0;
}
