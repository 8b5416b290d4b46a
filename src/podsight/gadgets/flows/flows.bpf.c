// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * flows: per-flow byte, packet and TCP-flag counts aggregated in the kernel,
 * with optional RTT, drops (with the kernel's reason) and DNS latency.
 *
 *   tc clsact ingress/egress   every packet on the chosen interfaces adds to
 *                              its (5-tuple, direction, interface) entry
 *   tp_btf/tcp_probe (--rtt)   smoothed RTT per socket, min/max/last
 *   tp_btf/kfree_skb (--drops) dropped packets per 5-tuple with the reason
 *   DNS (--dns)                parsed in the tc program: query -> response
 *                              latency, sent as one ring record per answer
 *
 * Exact eviction. Every table exists twice (generation 0 and 1), reached
 * through an ARRAY_OF_MAPS. User space advances `state.epoch` (its low bit
 * is the generation), then waits for every program that might still hold
 * the old table (a map-in-map update waits an RCU grace period), and only
 * then reads and clears the old table: no packet is counted into an entry
 * that is being read and deleted.
 *
 * The per-CPU flow cache. Most packets belong to a flow that sent one a
 * moment ago on the same CPU, so the tc programs count them first in a
 * small direct-mapped cache per CPU and generation (`flow_cache`): a slot
 * holds one flow's key and counts, and a packet of that flow adds to them
 * with plain stores, no hash, no helper call, no atomic. Only when another
 * flow takes the slot are its counts added to the shared hash table. User
 * space reads the old generation's slots with its table (a slot belongs to
 * the interval whose epoch it carries; older ones are empty), so counts
 * stay exact across the swap.
 *
 * Nothing is lost silently. Counts that do not fit in the table (a packet,
 * or a cache slot's worth) go through the `events` ring as a record; only
 * what fits in neither is lost, and it is counted in `counters` like every
 * other loss.
 */
#include "../include/podsight_core.h"
#include "../include/podsight_net.h"
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TC_ACT_UNSPEC (-1)
#define ENOENT 2
#define EEXIST 17
#define MAX_RULES 8
#define DNS_QNAME_MAX 128
#define DIR_INGRESS 0
#define DIR_EGRESS 1
#define DIR_UNKNOWN 0xff

/*
 * Counter slots (flows.py COUNTERS, same order). Every path that gives up on
 * a packet, a sample or an answer adds to one of the C_LOST_* slots (or
 * C_UNPARSED, C_DNS_UNREADABLE); the summary names each of them.
 */
enum counter {
	C_PACKETS = 0,      /* packets (segments) accounted */
	C_FLOWS = 1,        /* flows taken into a CPU's cache slot (per CPU and interval) */
	C_OVERFLOW = 2,     /* packets sent through the ring: flow table full */
	C_LOST_FLOW = 3,    /* packets lost: flow table and ring both full */
	C_DNS = 4,          /* DNS responses matched to their query */
	C_LOST_DNS = 5,     /* DNS answers matched but not delivered: ring full */
	C_LOST_RTT = 6,     /* RTT samples not recorded: RTT table full */
	C_DROPS = 7,        /* dropped packets attributed to a flow */
	C_LOST_DROPS = 8,   /* dropped packets not recorded: drop table full */
	C_UNPARSED = 9,     /* IP packets not counted: headers unreadable or malformed */
	C_LOST_DNS_QUERY = 10, /* DNS queries not remembered: query table full */
	C_DNS_UNREADABLE = 11, /* port-53 messages too short for a DNS header */
	C_TLS = 12,         /* TLS ClientHello/ServerHello segments copied to tls_events */
	C_LOST_TLS = 13,    /* TLS hellos not delivered: tls_events full */
	C_MAX = 14,
};

/* Addresses are 16 bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d) so one
 * LPM trie serves both families. Keep in sync with KEY_DTYPE. */
struct flow_key {
	u8 saddr[16];
	u8 daddr[16];
	u16 sport;
	u16 dport;
	u32 ifindex;
	u8 proto;
	u8 family; /* 4 or 6 */
	u8 direction;
	u8 _pad;
};
_Static_assert(sizeof(struct flow_key) == 44, "flow_key layout changed: update KEY_DTYPE");

/* TCP flag bits, as netobserv reports them: the 8 header bits plus three
 * combinations, so that a SYN-ACK is told from a SYN at a glance. */
#define F_SYN 0x02
#define F_FIN 0x01
#define F_RST 0x04
#define F_ACK 0x10
#define F_SYN_ACK 0x100
#define F_FIN_ACK 0x200
#define F_RST_ACK 0x400

struct flow_stats {
	u64 first_ns;
	u64 last_ns;
	u64 bytes;
	u64 packets;
	u32 tcp_flags;
	u8 dscp;
	u8 icmp_type;
	u8 icmp_code;
	u8 _pad;
};
_Static_assert(sizeof(struct flow_stats) == 40, "flow_stats layout changed: update STATS_DTYPE");

struct rtt_stats {
	u32 min_us;
	u32 max_us;
	u32 last_us;
	u32 samples;
	u64 sum_us;
};

struct drop_stats {
	u64 bytes;
	u64 packets;
	u64 last_ns;
	u32 reason; /* the latest enum skb_drop_reason */
	u32 netns;
	u32 ifindex;
	u32 _pad;
};

struct dns_key {
	u8 client[16];
	u8 server[16];
	u16 cport;
	u16 id;
	u8 proto;
	u8 _pad[3];
};

enum event_kind {
	EV_FLOW = 1, /* counts of a flow that did not fit in the table */
	EV_DNS = 2,  /* a DNS response matched to its query */
};

/* The one ring record (kinds share it so one ring and one epoll serve all).
 * Keep in sync with EVENT_DTYPE. */
struct event {
	u32 kind;
	u32 _pad0;
	u64 ts_ns;
	struct flow_key key;
	u32 _pad1;
	struct flow_stats stats;
	u64 latency_ns;
	u16 dns_id;
	u16 dns_flags;
	u16 qname_len;
	u16 _pad2;
	u8 qname[DNS_QNAME_MAX];
};
_Static_assert(sizeof(struct event) == 248, "event layout changed: update EVENT_DTYPE");

/* A filter rule (one per `or`-joined group of flags); a zero field means any. */
struct rule {
	u16 port_lo, port_hi;   /* either port in range */
	u16 sport_lo, sport_hi;
	u16 dport_lo, dport_hi;
	u16 tcp_flags;          /* the packet carries all of these */
	u8 direction;           /* 0 any, 1 ingress, 2 egress */
	u8 protocol;
	u8 has_cidr;            /* --cidr: an end in cidr_rules */
	u8 has_peer;            /* --peer-ip/--peer-cidr: the other end in peer_rules */
	u8 has_icmp_type;
	u8 icmp_type;
	u8 has_icmp_code;
	u8 icmp_code;
	u16 _pad;
};
_Static_assert(sizeof(struct rule) == 24, "rule layout changed: update RULE_DTYPE");

/* Set by user space before load; the verifier prunes the unused branches. The only
 * read-only global: user space replaces .rodata whole, and checks the size. */
const volatile struct {
	u32 nrules;
	u32 wakeup_bytes; /* force a ring wakeup when this much is waiting */
	u8 any_cidr;
	u8 any_peer;
	u8 rtt;
	u8 drops;
	u8 dns;
	u8 cache_bits; /* the flow cache has 1 << cache_bits slots per CPU and generation */
	/* SKB_DROP_REASON_QUEUE_PURGE on this kernel (from BTF, by user space):
	 * an empty skb (a FIN) purged from a closed socket's queue lost no
	 * data, and would make every TCP close look like a drop. */
	u16 purge_reason;
	u8 tls;        /* copy TLS ClientHello/ServerHello segments to tls_events */
	u8 _pad[3];
	struct rule rules[MAX_RULES];
} cfg = {};

struct lpm_key {
	u32 prefixlen;
	u8 addr[16];
};

/* CIDR -> bitmask of the rules whose CIDR contains it (user space folds wider
 * prefixes into narrower ones, so the longest match carries every rule). */
struct lpm_rules {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, u32);
};
struct lpm_rules cidr_rules SEC(".maps"), peer_rules SEC(".maps");

