// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * tcplife: one record per TCP connection, both sides, IPv4 and IPv6, built on
 * a tracepoint and BPF iterators only (no kprobes, no fentry).
 *
 *   tp_btf/inet_sock_set_state  CLOSE -> SYN_SENT        remember the connecting
 *                                                        process (pid, comm, cgroup)
 *                               SYN_SENT -> ESTABLISHED  start, role client
 *                               SYN_RECV -> ESTABLISHED  start, role server
 *                               any -> CLOSE             one record: bytes_acked,
 *                                                        bytes_received, segments,
 *                                                        retransmits, srtt, read
 *                                                        from the tcp_sock (BTF)
 *                               SYN_SENT -> CLOSE        with cfg.failed_connects: one
 *                                                        record flagged FAILED, with the
 *                                                        socket error (refused, timeout,
 *                                                        unreachable: user space names it)
 *                               anything else            nothing: returns before it
 *                                                        reads the socket
 *   tp_btf/inet_sk_error_report while SYN_SENT (with cfg.failed_connects): keep an ICMP
 *                               error that the connecting process may consume with
 *                               SO_ERROR before it closes the socket
 *   iter/bpf_map_elem           every connection still open: the same record,
 *                               flagged OPEN, read from each socket in `states`
 *                               through bpf_rdonly_cast (user space reads it
 *                               periodically; one read covers every network namespace)
 *   iter/tcp                    at start, per network namespace: connections
 *                               that were open before podsight started get their
 *                               state too (role from the listening sockets)
 *
 * What is remembered per socket lives in `states`, a preallocated hash keyed by the
 * socket's address, from SYN_SENT (or ESTABLISHED) until the close deletes it. Socket-
 * local storage needed no size but cost ~425 ns per connection to create (an allocation
 * and its RCU free); an insert into a preallocated hash takes an element from a free
 * list. Its size is --max-open: a connection that does not fit is counted (lost_full).
 * The iterator reads each socket through its stored address: TCP sockets are
 * SLAB_TYPESAFE_BY_RCU and the reads are fault-safe (probe loads), and the socket's
 * cookie, stored at SYN_SENT or ESTABLISHED, tells whether the address still holds that
 * connection.
 *
 * Cost: the tracepoint fires about 8 times per connection (both sockets, every
 * transition), so the program decides from its arguments alone whether a
 * transition matters, reads the socket with direct BTF loads (no
 * bpf_probe_read_kernel calls), derives the FIN accounting at CLOSE from the
 * state it closes from (no runs at FIN_WAIT1 / CLOSE_WAIT / LAST_ACK / CLOSING),
 * and, with loopback_once, keeps no state at all for the server side of a loopback
 * connection (bench/graph.py --prog-stats measures it).
 *
 * Nothing is lost silently: a record that does not fit in the ring buffer and a
 * connection closed without known state are counted in `counters`.
 */
#include "../include/podsight_core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
/* Flavors (___life): matched to the kernel's types by name without the suffix, so that
 * the shared header stays as it is. */
struct tcp_sock___life {
	u64 bytes_acked;
	u64 bytes_received;
	u32 write_seq;
	u32 snd_una;
	u32 segs_in;
	u32 segs_out;
	u32 total_retrans;
	u32 srtt_us;
};
struct sock___life {
	u16 sk_protocol;
	struct sk_buff_head sk_receive_queue;
};
struct inet_sock___life {
	__be16 inet_sport;
};
struct tcp_skb_cb___life {
	u32 seq;
	u32 end_seq;
	u16 tcp_flags; /* u8 before 6.2; only its low byte is read (little-endian) */
};
struct seq_file;
struct bpf_iter_meta___life {
	struct seq_file *seq;
};
struct bpf_iter__tcp___life {
	struct bpf_iter_meta___life *meta;
	struct sock_common *sk_common;
};
struct bpf_iter__bpf_map_elem___life {
	struct bpf_iter_meta___life *meta;
	void *map;
	void *key;
	void *value;
};
/* skc_cookie is an atomic64_t: a struct with one s64 (only the kind is matched). */
struct sock_common___life {
	struct {
		s64 counter;
	} skc_cookie;
};
#pragma clang attribute pop

