/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The record socketrace's BPF program sends to user space.
 *
 * socketrace/events.py mirrors this layout with ctypes; both sides pin the
 * size, so a field added on one side only fails loudly.
 */
#ifndef SOCKETRACE_H
#define SOCKETRACE_H

#define TASK_COMM_LEN 16
#define UNIX_PATH_MAX 108
#define MAX_STACK_DEPTH 64

/* event.flags */
#define EVENT_HAS_SOCKET 1 /* sk->sk_socket was set: socket_* fields are valid */
#define EVENT_RETURN 2     /* at the function's return: retval and duration_ns are valid */

struct event {
	u64 ts_ns;          /* bpf_ktime_get_ns() */
	u64 sk;             /* struct sock *: the socket's identity */
	u64 func_ip;        /* kprobes: address of the traced function; 0 for tracepoints */
	u64 socket_flags;   /* socket->flags */
	u64 socket_ino;     /* SOCK_INODE(socket)->i_ino, as `ss -e` prints ino: */
	s64 retval;         /* EVENT_RETURN: the function's return value */
	u64 duration_ns;    /* EVENT_RETURN: from entry to return */
	u32 probe_id;       /* index into the attached probe list */
	u32 tgid;
	u32 pid;
	u32 cpu;
	u32 netns;          /* net->ns.inum */
	u32 mark;
	u32 priority;
	s32 bound_dev_if;
	s32 rx_dst_ifindex;
	s32 backlog_len;
	s32 rcvbuf;
	s32 sndbuf;
	s32 socket_state;   /* socket->state (SS_*) */
	s32 stack_bytes;    /* bytes of kernel stack after the event, or -errno */
	u16 family;
	u16 protocol;
	u16 type;
	u16 sport;          /* host byte order */
	u16 dport;          /* host byte order */
	s16 socket_type;
	u8 state;           /* skc_state (TCP_* numbering) */
	u8 reuseport;
	u8 flags;           /* EVENT_* */
	u8 pad;
	u8 saddr[16];       /* AF_INET: first 4 bytes; AF_INET6: all 16 */
	u8 daddr[16];
	char comm[TASK_COMM_LEN];
	/* What only one family has; which member is valid follows from `family`. */
	union {
		struct {
			u64 peer;            /* unix_sock->peer */
			s32 path_len;        /* bytes of path; 0: unnamed */
			char path[UNIX_PATH_MAX]; /* starts with \0 for an abstract name */
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

#define EVENT_SIZE 296

/* Indexes of the per-CPU counters map. */
#define COUNTER_DROPPED 0 /* events the buffer had no room for */
#define COUNTER_STACK_ERRORS 1 /* stacks that could not be read */
#define COUNTER_CALLS_LOST 2 /* calls not remembered: the in-flight table was full */
#define COUNTER_MAX 3

#endif /* SOCKETRACE_H */
