// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Test fixture for the libbpf binding: a ring buffer fed on demand, maps, and a tc program. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile struct {
	__u32 tgid;
	__u32 _pad;
} cfg = {};

struct record {
	__u64 seq;
	__u64 square;
	__u32 tgid;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct sys_enter_ctx {
	__u64 common;
	__s32 nr;
	__s32 _pad;
	__u64 args[6];
};

/* getpgid(seq) from the test process writes one record carrying seq. */
SEC("tracepoint/syscalls/sys_enter_getpgid")
int on_getpgid(struct sys_enter_ctx *ctx)
{
	struct record r = {};
	__u32 slot = 0;
	__u64 *lost;

	r.tgid = bpf_get_current_pid_tgid() >> 32;
	if (r.tgid != cfg.tgid)
		return 0;
	r.seq = ctx->args[0];
	r.square = r.seq * r.seq;
	if (bpf_ringbuf_output(&ring, &r, sizeof(r), BPF_RB_NO_WAKEUP)) {
		lost = bpf_map_lookup_elem(&counters, &slot);
		if (lost)
			*lost += 1;
	}
	return 0;
}

static __always_inline int count_in(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &slot);

	if (n)
		*n += 1;
	return -1; /* TC_ACT_UNSPEC (TCX_NEXT): on to the next program, as podsight's do */
}

SEC("tc")
int count_packets(struct __sk_buff *skb)
{
	return count_in(1);
}

SEC("tc")
int count_packets_too(struct __sk_buff *skb)
{
	return count_in(2);
}

/* Loads anywhere, attaches nowhere: no kernel has this tracepoint (a NotSupported test). */
SEC("tracepoint/podsight_test/no_such_event")
int no_such_hook(void *ctx)
{
	return 0;
}