struct flow_table {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
};
struct flow_table flows_0 SEC(".maps"), flows_1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, u32);
	__array(values, struct flow_table);
} flow_tables SEC(".maps") = { .values = { &flows_0, &flows_1 } };

struct rtt_table {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct rtt_stats);
};
struct rtt_table rtt_0 SEC(".maps"), rtt_1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, u32);
	__array(values, struct rtt_table);
} rtt_tables SEC(".maps") = { .values = { &rtt_0, &rtt_1 } };

struct drop_table {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct drop_stats);
};
struct drop_table drops_0 SEC(".maps"), drops_1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, u32);
	__array(values, struct drop_table);
} drop_tables SEC(".maps") = { .values = { &drops_0, &drops_1 } };

/*
 * Written by user space. `epoch`: the interval programs write to, advanced
 * by each harvest; its low bit is the generation of the tables. The epoch
 * marks flow-cache slots, so a slot of an interval already harvested reads
 * as empty. `boot_offset_ns`: CLOCK_BOOTTIME - CLOCK_MONOTONIC, so that the
 * coarse monotonic clock reads as boot time (it changes only on resume).
 */
struct state {
	u32 epoch;
	u32 _pad;
	u64 boot_offset_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct state);
} state SEC(".maps");

/* One flow-cache slot: 48 bytes of key and epoch (six words, compared at
 * once), then the flow's counts on this CPU in that epoch. Keep in sync
 * with SLOT_DTYPE. */
struct flow_slot {
	struct flow_key key;
	u32 epoch;
	struct flow_stats stats;
};
_Static_assert(sizeof(struct flow_slot) == 88, "flow_slot layout changed: update SLOT_DTYPE");

/* Slot (generation << cache_bits) + hash; user space sizes it to 2 << cache_bits. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 << 8);
	__type(key, u32);
	__type(value, struct flow_slot);
} flow_cache SEC(".maps");

/* DNS queries waiting for their response: query time (CLOCK_BOOTTIME). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct dns_key);
	__type(value, u64);
} dns_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* The first bytes of a TCP segment that starts a TLS ClientHello or ServerHello (--tls):
 * user space parses SNI, versions, ALPN and the cipher suite from them. */
#define TLS_MAX 1024 /* at most TLS_MAX - 1 bytes are copied (see tls()) */
struct tls_event {
	u64 ts_ns;
	struct flow_key key;
	u16 len;
	u16 _pad;
	u8 data[TLS_MAX];
};
_Static_assert(sizeof(struct tls_event) == 1080, "tls_event changed: update TLS_DTYPE");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} tls_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, u32);
	__type(value, u64);
} counters SEC(".maps");

static __always_inline void count_n(u32 slot, u64 n)
{
	u64 *v = bpf_map_lookup_elem(&counters, &slot);

	if (v)
		*v += n;
}

static __always_inline void count(u32 slot)
{
	count_n(slot, 1);
}

