// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * packets: every packet that passes the user's filter, written by the kernel
 * as a ready pcapng Enhanced Packet Block, so user space only moves bytes.
 *
 * How a packet gets here. User space loads, per captured interface and
 * direction, a small *entry* program built from raw instructions: the
 * tcpdump expression compiled by libpcap and converted to eBPF (see
 * filter.py). On a match it stores the interface's id in the file and the
 * direction in `meta` (per CPU: tc runs with migration disabled, and a tail
 * call does not return) and tail-calls slot 0 of `jump`, which holds one of
 * the two programs below. On no match the packet costs the converted filter
 * only.
 *
 * Two ways to hand over the blocks, chosen by the snap length:
 *
 *   capture_slot    snaplen <= SLOT_MAX_SNAP: one ring buffer record of a
 *                   fixed size per packet, reserved and filled straight from
 *                   the skb (one copy). The EPB inside is exactly as long as
 *                   its data; user space writes the records' EPBs with one
 *                   writev from the ring mapping.
 *   capture_stream  larger snap lengths: each CPU appends exact-length EPBs
 *                   to its own byte stream (elements of an mmapable array,
 *                   one producer per CPU, no lock) and puts an index entry
 *                   {pos, len, cpu, ts, addresses} in `pkt_index`. User space turns the
 *                   index into iovecs into the mapped streams: no per-packet
 *                   Python work for any packet size.
 *
 * Every packet that matched is counted per interface (`ifstats`): written,
 * or lost with its cause. The statistics blocks and the summary come from
 * these counters. Programs return TC_ACT_UNSPEC (tcx: next): capture never
 * changes a packet's fate.
 */
#include "../include/podsight_core.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TC_ACT_UNSPEC (-1)
#define EPB_HDR 28          /* type, total length, interface id, ts high, ts low, caplen, len */
#define EPB_TAIL 16         /* epb_flags option (8), opt_endofopt (4), trailing total length (4) */
#define MAX_SNAP 65536      /* the largest capture: a 64 KiB GSO skb */
#define SLOT_MAX 2048       /* the largest fixed record (a verifier bound) */
#define MAX_REC (EPB_HDR + MAX_SNAP + EPB_TAIL)
#define STREAM_ELEM (2u << 20)          /* one array element: capture.STREAM_ELEM */
#define STREAM_USABLE (STREAM_ELEM - MAX_REC)
#define MAX_IFACES 1024
#define EPB_FLAGS_INBOUND 1
#define EPB_FLAGS_OUTBOUND 2

/* The `cfg` global (.rodata): CFG_DTYPE in capture.py. */
struct config {
	u32 snaplen;
	u32 slot;            /* capture_slot: the record size (a multiple of 8) */
	u32 wakeup_bytes;    /* force a wakeup once this much waits in the ring */
	u32 elems_per_cpu;   /* capture_stream: STREAM_ELEM elements per CPU */
	u32 stream_wake;     /* capture_stream: wake the reader once this much waits in a CPU's stream */
};
const volatile struct config cfg = { .snaplen = 96 };

/* Set by user space: CLOCK_REALTIME - CLOCK_MONOTONIC at start, in ns. */
u64 wall_offset_ns = 0;

/* Per interface (summed over CPUs by user space): IFSTATS_DTYPE in capture.py. */
struct ifstats {
	u64 matched;         /* passed the filter */
	u64 written;         /* handed to user space */
	u64 bytes;           /* captured bytes handed over */
	u64 lost_ring;       /* ring or stream full: user space too slow (or the buffer too small) */
	u64 lost_other;      /* the skb could not be read */
};

/*
 * capture_stream's index entry: INDEX_DTYPE in capture.py. `ts` repeats the
 * block's timestamp, so user space can check a batch's time order from the
 * dense index (two CPUs' entries can cross by a few ns) without touching the
 * streams; `saddr`/`daddr` are the IPv4 addresses of an Ethernet + IPv4 packet
 * (as they lie in the packet; both 0 otherwise), read here while the block is in
 * this CPU's cache, for the Name Resolution Block: user space would otherwise
 * take a cache miss per block to find them (~200 ns per whole packet).
 */
struct index_entry {
	u64 pos;
	u32 len;
	u32 cpu;
	u64 ts;
	u32 saddr;
	u32 daddr;
};

/* One per CPU, in an mmapable array: `cons` is written by user space. */
struct stream_pos {
	u64 prod;
	u64 cons;
};