#define IPPROTO_TCP 6
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_TIME_WAIT 6
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_LISTEN 10
#define TCP_CLOSING 11
#define TCPHDR_FIN 0x01

enum role { ROLE_UNKNOWN = 0, ROLE_CLIENT = 1, ROLE_SERVER = 2 };

/* flags of struct conn */
#define F_OPEN 1         /* still open: read by the iterator, not closed */
#define F_START_SEEN 2   /* started while podsight ran (else: open before; start = seen at) */
#define F_FAILED 4       /* a connect that failed before it was established: start_ns is
			  * the attempt, `err` the socket error */

/* Counter slots (tcplife.py COUNTERS). */
enum counter {
	C_OPENED = 0,        /* connections established while tracing */
	C_CLOSED = 1,        /* records of closed connections written to the ring buffer */
	C_LOST_RINGBUF = 2,  /* records dropped: ring buffer full */
	C_LOST_FULL = 3,     /* connections (one side each) not followed: `states` was full */
	C_UNTRACKED = 4,     /* closed without stored state (open before, in a netns not seen) */
	C_SEEDED = 5,        /* connections open before start, found by iter/tcp */
	C_SNAPSHOT = 6,      /* open-connection records written by the iterator */
	C_LOOPBACK_SERVER = 7, /* loopback server sides not reported (cfg.loopback_once) */
	C_FAILED = 8,        /* failed connects written to the ring buffer (cfg.failed_connects) */
	C_AGGREGATED = 9,    /* closed connections added to `edges` (cfg.aggregate), no record */
	C_EDGES_FULL = 10,   /* closed connections sent as a record instead: `edges` was full */
	C_STALE = 11,        /* entries of sockets closed without a close seen (a skipped run),
			      * found and deleted by the iterator */
	C_TABLE_SEEN = 12,   /* entries of `states` the iterator walked (its fill, per read) */
	C_MAX = 13,
};

/* Per socket, from its first state change we see until it closes. */
struct state {
	u64 start_ns;  /* ESTABLISHED (CLOCK_BOOTTIME), or when first seen if open before */
	u64 cgroup_id; /* of the connecting process (client), 0 if not known */
	u64 cookie;    /* the socket's cookie, from SYN_SENT (a client) or ESTABLISHED: the
			* record's, and what tells the iterator that the socket at this
			* address is still this one */
	u32 pid;
	u32 netns;
	u8 role;
	u8 established;
	u8 flags;
	u8 syn_acked;  /* bytes_acked counts our SYN (client side): 1 */
	s32 err;       /* an ICMP error reported while connecting (cfg.failed_connects) */
	char comm[16];
	u64 mark;      /* M_REPORTED | M_CLOSING, set atomically: the iterator and the close
			* agree on which of them reports a connection read open as it closes */
};
_Static_assert(sizeof(struct state) == 64, "state layout changed: update STATE_DTYPE");
#define M_REPORTED 1
#define M_CLOSING 2

/* The record user space decodes in bulk (CONN_DTYPE), from the ring buffer and the
 * iterator alike. */
struct conn {
	u64 ts_ns;     /* when closed, or when read (open) */
	u64 start_ns;
	u64 cookie;    /* the socket's cookie: one connection across reads */
	u64 cgroup_id;
	u64 bytes_acked;    /* payload sent by this side and acknowledged by the peer */
	u64 bytes_received; /* payload received by this side */
	u8 saddr[16];
	u8 daddr[16];
	u32 pid;
	u32 netns;
	u32 segs_in;
	u32 segs_out;
	u32 total_retrans;
	union {
		u32 srtt_us; /* smoothed RTT in us << 3 */
		s32 err;     /* F_FAILED: the socket error (an errno), 0 if none was left */
	};
	u16 family;
	u16 sport;
	u16 dport;
	u8 role;
	u8 flags;
	char comm[16];
};
_Static_assert(sizeof(struct conn) == 128, "conn layout changed: update CONN_DTYPE");

