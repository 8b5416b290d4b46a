/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Wire formats (Ethernet, IPv4, IPv6, TCP, UDP, ICMP) as the programs parse them.
 *
 * Why not <linux/ipv6.h> and <linux/icmp.h>: they pull in <linux/in6.h>, whose
 * struct in6_addr clashes with the CO-RE declaration in podsight_core.h. These
 * are fixed by RFCs, so declaring the bytes we read is enough.
 */
#ifndef PODSIGHT_NET_H
#define PODSIGHT_NET_H

#include <linux/types.h>

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_SCTP 132

struct wire_eth {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

struct wire_ipv4 {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct wire_ipv6 {
	__be32 ver_tc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct wire_tcp {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack;
	__u8 doff_res; /* data offset in the high 4 bits, in 32-bit words */
	__u8 flags;    /* CWR ECE URG ACK PSH RST SYN FIN, high to low */
	__be16 window;
	__be16 check;
	__be16 urg;
};

struct wire_udp {
	__be16 sport;
	__be16 dport;
	__be16 len;
	__be16 check;
};

/* ICMP and ICMPv6 share their first two bytes; SCTP starts with the two ports. */
struct wire_icmp {
	__u8 type;
	__u8 code;
};

struct wire_ports {
	__be16 sport;
	__be16 dport;
};

struct wire_dns {
	__be16 id;
	__be16 flags; /* QR in bit 15, RCODE in the low 4 bits */
	__be16 qdcount;
	__be16 ancount;
	__be16 nscount;
	__be16 arcount;
};

#endif /* PODSIGHT_NET_H */