struct stream {
	u8 b[STREAM_ELEM];
};

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} jump SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_IFACES);
	__type(key, u32);
	__type(value, struct ifstats);
} ifstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 << 20);
} pkt_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);   /* resized by user space: CPUs x elems_per_cpu */
	__type(key, u32);
	__type(value, struct stream);
} streams SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);   /* resized by user space: CPUs */
	__type(key, u32);
	__type(value, struct stream_pos);
} positions SEC(".maps");

/*
 * Wake the reader when the data waiting crosses a mark (a quarter, a half and
 * three quarters of cfg.wakeup_bytes * 4), not for every record past it: a forced
 * wakeup queues irq_work, about a microsecond, and a reader that is a little
 * behind would otherwise pay it on every packet. `avail` includes this record;
 * a band of WAKE_BAND records after each mark (not one exact record) covers
 * producers on other CPUs reserving between this one's reserve and its query.
 * The reader also wakes on its own every 50 ms.
 */
#define WAKE_BAND 16

static __always_inline u64 wake_flags(u64 avail, u64 rec)
{
	u64 mark = cfg.wakeup_bytes, band = rec * WAKE_BAND;
	if (!mark)
		return BPF_RB_NO_WAKEUP;
	for (int i = 1; i <= 3; i++) {
		if (avail >= mark * i && avail < mark * i + band)
			return BPF_RB_FORCE_WAKEUP;
	}
	return BPF_RB_NO_WAKEUP;
}

/* The interface id and direction the entry program left, and its counters. */
static __always_inline struct ifstats *begin(u32 *ifid, u32 *flags)
{
	u32 zero = 0, *m = bpf_map_lookup_elem(&meta, &zero);
	if (!m)
		return NULL;
	*ifid = *m >> 1;
	*flags = (*m & 1) ? EPB_FLAGS_OUTBOUND : EPB_FLAGS_INBOUND;
	u32 key = *ifid;
	struct ifstats *st = bpf_map_lookup_elem(&ifstats, &key);
	if (st)
		st->matched++;
	return st;
}

/* Returns the timestamp. It is read after the copy, not right after the reservation
 * (which would keep the records' time order across CPUs): read early it cost 50 ns
 * more per whole packet (bench/packets_path.py), and user space puts a batch of
 * capture_stream's blocks in time order anyway. */
static __always_inline u64 fill_header(u32 *h, u32 total, u32 ifid, u32 cap, u32 len)
{
	u64 ts = bpf_ktime_get_ns() + wall_offset_ns;
	h[0] = 6;
	h[1] = total;
	h[2] = ifid;
	h[3] = ts >> 32;
	h[4] = (u32)ts;
	h[5] = cap;
	h[6] = len;
	return ts;
}

SEC("tc")
int capture_slot(struct __sk_buff *skb)
{
	u32 ifid, flags;
	struct ifstats *st = begin(&ifid, &flags);
	if (!st)
		return TC_ACT_UNSPEC;
	u32 len = skb->len, cap = len < cfg.snaplen ? len : cfg.snaplen;
	u32 slot = cfg.slot;
	if (slot > SLOT_MAX)
		slot = SLOT_MAX;
	if (cap > slot - EPB_HDR - EPB_TAIL)
		cap = slot - EPB_HDR - EPB_TAIL;
	if (cap == 0) {
		st->lost_other++;
		return TC_ACT_UNSPEC;
	}
	u8 *rec = bpf_ringbuf_reserve(&ring, cfg.slot, 0);
	if (!rec) {
		st->lost_ring++;
		return TC_ACT_UNSPEC;
	}
	u64 n = ((u64)(cap - 1) & (SLOT_MAX - 1)) + 1;   /* [1, SLOT_MAX] for the verifier */
	if (n > cfg.slot - EPB_HDR - EPB_TAIL || bpf_skb_load_bytes(skb, 0, rec + EPB_HDR, n) < 0) {
		bpf_ringbuf_discard(rec, 0);
		st->lost_other++;
		return TC_ACT_UNSPEC;
	}
	u32 off = (EPB_HDR + n + 3) & ~3u;
	if (off > cfg.slot - EPB_TAIL || off > SLOT_MAX - EPB_TAIL) {
		bpf_ringbuf_discard(rec, 0);
		st->lost_other++;
		return TC_ACT_UNSPEC;
	}
	/* Zero the data's pad bytes: readers ignore them, but old ring bytes must not leak. */
	if (n & 3)
		*(u32 *)(rec + ((EPB_HDR + n) & ~3u)) &= 0xffffffffu >> (8 * (4 - (n & 3)));
	u32 total = off + EPB_TAIL;
	fill_header((u32 *)rec, total, ifid, n, len);
	u32 *o = (u32 *)(rec + off);
	o[0] = 2 | (4 << 16);   /* epb_flags, 4 bytes */
	o[1] = flags;
	o[2] = 0;               /* opt_endofopt */
	o[3] = total;
	st->written++;
	st->bytes += n;
	bpf_ringbuf_submit(rec, wake_flags(bpf_ringbuf_query(&ring, BPF_RB_AVAIL_DATA),
					    cfg.slot + 8));
	return TC_ACT_UNSPEC;
}