#define N_BOUNDS 14 /* podsight_tcp_connection_duration_seconds' buckets, less +Inf */

const volatile struct {
	u32 wakeup_bytes; /* force a wakeup when this much is waiting */
	u8 filter_netns;
	u8 loopback_once; /* report a loopback connection from its client side only */
	u8 failed_connects; /* also report connects that failed (SYN_SENT -> CLOSE) */
	u8 aggregate; /* add closed connections to `edges` instead of writing records */
	u64 persistent_ns; /* cfg.aggregate: open longer than this is persistent */
	u64 bounds_ns[N_BOUNDS]; /* cfg.aggregate: histogram bucket bounds (le), ns */
} cfg = {};

/*
 * cfg.aggregate (podsight serve): closed connections summed per edge, keyed by what
 * names both ends in user space (as graph.py's _KEY: never the ephemeral port), so that
 * a connect storm costs a hash update per connection instead of a ring record, a wakeup
 * and Python work. Per CPU: no atomics, no lock; user space sums the CPUs and takes the
 * difference from its previous read.
 */
struct edge_key {
	u64 cgroup_id;
	u8 saddr[16];
	u8 daddr[16];
	u32 netns;
	u16 family;
	u16 port; /* the server's: dport of a client, sport of a server */
	u8 role;
	u8 _pad[7];
};
_Static_assert(sizeof(struct edge_key) == 56, "edge_key layout changed: update EDGE_KEY");

struct edge_val {
	u64 closed;
	u64 persistent;
	u64 bytes_acked;
	u64 bytes_received;
	u64 duration_ns;
	u64 duration_max_ns;
	u64 first_ns; /* the first and last close (CLOCK_BOOTTIME) */
	u64 last_ns;
	u64 buckets[N_BOUNDS + 1]; /* the last one: +Inf */
	u32 pid; /* of the last connection: what user space names the edge with */
	u32 _pad;
	char comm[16];
};
_Static_assert(sizeof(struct edge_val) == 208, "edge_val layout changed: update EDGE_VAL");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* resized from user space (edge_entries) */
	__type(key, struct edge_key);
	__type(value, struct edge_val);
} edges SEC(".maps");

/* A new edge's first value (bss: zero). */
struct edge_val zero_edge = {};

/* Keyed by the socket's address. Preallocated: an insert takes an element from a free
 * list (no allocation per connection); full, it fails and the connection is counted. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072); /* resized from user space (--max-open) */
	__type(key, u64);
	__type(value, struct state);
} states SEC(".maps");

/* Sockets whose insert into `states` failed (full), so that their close is not counted a
 * second time as untracked. Touched only when `states` is full or a close finds no state
 * for a socket that is not a loopback server side. An LRU: an eviction here can only make
 * such a close count twice (lost_full and untracked), never hide one. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64);
	__type(value, u8);
} unstored SEC(".maps");

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

/* netns inodes to trace, when cfg.filter_netns is set; key 0 means "every netns". */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, u8);
} netns_filter SEC(".maps");

/* Listening ports of one network namespace, filled by iter/tcp (listeners come before
 * established sockets in its walk) to tell the server side of connections open before. */
struct listener {
	u32 netns;
	u16 port;
	u16 _pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct listener);
	__type(value, u8);
} listeners SEC(".maps");

static __always_inline void count(u32 slot)
{
	u64 *v = bpf_map_lookup_elem(&counters, &slot);

	if (v)
		*v += 1;
}

static __always_inline int wanted(u32 netns)
{
	u32 any = 0;

	return !cfg.filter_netns || bpf_map_lookup_elem(&netns_filter, &netns) ||
	       bpf_map_lookup_elem(&netns_filter, &any);
}

/* Direct loads through BTF (tp_btf and iterator arguments are typed pointers): no
 * helper call per field, and the compiler drops what a branch does not use. */