static __always_inline struct state *get_state(void)
{
	u32 zero = 0;

	return bpf_map_lookup_elem(&state, &zero);
}

static __always_inline u32 current_gen(void)
{
	struct state *s = get_state();

	return s ? (s->epoch & 1) : 0;
}

/* A parsed packet: its flow key and what else the flow record keeps. The key
 * is also six words (the last 4 bytes zero: a slot's epoch goes there). */
struct pkt {
	union {
		struct flow_key key;
		u64 kw[6];
	};
	u32 flags;
	u32 payload_off; /* from the start of the frame; 0 if unknown */
	u8 dscp;
	u8 icmp_type;
	u8 icmp_code;
	u8 has_ports;
};

/* Four packet bytes in one load. Through a plain address: from a pointer into
 * a 2-aligned header struct, clang would split it into two 2-byte loads. */
static __always_inline u32 load32(const void *at)
{
	return *(const u32 *)(unsigned long)at;
}

/* The second half of an IPv4-mapped address, ::ffff:0.0.0.0, as a little-endian word. */
#define V4_MAPPED_LO 0xffff0000ull

static __always_inline void map_v4(u8 *dst, const u8 *src)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, src, 4);
}

/* IPv6 extension headers walked before the upper-layer header. */
#define MAX_IPV6_EXT 4
#define IPV6_HOPOPTS 0
#define IPV6_ROUTING 43
#define IPV6_FRAGMENT 44
#define IPV6_AH 51
#define IPV6_DSTOPTS 60
/* Every extension header is at least 8 bytes; its first 4 say all the walk needs. */
#define IPV6_EXT_MIN 8
#define IPV6_EXT_READ 4

static __always_inline bool ipv6_is_ext(u8 proto)
{
	return proto == IPV6_HOPOPTS || proto == IPV6_ROUTING || proto == IPV6_DSTOPTS ||
	       proto == IPV6_FRAGMENT || proto == IPV6_AH;
}

/* One step of the walk over the extension headers. */
struct ipv6_ext_step {
	u32 len;        /* bytes from this header to the next one */
	u8 next;        /* the next header's protocol number */
	bool later_frag; /* a fragment after the first: no upper-layer header follows */
};

/*
 * The one IPv6 extension-header walker, shared by the tc parser (direct
 * packet access) and the drop parser (probe reads of kernel memory): each
 * caller reads the first IPV6_EXT_READ bytes of the header of type `proto`
 * its own way and hands them here. The fragment header is 8 bytes with the
 * offset in bytes 2-3; AH counts its length in 4-byte words minus 2, every
 * other extension header in 8-byte words minus 1.
 */
static __always_inline struct ipv6_ext_step ipv6_ext_step(u8 proto, const u8 *ext)
{
	struct ipv6_ext_step s = { .next = ext[0] };

	if (proto == IPV6_FRAGMENT) {
		s.len = 8;
		s.later_frag = (((u16)ext[2] << 8 | ext[3]) & 0xfff8) != 0;
	} else if (proto == IPV6_AH) {
		s.len = ((u32)ext[1] + 2) * 4;
	} else {
		s.len = ((u32)ext[1] + 1) * 8;
	}
	return s;
}

static __always_inline u32 tcp_flags(u8 raw)
{
	u32 f = raw;

	if ((raw & (F_SYN | F_ACK)) == (F_SYN | F_ACK))
		f |= F_SYN_ACK;
	if ((raw & (F_FIN | F_ACK)) == (F_FIN | F_ACK))
		f |= F_FIN_ACK;
	if ((raw & (F_RST | F_ACK)) == (F_RST | F_ACK))
		f |= F_RST_ACK;
	return f;
}

#define PARSED 1
#define NOT_IP 0
#define NOT_LINEAR (-1) /* headers beyond the linear part: pull them in, try again */
#define MALFORMED (-2)  /* an IP header that cannot be right: counted, not retried */

