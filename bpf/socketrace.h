/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The record socketrace's BPF program sends to user space.
 *
 * Every constant here (sizes, flags) is a -D macro from socketrace/contract.py,
 * which also holds the ctypes mirror of struct event; a test compiles this
 * header with clang and checks each field's offset against that mirror.
 */
#ifndef SOCKETRACE_H
#define SOCKETRACE_H

#if !defined(EVENT_COMM_LEN) || !defined(EVENT_UNIX_PATH_MAX) || !defined(MAX_STACK_DEPTH)
#error "socketrace.h needs the macros of socketrace/contract.py (contract_macros)"
#endif

struct event {
	/* Per event. */
	u64 ts_ns;          /* bpf_ktime_get_ns() */
	s64 retval;         /* EVENT_RETURN: the return value, extended per its kind */
	u64 duration_ns;    /* EVENT_RETURN: from entry to return */
	u32 pid;            /* thread id */
	u32 flags;          /* EVENT_* */
	s32 stack_bytes;    /* bytes of kernel stack after the event, or -errno */
	u32 pad0;
	/* Who and where: user space caches their text by these bytes. */
	u64 func_ip;        /* classic kprobes: the traced function's address; else 0 */
	u32 cpu;
	u32 probe_id;       /* index into the attached probes; NO_PROBE_ID for classic kprobes */
	u32 tgid;
	char comm[EVENT_COMM_LEN];
	u32 pad1;
	/* The socket: user space caches its text by these bytes, to the end. */
	u64 sk;             /* struct sock *: the socket's identity */
	u64 socket_ino;     /* SOCK_INODE(socket)->i_ino, as `ss -e` prints ino: */
	u64 cookie;         /* skc_cookie, as `ss -e` prints sk: (0 until the kernel assigns one) */
	u64 socket_flags;
	u32 netns;          /* net->ns.inum */
	u32 mark;
	u32 priority;
	s32 bound_dev_if;
	s32 rx_dst_ifindex;
	s32 backlog_len;
	s32 rcvbuf;
	s32 sndbuf;
	s32 socket_state;   /* socket->state (SS_*) */
	s16 socket_type;
	u16 family;
	u16 protocol;
	u16 type;
	u16 sport;          /* host byte order */
	u16 dport;          /* host byte order */
	u8 state;           /* skc_state (TCP_* numbering) */
	u8 reuseport;
	u8 sock_flags;      /* SOCK_* */
	u8 pad2;
	u8 saddr[16];       /* AF_INET: first 4 bytes; AF_INET6: all 16 */
	u8 daddr[16];
	u32 pad3;
	/* What only one family has; which member is valid follows from `family`. */
	union {
		struct {
			u64 peer;            /* unix_sock->peer */
			s32 path_len;        /* bytes of path; 0: unnamed */
			char path[EVENT_UNIX_PATH_MAX]; /* starts with \0 for an abstract name */
		} unix_sk;
		struct {
			u32 portid;
			u32 dst_portid;
			u64 groups;          /* first word of the group bitmap */
		} netlink;
		struct {
			s32 ifindex;
		} packet;
	} detail;
};

#endif /* SOCKETRACE_H */