static __always_inline u32 netns_of(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

/* Did our FIN go out, and the peer's come in? Told by the state a socket is in (or
 * closes from): every way to CLOSE passes through these states, and tcp_send_fin
 * advances write_seq by one, so our FIN is write_seq - 1. */
static __always_inline int fin_sent_in(int state)
{
	return state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 || state == TCP_LAST_ACK ||
	       state == TCP_CLOSING;
}

static __always_inline int peer_fin_in(int state)
{
	return state == TCP_CLOSE_WAIT || state == TCP_LAST_ACK || state == TCP_CLOSING;
}

/*
 * Did the peer's FIN reach this socket although no state change said so? A FIN that
 * arrives in FIN_WAIT2 moves the socket straight to CLOSE (a timewait socket takes
 * over); it is then the last segment queued for reading, with its flag in the cb.
 */
static __always_inline int fin_queued(const struct sock *sk)
{
	const struct sock___life *s = (const void *)sk;
	const void *head = __builtin_preserve_access_index(&s->sk_receive_queue);
	struct sk_buff *skb = BPF_CORE_READ(s, sk_receive_queue.prev);
	u8 flags = 0;
	u32 off;

	if (!skb || (const void *)skb == head)
		return 0;
	off = bpf_core_field_offset(struct sk_buff, cb) +
	      bpf_core_field_offset(struct tcp_skb_cb___life, tcp_flags);
	if (bpf_probe_read_kernel(&flags, sizeof(flags), (const void *)skb + off))
		return 0;
	return flags & TCPHDR_FIN;
}

static __always_inline int loopback_addr(u16 family, const u8 *daddr)
{
	if (family == AF_INET)
		return daddr[0] == 127;
	/* ::1 or ::ffff:127.x.y.z */
	if (daddr[15] == 1 && !daddr[0] && !daddr[10] && !daddr[12])
		return 1;
	return daddr[10] == 0xff && daddr[11] == 0xff && daddr[12] == 127;
}

/* A loopback connection's server side, which --loopback-once leaves out: its client
 * side, on this host too, reports the same connection. */
static __always_inline int loopback_server(const struct conn *c)
{
	return cfg.loopback_once && c->role == ROLE_SERVER && loopback_addr(c->family, c->daddr);
}

/* Is this socket's peer on loopback (read from the socket)? */
static __always_inline int loopback_peer(const struct sock *sk)
{
	u16 family = sk->__sk_common.skc_family;
	struct in6_addr a6;
	u32 a4;

	if (family == AF_INET) {
		a4 = sk->__sk_common.skc_daddr;
		return loopback_addr(family, (const u8 *)&a4);
	}
	a6 = sk->__sk_common.skc_v6_daddr;
	return loopback_addr(family, (const u8 *)&a6);
}

/* The record for one socket and its state, read now; `state` is the TCP state it is in
 * (or closes from), `peer_fin` whether the peer's FIN came in. `tp` is the socket as a
 * tcp_sock (NULL if it is not a full one); the iterator passes an untrusted `sk` and `tp`
 * (bpf_rdonly_cast: every load is fault-safe), the tracepoint its own. */
static __always_inline void fill(struct conn *c, const struct sock *sk,
				 const struct tcp_sock___life *tp, const struct state *s,
				 int state, int peer_fin)
{
	u16 family = sk->__sk_common.skc_family;

	c->start_ns = s->start_ns;
	c->cgroup_id = s->cgroup_id;
	c->pid = s->pid;
	c->netns = s->netns;
	c->role = s->role;
	c->flags = s->flags & F_START_SEEN;
	__builtin_memcpy(c->comm, s->comm, sizeof(c->comm));
	c->family = family;
	if (family == AF_INET) {
		*(u32 *)c->saddr = sk->__sk_common.skc_rcv_saddr;
		*(u32 *)c->daddr = sk->__sk_common.skc_daddr;
	} else {
		*(struct in6_addr *)c->saddr = sk->__sk_common.skc_v6_rcv_saddr;
		*(struct in6_addr *)c->daddr = sk->__sk_common.skc_v6_daddr;
	}
	c->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (!tp)
		return; /* not a full TCP socket: nothing more to read */
	/* inet_sport lies past struct sock: read through the tcp_sock (it contains it). */
	c->sport = bpf_ntohs(((const struct inet_sock___life *)tp)->inet_sport);
	/* The kernel's counters advance with sequence numbers, and SYN and FIN take one
	 * each: take them out so that the record says payload bytes. Our FIN counts once
	 * it is acknowledged (snd_una went past it). */
	c->bytes_acked = tp->bytes_acked - s->syn_acked;
	if (fin_sent_in(state) && (s32)(tp->snd_una - (tp->write_seq - 1)) > 0)
		c->bytes_acked -= 1;
	c->bytes_received = tp->bytes_received;
	if (peer_fin && c->bytes_received)
		c->bytes_received -= 1;
	c->segs_in = tp->segs_in;
	c->segs_out = tp->segs_out;
	c->total_retrans = tp->total_retrans;
	c->srtt_us = tp->srtt_us;
}

/* Write a record to the ring buffer, waking user space only once enough is waiting;
 * 1 if written, else counted as lost. */
static __always_inline int emit(struct conn *c)
{
	u64 flags = BPF_RB_NO_WAKEUP;

	if (cfg.wakeup_bytes && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg.wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&events, c, sizeof(*c), flags)) {
		count(C_LOST_RINGBUF);
		return 0;
	}
	return 1;
}