/*
 * Parse Ethernet/IP/L4 with direct packet access: PARSED, NOT_IP (ARP, LLDP:
 * not a flow), NOT_LINEAR or MALFORMED. On PARSED every field of *p is set
 * (no zeroing first), the key as whole words: the tc programs run once per
 * wire packet, and what they build here is what the flow cache compares.
 * Only the interface and direction are left for the caller to add.
 */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct wire_eth *eth = data;
	u64 a0 = 0, a1, a2 = 0, a3;
	u32 flags = 0, payload_off = 0;
	u16 sport = 0, dport = 0;
	u8 proto, family, dscp, icmp_type = 0, icmp_code = 0, has_ports = 0;
	void *l4;

	if ((void *)(eth + 1) > end)
		return NOT_LINEAR;
	if (eth->proto == bpf_htons(ETH_P_IP)) {
		struct wire_ipv4 *ip = (void *)(eth + 1);
		u32 ihl;

		if ((void *)(ip + 1) > end)
			return NOT_LINEAR;
		ihl = (ip->ver_ihl & 0x0f) * 4;
		if (ihl < sizeof(*ip))
			return MALFORMED;
		/* ::ffff:a.b.c.d as two little-endian words: 0, then ffff0000 | addr << 32.
		 * One 4-byte load per address, aligned with NET_IP_ALIGN. */
		a1 = V4_MAPPED_LO | (u64)load32(ip->saddr) << 32;
		a3 = V4_MAPPED_LO | (u64)load32(ip->daddr) << 32;
		family = 4;
		dscp = ip->tos >> 2;
		proto = ip->protocol;
		l4 = (void *)ip + ihl;
		/* A later fragment carries no L4 header: count it under port 0. */
		if (ip->frag_off & bpf_htons(0x1fff))
			goto done;
	} else if (eth->proto == bpf_htons(ETH_P_IPV6)) {
		struct wire_ipv6 *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return NOT_LINEAR;
		/* saddr and daddr are 32 consecutive bytes: four 8-byte loads. */
		a0 = ((const u64 *)ip6->saddr)[0];
		a1 = ((const u64 *)ip6->saddr)[1];
		a2 = ((const u64 *)ip6->daddr)[0];
		a3 = ((const u64 *)ip6->daddr)[1];
		family = 6;
		dscp = (bpf_ntohl(ip6->ver_tc_flow) >> 22) & 0x3f;
		proto = ip6->nexthdr;
		l4 = ip6 + 1;
		/* Walk extension headers (MLD reports come behind hop-by-hop, for
		 * one) so the flow is keyed by the real upper-layer protocol. */
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT; i++) {
			struct ipv6_ext_step step;
			u8 *ext = l4;

			if (!ipv6_is_ext(proto))
				break;
			if ((void *)(ext + IPV6_EXT_MIN) > end)
				return NOT_LINEAR;
			step = ipv6_ext_step(proto, ext);
			proto = step.next;
			l4 = ext + step.len;
			if (step.later_frag) /* no L4 header: count it under port 0 */
				goto done;
		}
	} else {
		return NOT_IP;
	}

	if (proto == IPPROTO_TCP) {
		struct wire_tcp *tcp = l4;

		if ((void *)(tcp + 1) > end)
			return NOT_LINEAR;
		sport = bpf_ntohs(tcp->sport);
		dport = bpf_ntohs(tcp->dport);
		flags = tcp_flags(tcp->flags);
		payload_off = (u32)(l4 - data) + (tcp->doff_res >> 4) * 4;
		has_ports = 1;
	} else if (proto == IPPROTO_UDP) {
		struct wire_udp *udp = l4;

		if ((void *)(udp + 1) > end)
			return NOT_LINEAR;
		sport = bpf_ntohs(udp->sport);
		dport = bpf_ntohs(udp->dport);
		payload_off = (u32)(l4 - data) + sizeof(*udp);
		has_ports = 1;
	} else if (proto == IPPROTO_SCTP) {
		struct wire_ports *ports = l4;

		if ((void *)(ports + 1) > end)
			return NOT_LINEAR;
		sport = bpf_ntohs(ports->sport);
		dport = bpf_ntohs(ports->dport);
		has_ports = 1;
	} else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		struct wire_icmp *icmp = l4;

		if ((void *)(icmp + 1) > end)
			return NOT_LINEAR;
		icmp_type = icmp->type;
		icmp_code = icmp->code;
	}
done:
	/* struct flow_key as words: addresses; sport, dport, (ifindex); proto,
	 * family, (direction), and zeroes where a cache slot keeps its epoch. */
	p->kw[0] = a0;
	p->kw[1] = a1;
	p->kw[2] = a2;
	p->kw[3] = a3;
	p->kw[4] = (u64)sport | (u64)dport << 16;
	p->kw[5] = (u64)proto | (u64)family << 8;
	p->flags = flags;
	p->payload_off = payload_off;
	p->dscp = dscp;
	p->icmp_type = icmp_type;
	p->icmp_code = icmp_code;
	p->has_ports = has_ports;
	return PARSED;
}

static __always_inline u32 lpm_mask(void *table, const u8 *addr)
{
	struct lpm_key k = { .prefixlen = 128 };
	u32 *mask;

	__builtin_memcpy(k.addr, addr, 16);
	mask = bpf_map_lookup_elem(table, &k);
	return mask ? *mask : 0;
}

static __always_inline bool in_range(u16 v, u16 lo, u16 hi)
{
	return v >= lo && v <= hi;
}

/* Does any rule take this packet? Rules are OR-ed; fields in a rule AND-ed. */
static __always_inline bool selected(const struct pkt *p)
{
	u32 src_cidr = 0, dst_cidr = 0, src_peer = 0, dst_peer = 0;
	u32 n = cfg.nrules;

	if (!n)
		return true;
	if (cfg.any_cidr) {
		src_cidr = lpm_mask(&cidr_rules, p->key.saddr);
		dst_cidr = lpm_mask(&cidr_rules, p->key.daddr);
	}
	if (cfg.any_peer) {
		src_peer = lpm_mask(&peer_rules, p->key.saddr);
		dst_peer = lpm_mask(&peer_rules, p->key.daddr);
	}
	for (u32 i = 0; i < MAX_RULES; i++) {
		const volatile struct rule *r = &cfg.rules[i];
		u32 bit = 1u << i;

		if (i >= n)
			break;
		if (r->direction && p->key.direction != DIR_UNKNOWN &&
		    r->direction != p->key.direction + 1)
			continue;
		if (r->protocol && r->protocol != p->key.proto)
			continue;
		if (r->has_cidr && r->has_peer) {
			if (!((src_cidr & bit) && (dst_peer & bit)) &&
			    !((dst_cidr & bit) && (src_peer & bit)))
				continue;
		} else if (r->has_cidr) {
			if (!((src_cidr | dst_cidr) & bit))
				continue;
		} else if (r->has_peer) {
			if (!((src_peer | dst_peer) & bit))
				continue;
		}
		if (r->port_hi && !(p->has_ports && (in_range(p->key.sport, r->port_lo, r->port_hi) ||
						     in_range(p->key.dport, r->port_lo, r->port_hi))))
			continue;
		if (r->sport_hi && !(p->has_ports && in_range(p->key.sport, r->sport_lo, r->sport_hi)))
			continue;
		if (r->dport_hi && !(p->has_ports && in_range(p->key.dport, r->dport_lo, r->dport_hi)))
			continue;
		if (r->tcp_flags && (p->flags & r->tcp_flags) != r->tcp_flags)
			continue;
		if (r->has_icmp_type && (p->icmp_type != r->icmp_type ||
					 (p->key.proto != IPPROTO_ICMP && p->key.proto != IPPROTO_ICMPV6)))
			continue;
		if (r->has_icmp_code && (p->icmp_code != r->icmp_code ||
					 (p->key.proto != IPPROTO_ICMP && p->key.proto != IPPROTO_ICMPV6)))
			continue;
		return true;
	}
	return false;
}

