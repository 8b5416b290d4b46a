// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcpconnect: one event per active TCP connect, emitted when its outcome is
 * known, built on tracepoints only (no kprobes, no fentry).
 *
 *   sock:inet_sock_set_state  CLOSE -> SYN_SENT       remember the attempt, in
 *                                                     process context (pid, comm)
 *                             SYN_SENT -> ESTABLISHED ok, latency
 *                             SYN_SENT -> CLOSE       refused / timeout /
 *                                                     unreachable / error, from sk_err
 *   tcp:tcp_retransmit_skb    while SYN_SENT          count SYN retries
 *   sock:inet_sk_error_report while SYN_SENT          keep a soft (ICMP) error
 *
 * Attempts still open when the trace stops stay in `inflight`; user space
 * reads them in one batch and reports them as `pending`.
 *
 * Nothing is lost silently: every event that does not fit in the ring buffer
 * and every attempt that does not fit in `inflight` is counted in `counters`.
 */
#include "../include/podsight_core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Outcome codes; user space maps them to names (tcpconnect.py RESULTS). */
enum result {
	RESULT_OK = 0,
	RESULT_CLOSED = 1, /* closed from SYN_SENT: user space classifies by errno */
	RESULT_PENDING = 2,
};

/* Counter slots (tcpconnect.py COUNTERS). */
enum counter {
	C_ATTEMPTS = 0,       /* connects seen that passed the pid/netns/dport filters */
	C_EVENTS = 1,         /* events written to the ring buffer */
	C_LOST_RINGBUF = 2,   /* events dropped: ring buffer full */
	C_LOST_INFLIGHT = 3,  /* attempts not tracked: inflight map full */
	C_SUPPRESSED = 4,     /* outcomes dropped by --failed-only / --min-latency */
	C_LOST_SKIPPED = 5,   /* outcomes the kernel did not run us for (recursion): found stale */
	C_MAX = 6,
};

struct inflight {
	u64 ts_ns;
	u64 cgroup_id;
	u8 saddr[16];
	u8 daddr[16];
	u32 pid;
	u32 tid;
	u32 uid;
	u32 netns;
	u16 family;
	u16 sport;
	u16 dport;
	u8 syn_retries;
	u8 _pad;
	s32 err; /* a soft error (ICMP) reported while the socket was owned by its user */
	char comm[16];
};

/* The record user space decodes in bulk: keep in sync with EVENT_DTYPE. */
struct event {
	u64 ts_ns;      /* when the outcome was known (CLOCK_BOOTTIME) */
	u64 latency_ns; /* SYN_SENT -> outcome */
	u64 cgroup_id;
	u8 saddr[16];
	u8 daddr[16];
	u32 pid;
	u32 tid;
	u32 uid;
	u32 netns;
	u16 family;
	u16 sport;
	u16 dport;
	u8 syn_retries;
	u8 result;
	s32 err;
	u32 _pad;
	char comm[16];
};
_Static_assert(sizeof(struct event) == 104, "event layout changed: update EVENT_DTYPE");
_Static_assert(sizeof(struct inflight) == 96, "inflight layout changed: update INFLIGHT_DTYPE");

/* Set by user space before load; the verifier prunes the unused branches. It must stay
 * the only read-only global: user space replaces .rodata whole, and checks the size. */
const volatile struct {
	u64 min_latency_ns;
	u32 pid;
	u32 wakeup_bytes; /* force a wakeup when this much is waiting */
	u16 dport;
	u8 filter_netns;
	u8 failed_only;
	u32 _pad;
} cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, struct inflight);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, u32);
	__type(value, u64);
} counters SEC(".maps");

/* netns inodes to trace, when cfg.filter_netns is set; key 0 means "every netns" (user
 * space adds it while a selected pod's netns is not known yet, and filters itself). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, u8);
} netns_filter SEC(".maps");

static __always_inline void count(u32 slot)
{
	u64 *v = bpf_map_lookup_elem(&counters, &slot);

	if (v)
		*v += 1;
}

static __always_inline void read_addrs(const struct sock *sk, u16 family, u8 *saddr, u8 *daddr)
{
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((u32 *)saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((u32 *)daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO((struct in6_addr *)saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO((struct in6_addr *)daddr, sk, __sk_common.skc_v6_daddr);
	}
}

/* skc_num is already 0 when a failed connect reaches CLOSE; inet_sport is not. */
static __always_inline u16 local_port(const struct sock *sk)
{
	return bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
}

static __always_inline int on_syn_sent(const struct sock *sk)
{
	u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 key = (u64)sk;
	u32 any_netns = 0;
	struct inflight f = {};

	if (family != AF_INET && family != AF_INET6)
		return 0;
	f.pid = pid_tgid >> 32;
	if (cfg.pid && f.pid != cfg.pid)
		return 0;
	f.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (cfg.dport && f.dport != cfg.dport)
		return 0;
	f.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (cfg.filter_netns && !bpf_map_lookup_elem(&netns_filter, &f.netns) &&
	    !bpf_map_lookup_elem(&netns_filter, &any_netns))
		return 0;

	count(C_ATTEMPTS);
	f.ts_ns = bpf_ktime_get_boot_ns();
	f.tid = (u32)pid_tgid;
	f.uid = (u32)bpf_get_current_uid_gid();
	f.cgroup_id = bpf_get_current_cgroup_id();
	f.family = family;
	/* The source port is bound after SYN_SENT (inet_hash_connect); read it later. */
	read_addrs(sk, family, f.saddr, f.daddr);
	bpf_get_current_comm(f.comm, sizeof(f.comm));
	if (bpf_map_update_elem(&inflight, &key, &f, BPF_NOEXIST)) {
		/*
		 * An entry for this socket already exists only if its last outcome was
		 * never seen (the kernel skips a program that would nest on this CPU):
		 * that attempt is lost; this one replaces it.
		 */
		if (bpf_map_lookup_elem(&inflight, &key)) {
			count(C_LOST_SKIPPED);
			bpf_map_update_elem(&inflight, &key, &f, BPF_ANY);
		} else {
			count(C_LOST_INFLIGHT);
		}
	}
	return 0;
}