/* Add a closed connection to its edge; 0 if `edges` is full (the caller writes a record
 * instead, and C_EDGES_FULL says how often). */
static __always_inline int aggregate(const struct conn *c)
{
	struct edge_key k = {};
	struct edge_val *v;
	u64 dur = c->ts_ns > c->start_ns ? c->ts_ns - c->start_ns : 0;
	u32 i;

	k.cgroup_id = c->cgroup_id;
	__builtin_memcpy(k.saddr, c->saddr, sizeof(k.saddr));
	__builtin_memcpy(k.daddr, c->daddr, sizeof(k.daddr));
	k.netns = c->netns;
	k.family = c->family;
	k.role = c->role;
	k.port = c->role == ROLE_SERVER ? c->sport : c->dport;
	v = bpf_map_lookup_elem(&edges, &k);
	if (!v) {
		/* -EEXIST: another CPU added it meanwhile, fine */
		bpf_map_update_elem(&edges, &k, &zero_edge, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&edges, &k);
		if (!v) {
			count(C_EDGES_FULL);
			return 0;
		}
	}
	v->closed += 1;
	if (dur > cfg.persistent_ns)
		v->persistent += 1;
	v->bytes_acked += c->bytes_acked;
	v->bytes_received += c->bytes_received;
	v->duration_ns += dur;
	if (dur > v->duration_max_ns)
		v->duration_max_ns = dur;
	if (!v->first_ns)
		v->first_ns = c->ts_ns;
	v->last_ns = c->ts_ns;
	for (i = 0; i < N_BOUNDS; i++)
		if (dur <= cfg.bounds_ns[i])
			break;
	v->buckets[i & 15] += 1; /* i <= N_BOUNDS; the mask is for the verifier */
	v->pid = c->pid;
	__builtin_memcpy(v->comm, c->comm, sizeof(v->comm));
	count(C_AGGREGATED);
	return 1;
}

/* Remember that a socket's state did not fit in `states` (see `unstored`). */
static __always_inline void unstored_mark(u64 key)
{
	u8 one = 1;

	bpf_map_update_elem(&unstored, &key, &one, BPF_ANY);
}

/* Was this socket's state refused for want of room? Forgets it. */
static __always_inline int unstored_take(u64 key)
{
	if (!bpf_map_lookup_elem(&unstored, &key))
		return 0;
	bpf_map_delete_elem(&unstored, &key);
	return 1;
}