static __always_inline u64 ring_flags(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg.wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

/*
 * Add counts to a flow's entry in the shared table (several CPUs may add to
 * it at once: the sums are atomic). Insert the entry if there is none; a
 * full table hands the counts to user space through the ring, and what fits
 * in neither is counted lost. `key` and `in` may point into a cache slot.
 */
static __always_inline void to_table(void *table, const struct flow_key *key,
				    const struct flow_stats *in, u64 now)
{
	struct flow_stats *st;
	struct event *ev;
	long err;

	st = bpf_map_lookup_elem(table, key);
	if (!st) {
		err = bpf_map_update_elem(table, key, in, BPF_NOEXIST);
		if (!err)
			return;
		if (err == -EEXIST) /* another CPU created it just now */
			st = bpf_map_lookup_elem(table, key);
	}
	if (st) {
		__sync_fetch_and_add(&st->bytes, in->bytes);
		__sync_fetch_and_add(&st->packets, in->packets);
		/* Not atomic: two CPUs racing here may leave a time a few us off, or
		 * lose one of two flag bits OR-ed at once. Counts stay exact. */
		if (in->first_ns < st->first_ns)
			st->first_ns = in->first_ns;
		if (in->last_ns > st->last_ns)
			st->last_ns = in->last_ns;
		if (in->tcp_flags & ~st->tcp_flags)
			st->tcp_flags |= in->tcp_flags;
		return;
	}
	/* The table is full: hand the counts to user space through the ring. */
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_n(C_LOST_FLOW, in->packets);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->kind = EV_FLOW;
	ev->ts_ns = now;
	ev->key = *key;
	ev->stats = *in;
	bpf_ringbuf_submit(ev, ring_flags());
	count_n(C_OVERFLOW, in->packets);
}

/* The flow-cache slot of a key: a multiplicative hash of its words (source
 * and destination enter differently, so a flow's two directions part). */
static __always_inline u32 cache_slot(const struct pkt *p, u32 gen)
{
	u64 h = p->kw[0] ^ p->kw[1] ^ p->kw[4] ^ p->kw[5];
	u32 bits = cfg.cache_bits;

	h ^= (p->kw[2] ^ p->kw[3]) * 0x9E3779B97F4A7C15ull;
	h *= 0x9E3779B97F4A7C15ull;
	return (gen << bits) | (bits ? (u32)(h >> (64 - bits)) : 0);
}

static __always_inline void account(struct __sk_buff *skb, const struct pkt *p)
{
	/*
	 * A packet of a flow already in its CPU's cache slot only moves last_ns,
	 * read from the coarse clock (one kernel tick: 4 ms at HZ=250), which is
	 * a memory read; the precise clock costs ~23 ns per packet here. A flow
	 * new to the slot takes the precise clock for first_ns.
	 */
	struct state *s = get_state();
	u32 epoch = s ? s->epoch : 0;
	u32 gen = epoch & 1;
	u64 now = bpf_ktime_get_coarse_ns() + (s ? s->boot_offset_ns : 0);
	u64 segs = skb->gso_segs > 1 ? skb->gso_segs : 1;
	u64 bytes = skb->len;
	/* The key's last word with the epoch in its top half: a slot's sixth word. */
	u64 tail = (p->kw[5] & 0xffffffff) | (u64)epoch << 32;
	struct flow_slot *slot;
	const u64 *w;
	void *table;
	u32 idx;

	/* A GSO super-packet leaves as `segs` frames, each with its own headers. */
	if (segs > 1 && p->payload_off)
		bytes += (segs - 1) * p->payload_off;
	count_n(C_PACKETS, segs);
	idx = cache_slot(p, gen);
	slot = bpf_map_lookup_elem(&flow_cache, &idx);
	if (!slot) { /* the index is always in range: not seen, but not silent either */
		count_n(C_LOST_FLOW, segs);
		return;
	}
	w = (const u64 *)slot;
	if (!((w[0] ^ p->kw[0]) | (w[1] ^ p->kw[1]) | (w[2] ^ p->kw[2]) | (w[3] ^ p->kw[3]) |
	      (w[4] ^ p->kw[4]) | (w[5] ^ tail))) {
		/* This CPU's own slot: tc programs do not nest on one CPU, no atomics. */
		slot->stats.bytes += bytes;
		slot->stats.packets += segs;
		if (now > slot->stats.last_ns)
			slot->stats.last_ns = now;
		slot->stats.tcp_flags |= p->flags;
		return;
	}
	/* Another flow (of this interval) has the slot: move its counts to the table. */
	if (slot->epoch == epoch && slot->stats.packets) {
		table = bpf_map_lookup_elem(&flow_tables, &gen);
		if (!table) { /* both slots are always set: not seen, but not silent either */
			count_n(C_LOST_FLOW, slot->stats.packets);
		} else {
			to_table(table, &slot->key, &slot->stats, now);
		}
	}
	now = bpf_ktime_get_boot_ns();
	count(C_FLOWS);
	slot->key = p->key;
	slot->epoch = epoch;
	slot->stats.first_ns = now;
	slot->stats.last_ns = now;
	slot->stats.bytes = bytes;
	slot->stats.packets = segs;
	slot->stats.tcp_flags = p->flags;
	slot->stats.dscp = p->dscp;
	slot->stats.icmp_type = p->icmp_type;
	slot->stats.icmp_code = p->icmp_code;
	slot->stats._pad = 0;
}

/* DNS over UDP or TCP port 53: queries are remembered, answers matched to them. */
static __always_inline void dns(struct __sk_buff *skb, const struct pkt *p)
{
	struct dns_key k = {};
	struct wire_dns h;
	struct event *ev;
	u32 off = p->payload_off;
	u64 now, *asked, latency;
	u32 qoff, n;
	u16 flags;
	long err;

	if (p->key.proto == IPPROTO_TCP) {
		/* A segment without payload (SYN, ACK, FIN) carries no DNS message. */
		if (skb->len <= off)
			return;
		off += 2; /* DNS over TCP: a 2-byte length comes first */
	}
	if (bpf_skb_load_bytes(skb, off, &h, sizeof(h))) {
		count(C_DNS_UNREADABLE); /* shorter than a DNS header: not a message we can read */
		return;
	}
	flags = bpf_ntohs(h.flags);
	k.id = bpf_ntohs(h.id);
	k.proto = p->key.proto;
	now = bpf_ktime_get_boot_ns();
	if (!(flags & 0x8000)) {
		if (p->key.dport != 53)
			return;
		__builtin_memcpy(k.client, p->key.saddr, 16);
		__builtin_memcpy(k.server, p->key.daddr, 16);
		k.cport = p->key.sport;
		/* The first sighting counts; the same query on another interface (or
		 * retransmitted with the same id and port) is already there. Any other
		 * failure (the table is full) means its answer can never be matched. */
		err = bpf_map_update_elem(&dns_inflight, &k, &now, BPF_NOEXIST);
		if (err && err != -EEXIST)
			count(C_LOST_DNS_QUERY);
		return;
	}
	if (p->key.sport != 53)
		return;
	__builtin_memcpy(k.client, p->key.daddr, 16);
	__builtin_memcpy(k.server, p->key.saddr, 16);
	k.cport = p->key.dport;
	asked = bpf_map_lookup_elem(&dns_inflight, &k);
	if (!asked)
		return; /* seen already on another interface, or asked before we started */
	latency = now - *asked;
	/* Deleting the query is what claims the answer: of two CPUs matching the
	 * same answer at once (seen on two interfaces), the one whose delete
	 * succeeds reports it, the other gets ENOENT and has nothing to add. */
	err = bpf_map_delete_elem(&dns_inflight, &k);
	if (err == -ENOENT)
		return;
	count(C_DNS);
	if (err) { /* not claimed (a busy bucket lock): not reported, so counted */
		count(C_LOST_DNS);
		return;
	}
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(C_LOST_DNS);
		return;
	}
	ev->kind = EV_DNS;
	ev->_pad0 = 0;
	ev->ts_ns = now;
	ev->key = p->key;
	ev->_pad1 = 0;
	__builtin_memset(&ev->stats, 0, sizeof(ev->stats));
	ev->latency_ns = latency;
	ev->dns_id = k.id;
	ev->dns_flags = flags;
	ev->_pad2 = 0;
	qoff = off + sizeof(h);
	n = skb->len > qoff ? skb->len - qoff : 0;
	if (n > DNS_QNAME_MAX)
		n = DNS_QNAME_MAX;
	ev->qname_len = n;
	if (n < 1 || bpf_skb_load_bytes(skb, qoff, ev->qname, n))
		ev->qname_len = 0;
	bpf_ringbuf_submit(ev, ring_flags());
}

