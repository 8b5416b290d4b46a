/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The few kernel types podsight's programs read, declared by hand.
 *
 * Why not a generated vmlinux.h: it is 3 MB, differs per kernel, and would
 * make the compiled objects depend on the build machine. These declarations
 * carry preserve_access_index, so every field access becomes a CO-RE
 * relocation that libbpf resolves against the running kernel's BTF at load
 * time: layouts here need not match the kernel's, only names and types.
 * Anonymous unions in the kernel (skc_daddr lives in one) are matched by
 * libbpf through the member name, so they are flattened here.
 */
#ifndef PODSIGHT_CORE_H
#define PODSIGHT_CORE_H

#include <linux/types.h>
#include <linux/bpf.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;

/* uapi linux/errqueue.h (stable ABI; that header needs libc's struct timespec). */
struct sock_extended_err {
	__u32 ee_errno;
	__u8 ee_origin;
	__u8 ee_type;
	__u8 ee_code;
	__u8 ee_pad;
	__u32 ee_info;
	__u32 ee_data;
};
#define SO_EE_ORIGIN_ICMP 2
#define SO_EE_ORIGIN_ICMP6 3

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sk_buff;

struct sk_buff_head {
	struct sk_buff *next;
	struct sk_buff *prev;
};

struct sock {
	struct sock_common __sk_common;
	int sk_err;
	int sk_err_soft;
	struct sk_buff_head sk_error_queue;
};

/* inet_sport survives the unhash that zeroes skc_num when a connect fails. */
struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
};

struct net_device {
	int ifindex;
	possible_net_t nd_net;
};

struct sk_buff {
	struct sock *sk;
	struct net_device *dev;
	char cb[48];
	unsigned int len;
	__be16 protocol;
	__u16 transport_header;
	__u16 network_header;
	unsigned char *head;
};

/* srtt_us holds the smoothed RTT in microseconds, shifted left by 3. */
struct tcp_sock {
	__u32 srtt_us;
};

/* What an ICMP error leaves in skb->cb of the error queue (net/sock.h). */
struct sock_exterr_skb {
	struct sock_extended_err ee;
};

#pragma clang attribute pop

#define AF_INET 2
#define AF_INET6 10

enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_CLOSE = 7,
};

#endif /* PODSIGHT_CORE_H */