static __always_inline int on_connect(struct sock *sk)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 key = (u64)sk;
	u32 netns = netns_of(sk);
	struct state s = {};

	if (!wanted(netns))
		return 0;
	/* A whole new state (a socket connecting again starts from a clean one), written
	 * with one insert. */
	s.pid = pid_tgid >> 32;
	s.netns = netns;
	s.cgroup_id = bpf_get_current_cgroup_id();
	s.role = ROLE_CLIENT;
	s.start_ns = cfg.failed_connects ? bpf_ktime_get_boot_ns() : 0; /* the attempt;
									 * ESTABLISHED overwrites it */
	bpf_get_current_comm(s.comm, sizeof(s.comm));
	s.cookie = bpf_get_socket_cookie(sk);
	/* Full: not counted yet; ESTABLISHED tries again and counts (a failed connect is
	 * counted at its close). */
	if (bpf_map_update_elem(&states, &key, &s, BPF_ANY))
		unstored_mark(key);
	return 0;
}

/* A connect that failed (SYN_SENT -> CLOSE), as a record flagged F_FAILED. */
static __always_inline void failed_connect(struct sock *sk, const struct state *s)
{
	struct conn c = {};
	int err = sk->sk_err;

	/* The caller may have consumed the error with SO_ERROR before closing. */
	if (!err)
		err = sk->sk_err_soft;
	if (!err)
		err = s->err;
	c.ts_ns = bpf_ktime_get_boot_ns();
	c.cookie = bpf_get_socket_cookie(sk);
	fill(&c, sk, (const void *)bpf_skc_to_tcp_sock(sk), s, TCP_SYN_SENT, 0);
	c.flags |= F_FAILED | F_START_SEEN;
	c.err = err;
	if (emit(&c))
		count(C_FAILED);
}

static __always_inline int on_established(struct sock *sk, int oldstate)
{
	u64 key = (u64)sk;
	u32 netns = netns_of(sk);
	struct state *s = NULL, init = {};

	if (!wanted(netns))
		return 0;
	/* The server side of a loopback connection, left out with loopback_once: no state
	 * (on_close counts it), which spares an insert and a delete per connection. */
	if (oldstate == TCP_SYN_RECV && cfg.loopback_once && loopback_peer(sk))
		return 0;
	/* A client's state comes from SYN_SENT (the connecting process); a server side's is
	 * new (an entry its address may have kept from a socket closed unseen is replaced). */
	if (oldstate == TCP_SYN_SENT)
		s = bpf_map_lookup_elem(&states, &key);
	if (!s) {
		init.netns = netns;
		if (bpf_map_update_elem(&states, &key, &init, oldstate == TCP_SYN_SENT ?
					BPF_NOEXIST : BPF_ANY) == 0)
			s = bpf_map_lookup_elem(&states, &key);
		if (!s) {
			count(C_LOST_FULL);
			unstored_mark(key);
			return 0;
		}
		if (oldstate == TCP_SYN_SENT)
			unstored_take(key); /* SYN_SENT's insert failed, this one did not */
	}
	s->netns = netns;
	s->role = oldstate == TCP_SYN_SENT ? ROLE_CLIENT : ROLE_SERVER;
	s->syn_acked = s->role == ROLE_CLIENT;
	s->start_ns = bpf_ktime_get_boot_ns();
	if (!s->cookie)
		s->cookie = bpf_get_socket_cookie(sk); /* a client's is from SYN_SENT */
	s->established = 1;
	s->flags = F_START_SEEN;
	s->mark = 0; /* nothing has read this connection yet */
	count(C_OPENED);
	return 0;
}