/*
 * A TCP segment whose payload starts a TLS handshake record (0x16 0x03 x) holding a
 * ClientHello (1) or a ServerHello (2): its first TLS_MAX bytes go to tls_events. One
 * 6-byte read per TCP segment with payload decides; hellos are once per connection.
 */
static __always_inline void tls(struct __sk_buff *skb, const struct pkt *p)
{
	u32 off = p->payload_off;
	struct tls_event *ev;
	u8 head[6];
	u64 n; /* 64 bits: the bounds checks and the load use one register, unextended */

	if (skb->len < off + sizeof(head) || bpf_skb_load_bytes(skb, off, head, sizeof(head)))
		return;
	if (head[0] != 0x16 || head[1] != 0x03 || (head[5] != 1 && head[5] != 2))
		return;
	ev = bpf_ringbuf_reserve(&tls_events, sizeof(*ev), 0);
	if (!ev) {
		count(C_LOST_TLS);
		return;
	}
	n = (u64)(skb->len - off);
	if (n > TLS_MAX - 1)
		n = TLS_MAX - 1;
	/* Bound the register the load uses, in the program itself: clang would otherwise
	 * recompute n from skb->len there, and the verifier would see no bound on it. */
	asm volatile("%[n] &= 1023" : [n] "+r"(n));
	ev->ts_ns = bpf_ktime_get_boot_ns();
	ev->key = p->key;
	ev->_pad = 0;
	ev->len = 0;
	if (n >= sizeof(head) && !bpf_skb_load_bytes(skb, off, ev->data, n))
		ev->len = n;
	count(C_TLS);
	bpf_ringbuf_submit(ev, 0);
}