SEC("tc")
int capture_stream(struct __sk_buff *skb)
{
	u32 ifid, flags;
	struct ifstats *st = begin(&ifid, &flags);
	if (!st)
		return TC_ACT_UNSPEC;
	u32 len = skb->len, cap = len < cfg.snaplen ? len : cfg.snaplen;
	if (cap == 0) {
		st->lost_other++;
		return TC_ACT_UNSPEC;
	}
	u64 n = ((u64)(cap - 1) & (MAX_SNAP - 1)) + 1;   /* [1, MAX_SNAP] */
	u32 need = ((EPB_HDR + n + 3) & ~3u) + EPB_TAIL;  /* <= MAX_REC */

	u32 cpu = bpf_get_smp_processor_id();
	struct stream_pos *sp = bpf_map_lookup_elem(&positions, &cpu);
	if (!sp) {
		st->lost_other++;
		return TC_ACT_UNSPEC;
	}
	u64 total = (u64)cfg.elems_per_cpu * STREAM_ELEM;
	u64 pos = sp->prod;
	u32 off = pos % STREAM_ELEM;
	if (off + need > STREAM_USABLE) {   /* records never straddle two elements */
		pos += STREAM_ELEM - off;
		off = 0;
	}
	u64 cons = *(volatile u64 *)&sp->cons;
	if (pos + need - cons > total) {
		st->lost_ring++;
		return TC_ACT_UNSPEC;
	}
	struct index_entry *ie = bpf_ringbuf_reserve(&pkt_index, sizeof(*ie), 0);
	if (!ie) {
		st->lost_ring++;
		return TC_ACT_UNSPEC;
	}
	u32 key = cpu * cfg.elems_per_cpu + (u32)((pos / STREAM_ELEM) % cfg.elems_per_cpu);
	struct stream *s = bpf_map_lookup_elem(&streams, &key);
	if (!s || off >= STREAM_USABLE) {
		bpf_ringbuf_discard(ie, 0);
		st->lost_other++;
		return TC_ACT_UNSPEC;
	}
	u8 *rec = s->b + off;
	if (bpf_skb_load_bytes(skb, 0, rec + EPB_HDR, n) < 0) {
		bpf_ringbuf_discard(ie, 0);
		st->lost_other++;
		return TC_ACT_UNSPEC;
	}
	u64 ts = fill_header((u32 *)rec, need, ifid, n, len);
	if (n & 3) {
		u32 padpos = (EPB_HDR + n) & ~3u;
		if (padpos < MAX_REC - 4)
			*(u32 *)(rec + padpos) &= 0xffffffffu >> (8 * (4 - (n & 3)));
	}
	u32 o = need - EPB_TAIL;
	if (o < MAX_REC - EPB_TAIL) {
		u32 *t = (u32 *)(rec + o);
		t[0] = 2 | (4 << 16);
		t[1] = flags;
		t[2] = 0;
		t[3] = need;
	}
	u32 sa = 0, da = 0;
	if (n >= 34) {   /* Ethernet + IPv4 (the bytes as they lie: 0x0008 is ETH_P_IP) */
		u8 *p = rec + EPB_HDR;
		if (*(u16 *)(p + 12) == 0x0008 && (p[14] >> 4) == 4) {
			sa = *(u16 *)(p + 26) | ((u32) * (u16 *)(p + 28) << 16);
			da = *(u16 *)(p + 30) | ((u32) * (u16 *)(p + 32) << 16);
		}
	}
	ie->saddr = sa;
	ie->daddr = da;
	sp->prod = pos + need;
	ie->ts = ts;
	ie->pos = pos;
	ie->len = need;
	ie->cpu = cpu;
	st->written++;
	st->bytes += n;
	/* This CPU's stream crossing cfg.stream_wake (a quarter of it when 0 or larger;
	 * exact: one producer per stream), or the index ring crossing a mark. */
	u64 mark = cfg.stream_wake;
	if (!mark || mark > total / 4)
		mark = total / 4;
	u64 wake = (pos + need - cons > mark && pos - cons <= mark) ?
		BPF_RB_FORCE_WAKEUP :
		wake_flags(bpf_ringbuf_query(&pkt_index, BPF_RB_AVAIL_DATA), sizeof(*ie) + 8);
	bpf_ringbuf_submit(ie, wake);
	return TC_ACT_UNSPEC;
}