static __always_inline int on_close(struct sock *sk, int oldstate)
{
	u64 key = (u64)sk;
	struct state *s;
	struct conn c = {};
	u8 reported;

	/* A SYN_RECV child that never completed, or a listener: nothing to report. */
	if (oldstate == TCP_SYN_RECV || oldstate == TCP_LISTEN || oldstate == TCP_CLOSE)
		return 0;
	s = bpf_map_lookup_elem(&states, &key);
	if (!s) {
		/* Never established (a failed connect before podsight, or whose state did not
		 * fit), a loopback server side left out (on_established), not stored (full:
		 * counted when refused), or never seen. */
		if (oldstate == TCP_SYN_SENT) {
			/* Taken either way: a mark left behind could excuse a later socket at
			 * this address. */
			if (unstored_take(key) && cfg.failed_connects)
				count(C_LOST_FULL); /* its failure cannot be reported */
			return 0;
		}
		if (!wanted(netns_of(sk)))
			return 0;
		if (cfg.loopback_once && loopback_peer(sk))
			count(C_LOOPBACK_SERVER);
		else if (!unstored_take(key))
			count(C_UNTRACKED);
		return 0;
	}
	if (!s->established) {
		/* A connect that failed, or a connection this socket made that was not
		 * followed (its ESTABLISHED run was skipped). */
		if (oldstate == TCP_SYN_SENT) {
			if (cfg.failed_connects)
				failed_connect(sk, s);
		} else if (wanted(netns_of(sk))) {
			count(C_UNTRACKED);
		}
		bpf_map_delete_elem(&states, &key);
		return 0;
	}
	c.ts_ns = bpf_ktime_get_boot_ns();
	fill(&c, sk, (const void *)bpf_skc_to_tcp_sock(sk), s, oldstate,
	     peer_fin_in(oldstate) || fin_queued(sk));
	c.cookie = s->cookie;
	/* Ordered against the iterator (tcplife_open): whichever comes second sees the
	 * other's bit, so a connection is either followed by its cookie or summed. */
	reported = cfg.aggregate && (__sync_fetch_and_or(&s->mark, M_CLOSING) & M_REPORTED);
	/* Everything is read: the element goes back to the free list (and may serve another
	 * socket at once). */
	bpf_map_delete_elem(&states, &key);
	if (loopback_server(&c)) {
		count(C_LOOPBACK_SERVER);
		return 0;
	}
	/* One read open goes out as a record: user space follows it by its cookie. */
	if (cfg.aggregate && !reported && aggregate(&c))
		return 0;
	if (emit(&c))
		count(C_CLOSED);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcplife_state, struct sock *sk, int oldstate, int newstate)
{
	/* Decided from the arguments alone: most transitions need nothing. */
	if (newstate != TCP_CLOSE && newstate != TCP_SYN_SENT &&
	    !(newstate == TCP_ESTABLISHED && (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV)))
		return 0;
	if (((struct sock___life *)sk)->sk_protocol != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_CLOSE)
		return on_close(sk, oldstate);
	if (newstate == TCP_SYN_SENT)
		return on_connect(sk);
	return on_established(sk, oldstate);
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
 * An ICMP error that arrives while the connecting process holds the socket lock (the
 * ICMP comes back inside connect()) does not close the socket: it is queued and kept
 * as a soft error that getsockopt(SO_ERROR) reads and clears. By the time the caller
 * closes the socket nothing on it says why, so remember it here. Attached only with
 * cfg.failed_connects.
 */
SEC("tp_btf/inet_sk_error_report")
int BPF_PROG(tcplife_error, struct sock *sk)
{
	struct state *s;
	int err;
	u64 key = (u64)sk;

	if (sk->__sk_common.skc_state != TCP_SYN_SENT)
		return 0;
	s = bpf_map_lookup_elem(&states, &key);
	if (!s)
		return 0;
	err = sk->sk_err;
	if (!err)
		err = queued_icmp_errno(sk);
	if (!err)
		err = sk->sk_err_soft;
	if (err)
		s->err = err;
	return 0;
}

/*
 * Every connection still open, as a record flagged F_OPEN: each entry of `states`, its
 * socket read through the address it is keyed by. The socket may have gone since it was
 * stored (closed while its close run was skipped): bpf_rdonly_cast makes every load
 * fault-safe, TCP sockets' memory is SLAB_TYPESAFE_BY_RCU (a freed one is reused for
 * another TCP socket), and the cookie read from the socket must be the one stored at
 * ESTABLISHED, else the entry is stale: counted and deleted.
 */
SEC("iter/bpf_map_elem")
int tcplife_open(struct bpf_iter__bpf_map_elem___life *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	const struct tcp_sock___life *tp;
	const struct sock *sk;
	struct state *s;
	struct conn c = {};
	const u64 *kp;
	u64 key, cookie;
	u8 state;

	kp = ctx->key;
	/* Kept in its register: a second load of ctx->key would be unchecked again. */
	asm volatile("" : "+r"(kp));
	if (!kp)
		return 0;
	key = *kp;
	count(C_TABLE_SEEN);
	/* A map-value pointer, for the atomic (the iterator's value is a buffer). */
	s = bpf_map_lookup_elem(&states, &key);
	if (!s)
		return 0;
	tp = bpf_rdonly_cast((void *)key, bpf_core_type_id_kernel(struct tcp_sock));
	sk = (const void *)tp;
	cookie = ((const struct sock_common___life *)sk)->skc_cookie.counter;
	if (!s->established) {
		/* Connecting: skipped, unless another socket is at this address now (this one
		 * went while its close run was skipped). */
		if (s->cookie && cookie != s->cookie && bpf_map_delete_elem(&states, &key) == 0)
			count(C_STALE);
		return 0;
	}
	state = sk->__sk_common.skc_state;
	if (cookie != s->cookie || state == TCP_CLOSE) {
		/* Another socket at this address now, or this one closed with its close run
		 * skipped (the close itself deletes the entry before the state changes). */
		if (bpf_map_delete_elem(&states, &key) == 0)
			count(C_STALE);
		return 0;
	}
	c.ts_ns = bpf_ktime_get_boot_ns();
	c.cookie = cookie;
	fill(&c, sk, tp, s, state, peer_fin_in(state));
	c.flags |= F_OPEN;
	if (loopback_server(&c))
		return 0;
	if (cfg.aggregate && (__sync_fetch_and_or(&s->mark, M_REPORTED) & M_CLOSING))
		return 0; /* closing now: its close sums it */
	/* The element may have been deleted and taken by another socket meanwhile (a
	 * preallocated hash reuses elements at once): then it is not this connection. */
	if (s->cookie != cookie)
		return 0;
	bpf_seq_write(seq, &c, sizeof(c));
	count(C_SNAPSHOT);
	return 0;
}

/*
 * Run once per network namespace at start: remember its listening ports, and give
 * state to its connections that were open before podsight (their start is "seen at").
 */
SEC("iter/tcp")
int tcplife_seed(struct bpf_iter__tcp___life *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct listener l = {};
	struct tcp_sock *tp;
	struct sock *sk;
	struct state *s, init = {};
	u8 one = 1, state;
	u32 netns;
	u64 key;

	if (!skc)
		return 0;
	state = BPF_CORE_READ(skc, skc_state);
	netns = BPF_CORE_READ(skc, skc_net.net, ns.inum);
	if (state == TCP_LISTEN) {
		l.netns = netns;
		l.port = BPF_CORE_READ(skc, skc_num);
		bpf_map_update_elem(&listeners, &l, &one, BPF_ANY);
		return 0;
	}
	if (state != TCP_ESTABLISHED && state != TCP_FIN_WAIT1 && state != TCP_FIN_WAIT2 &&
	    state != TCP_CLOSE_WAIT && state != TCP_LAST_ACK && state != TCP_CLOSING)
		return 0;
	if (!wanted(netns))
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	sk = (struct sock *)tp;
	key = (u64)sk;
	s = bpf_map_lookup_elem(&states, &key);
	if (s && s->established)
		return 0; /* seen by the tracepoint already */
	l.netns = netns;
	l.port = BPF_CORE_READ(skc, skc_num);
	init.role = bpf_map_lookup_elem(&listeners, &l) ? ROLE_SERVER : ROLE_CLIENT;
	init.syn_acked = init.role == ROLE_CLIENT;
	/* FINs already exchanged are told at close from the state (fin_sent_in). */
	init.netns = netns;
	init.start_ns = bpf_ktime_get_boot_ns();
	init.cookie = bpf_get_socket_cookie(sk);
	init.established = 1;
	if (bpf_map_update_elem(&states, &key, &init, BPF_ANY)) {
		count(C_LOST_FULL);
		unstored_mark(key);
		return 0;
	}
	count(C_SEEDED);
	return 0;
}