/* A parsed packet: its interface and direction into the key, then count it. */
static __always_inline int count_packet(struct __sk_buff *skb, struct pkt *p, u8 direction)
{
	p->kw[4] |= (u64)skb->ifindex << 32;
	p->kw[5] |= (u64)direction << 16;
	if (!selected(p))
		return TC_ACT_UNSPEC;
	account(skb, p);
	if (cfg.dns && p->payload_off && (p->key.sport == 53 || p->key.dport == 53) &&
	    (p->key.proto == IPPROTO_UDP || p->key.proto == IPPROTO_TCP))
		dns(skb, p);
	if (cfg.tls && p->payload_off && p->key.proto == IPPROTO_TCP)
		tls(skb, p);
	/* Unspecified: the packet goes on to any other filter, untouched in verdict. */
	return TC_ACT_UNSPEC;
}

/*
 * The common case, IPv4 without options, not a fragment, TCP or UDP with 20
 * bytes of it linear, parsed at fixed offsets into *p (as parse() would).
 */
static __always_inline bool parse_v4_common(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct wire_eth *eth = data;
	struct wire_ipv4 *ip = (void *)(eth + 1);
	struct wire_tcp *tcp = (void *)(ip + 1); /* its first 8 bytes are UDP's too */
	u8 proto;

	if ((void *)(tcp + 1) > end || eth->proto != bpf_htons(ETH_P_IP) || ip->ver_ihl != 0x45 ||
	    (ip->frag_off & bpf_htons(0x1fff)))
		return false;
	proto = ip->protocol;
	if (proto == IPPROTO_TCP) {
		p->flags = tcp_flags(tcp->flags);
		p->payload_off = ETH_HLEN + sizeof(*ip) + (tcp->doff_res >> 4) * 4;
	} else if (proto == IPPROTO_UDP) {
		p->flags = 0;
		p->payload_off = ETH_HLEN + sizeof(*ip) + sizeof(struct wire_udp);
	} else {
		return false;
	}
	p->kw[0] = 0;
	p->kw[1] = V4_MAPPED_LO | (u64)load32(ip->saddr) << 32;
	p->kw[2] = 0;
	p->kw[3] = V4_MAPPED_LO | (u64)load32(ip->daddr) << 32;
	p->kw[4] = (u64)bpf_ntohs(tcp->sport) | (u64)bpf_ntohs(tcp->dport) << 16;
	p->kw[5] = (u64)proto | 4 << 8;
	p->dscp = ip->tos >> 2;
	p->icmp_type = 0;
	p->icmp_code = 0;
	p->has_ports = 1;
	return true;
}

static __always_inline int observe(struct __sk_buff *skb, u8 direction)
{
	struct pkt p;
	int rc;

	/* Its own copy of everything after parsing: knowing half the key is zero
	 * and the rest IPv4, clang makes the hot path ~4 ns shorter. */
	if (parse_v4_common(skb, &p))
		return count_packet(skb, &p, direction);
	rc = parse(skb, &p);
	if (rc == NOT_LINEAR) {
		/* Headers beyond the linear buffer: pull them in once, then parse again. */
		u32 want = skb->len < 128 ? skb->len : 128;

		if (bpf_skb_pull_data(skb, want) == 0)
			rc = parse(skb, &p);
	}
	if (rc == NOT_LINEAR || rc == MALFORMED) {
		count(C_UNPARSED);
		return TC_ACT_UNSPEC;
	}
	if (rc == NOT_IP)
		return TC_ACT_UNSPEC;
	return count_packet(skb, &p, direction);
}

SEC("tc")
int flows_ingress(struct __sk_buff *skb)
{
	return observe(skb, DIR_INGRESS);
}

SEC("tc")
int flows_egress(struct __sk_buff *skb)
{
	return observe(skb, DIR_EGRESS);
}

static __always_inline void sock_key(const struct sock *sk, struct flow_key *k)
{
	u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family == AF_INET) {
		u32 a;

		a = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		map_v4(k->saddr, (u8 *)&a);
		a = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		map_v4(k->daddr, (u8 *)&a);
		k->family = 4;
	} else {
		BPF_CORE_READ_INTO((struct in6_addr *)k->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO((struct in6_addr *)k->daddr, sk, __sk_common.skc_v6_daddr);
		k->family = 6;
	}
	k->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	k->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	k->proto = IPPROTO_TCP;
	k->direction = DIR_UNKNOWN;
}

/*
 * One sample into a socket's entry. Not atomic: tcp_probe runs under the
 * socket's lock, so one socket's samples never race each other.
 */
static __always_inline void rtt_add(struct rtt_stats *st, u32 srtt)
{
	if (srtt < st->min_us)
		st->min_us = srtt;
	if (srtt > st->max_us)
		st->max_us = srtt;
	st->last_us = srtt;
	st->samples++;
	st->sum_us += srtt;
}