static __always_inline int on_outcome(const struct sock *sk, int newstate)
{
	u64 key = (u64)sk;
	struct inflight *f = bpf_map_lookup_elem(&inflight, &key);
	struct event e = {};
	u64 flags = BPF_RB_NO_WAKEUP;

	if (!f)
		return 0;
	e.ts_ns = bpf_ktime_get_boot_ns();
	e.latency_ns = e.ts_ns - f->ts_ns;
	if (newstate == TCP_ESTABLISHED) {
		e.result = RESULT_OK;
	} else {
		e.result = RESULT_CLOSED;
		/* The user may have consumed the error with SO_ERROR before closing. */
		e.err = BPF_CORE_READ(sk, sk_err);
		if (!e.err)
			e.err = BPF_CORE_READ(sk, sk_err_soft);
		if (!e.err)
			e.err = f->err;
	}
	if ((cfg.failed_only && e.result == RESULT_OK) ||
	    (cfg.min_latency_ns && e.latency_ns < cfg.min_latency_ns)) {
		count(C_SUPPRESSED);
		bpf_map_delete_elem(&inflight, &key);
		return 0;
	}
	e.cgroup_id = f->cgroup_id;
	e.pid = f->pid;
	e.tid = f->tid;
	e.uid = f->uid;
	e.netns = f->netns;
	e.family = f->family;
	e.dport = f->dport;
	e.syn_retries = f->syn_retries;
	__builtin_memcpy(e.comm, f->comm, sizeof(e.comm));
	__builtin_memcpy(e.saddr, f->saddr, sizeof(e.saddr));
	__builtin_memcpy(e.daddr, f->daddr, sizeof(e.daddr));
	/* Bound after SYN_SENT; 0 if connect failed before sending anything. */
	e.sport = local_port(sk);
	bpf_map_delete_elem(&inflight, &key);

	if (cfg.wakeup_bytes && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg.wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&events, &e, sizeof(e), flags))
		count(C_LOST_RINGBUF);
	else
		count(C_EVENTS);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(inet_sock_set_state, const struct sock *sk, int oldstate, int newstate)
{
	if (newstate == TCP_SYN_SENT)
		return on_syn_sent(sk);
	if (newstate == TCP_ESTABLISHED || (newstate == TCP_CLOSE && (oldstate == TCP_SYN_SENT ||
									 oldstate == TCP_SYN_RECV)))
		return on_outcome(sk, newstate);
	if (newstate == TCP_CLOSE) {
		/* Still tracked after the handshake: its outcome was skipped (see above). */
		u64 key = (u64)sk;

		if (!bpf_map_delete_elem(&inflight, &key))
			count(C_LOST_SKIPPED);
	}
	return 0;
}

/*
 * The errno of the ICMP error just queued on the socket's error queue, or 0.
 * ip_icmp_error() queues it and reports it before tcp_v4_err() stores it in
 * sk_err_soft, so at report time the queue is the only place that has it.
 */
static __always_inline int queued_icmp_errno(const struct sock *sk)
{
	const void *head = __builtin_preserve_access_index(&sk->sk_error_queue);
	struct sk_buff *skb = BPF_CORE_READ(sk, sk_error_queue.prev);
	struct sock_extended_err ee = {};
	u32 off;

	if (!skb || (const void *)skb == head)
		return 0;
	off = bpf_core_field_offset(struct sk_buff, cb) +
	      bpf_core_field_offset(struct sock_exterr_skb, ee);
	if (bpf_probe_read_kernel(&ee, sizeof(ee), (const void *)skb + off))
		return 0;
	if (ee.ee_origin != SO_EE_ORIGIN_ICMP && ee.ee_origin != SO_EE_ORIGIN_ICMP6)
		return 0;
	return ee.ee_errno;
}

/*
 * An ICMP error that arrives while the connecting process holds the socket
 * lock (a fast local path: the ICMP comes back inside connect()) does not
 * close the socket: it is queued, reported (waking the caller's poll) and
 * kept as a soft error that getsockopt(SO_ERROR) reads and clears. By the time
 * the caller closes the socket nothing on it says why, so remember it here.
 */
SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(inet_sk_error_report, const struct sock *sk)
{
	u64 key = (u64)sk;
	struct inflight *f = bpf_map_lookup_elem(&inflight, &key);
	int err;

	if (!f)
		return 0;
	err = BPF_CORE_READ(sk, sk_err);
	if (!err)
		err = queued_icmp_errno(sk);
	if (!err)
		err = BPF_CORE_READ(sk, sk_err_soft);
	if (err)
		f->err = err;
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit_skb, const struct sock *sk, const struct sk_buff *skb)
{
	u64 key = (u64)sk;
	struct inflight *f;

	if (BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_SYN_SENT)
		return 0;
	f = bpf_map_lookup_elem(&inflight, &key);
	if (!f)
		return 0;
	if (f->syn_retries < 255)
		f->syn_retries++;
	if (!f->err)
		f->err = BPF_CORE_READ(sk, sk_err_soft);
	f->sport = local_port(sk);
	return 0;
}