/* The socket's smoothed RTT each time it processes an incoming segment. */
SEC("tp_btf/tcp_probe")
int BPF_PROG(flows_rtt, struct sock *sk, const struct sk_buff *skb)
{
	u32 srtt = BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
	struct pkt p = {};
	struct rtt_stats *st, fresh = {};
	u32 gen;
	void *table;
	long err;

	if (!srtt)
		return 0;
	sock_key(sk, &p.key);
	p.has_ports = 1;
	if (!selected(&p))
		return 0;
	gen = current_gen();
	table = bpf_map_lookup_elem(&rtt_tables, &gen);
	if (!table) {
		count(C_LOST_RTT);
		return 0;
	}
	st = bpf_map_lookup_elem(table, &p.key);
	if (st) {
		rtt_add(st, srtt);
		return 0;
	}
	fresh.min_us = srtt;
	fresh.max_us = srtt;
	fresh.last_us = srtt;
	fresh.samples = 1;
	fresh.sum_us = srtt;
	err = bpf_map_update_elem(table, &p.key, &fresh, BPF_NOEXIST);
	if (!err)
		return 0;
	/* Another CPU inserted this socket's entry first: add the sample to it. */
	if (err == -EEXIST) {
		st = bpf_map_lookup_elem(table, &p.key);
		if (st) {
			rtt_add(st, srtt);
			return 0;
		}
	}
	count(C_LOST_RTT); /* the table is full (or the entry vanished): not recorded */
	return 0;
}

/* Read the IP and L4 headers of a kernel skb (not packet memory: probe reads). */
static __always_inline bool skb_key(struct sk_buff *skb, struct pkt *p)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	u16 nh = BPF_CORE_READ(skb, network_header);
	unsigned char *l3, *l4;
	u8 first;

	if (!head || nh == 0xffff)
		return false;
	l3 = head + nh;
	if (bpf_probe_read_kernel(&first, 1, l3))
		return false;
	if ((first >> 4) == 4) {
		struct wire_ipv4 ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), l3))
			return false;
		map_v4(p->key.saddr, ip.saddr);
		map_v4(p->key.daddr, ip.daddr);
		p->key.family = 4;
		p->key.proto = ip.protocol;
		if (ip.frag_off & bpf_htons(0x1fff))
			return true;
		l4 = l3 + (ip.ver_ihl & 0x0f) * 4;
	} else if ((first >> 4) == 6) {
		struct wire_ipv6 ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), l3))
			return false;
		__builtin_memcpy(p->key.saddr, ip6.saddr, 16);
		__builtin_memcpy(p->key.daddr, ip6.daddr, 16);
		p->key.family = 6;
		p->key.proto = ip6.nexthdr;
		l4 = l3 + sizeof(ip6);
#pragma unroll
		for (int i = 0; i < MAX_IPV6_EXT; i++) {
			struct ipv6_ext_step step;
			u8 ext[IPV6_EXT_READ];

			if (!ipv6_is_ext(p->key.proto))
				break;
			if (bpf_probe_read_kernel(ext, sizeof(ext), l4))
				return true;
			step = ipv6_ext_step(p->key.proto, ext);
			p->key.proto = step.next;
			l4 += step.len;
			if (step.later_frag)
				return true;
		}
	} else {
		return false;
	}
	if (p->key.proto == IPPROTO_TCP || p->key.proto == IPPROTO_UDP ||
	    p->key.proto == IPPROTO_SCTP) {
		struct wire_tcp tcp;

		/* The ports come first in all three; TCP flags need the longer read. */
		if (p->key.proto == IPPROTO_TCP && !bpf_probe_read_kernel(&tcp, sizeof(tcp), l4)) {
			p->flags = tcp_flags(tcp.flags);
		} else if (bpf_probe_read_kernel(&tcp, sizeof(struct wire_ports), l4)) {
			return true;
		}
		p->key.sport = bpf_ntohs(tcp.sport);
		p->key.dport = bpf_ntohs(tcp.dport);
		p->has_ports = 1;
	} else if (p->key.proto == IPPROTO_ICMP || p->key.proto == IPPROTO_ICMPV6) {
		struct wire_icmp icmp;

		if (!bpf_probe_read_kernel(&icmp, sizeof(icmp), l4)) {
			p->icmp_type = icmp.type;
			p->icmp_code = icmp.code;
		}
	}
	return true;
}

/* Every freed-because-dropped skb, with the kernel's reason for dropping it. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(flows_drops, struct sk_buff *skb, void *location, int reason)
{
	struct pkt p = {};
	struct drop_stats *st, fresh = {};
	struct net_device *dev;
	u32 gen, len;
	void *table;

	if (!skb_key(skb, &p))
		return 0;
	p.key.direction = DIR_UNKNOWN;
	if (!selected(&p))
		return 0;
	len = BPF_CORE_READ(skb, len);
	if (len == 0 && reason == cfg.purge_reason && cfg.purge_reason)
		return 0;
	gen = current_gen();
	count(C_DROPS);
	table = bpf_map_lookup_elem(&drop_tables, &gen);
	if (!table) {
		count(C_LOST_DROPS);
		return 0;
	}
	st = bpf_map_lookup_elem(table, &p.key);
	if (st) {
		__sync_fetch_and_add(&st->bytes, len);
		__sync_fetch_and_add(&st->packets, 1);
		st->last_ns = bpf_ktime_get_boot_ns();
		st->reason = reason;
		return 0;
	}
	fresh.bytes = len;
	fresh.packets = 1;
	fresh.last_ns = bpf_ktime_get_boot_ns();
	fresh.reason = reason;
	dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		fresh.ifindex = BPF_CORE_READ(dev, ifindex);
		fresh.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	} else {
		fresh.netns = BPF_CORE_READ(skb, sk, __sk_common.skc_net.net, ns.inum);
	}
	if (bpf_map_update_elem(table, &p.key, &fresh, BPF_NOEXIST)) {
		/* Another CPU inserted it first (EEXIST): add to its entry. Else full. */
		st = bpf_map_lookup_elem(table, &p.key);
		if (st) {
			__sync_fetch_and_add(&st->bytes, len);
			__sync_fetch_and_add(&st->packets, 1);
		} else {
			count(C_LOST_DROPS);
		}
	}
	return 0;
}
