// SPDX-License-Identifier: GPL-2.0
/*
 * socketrace: one handler for every probe that sees a socket.
 *
 * Compiled by BCC at run time with no kernel headers: this file defines no
 * kernel struct. Every struct field it reads is a -D macro of four integers
 * "offset,size,shift,bits" taken from the running kernel's BTF by
 * socketrace/discovery.py (offset -1: the kernel lacks the field, read 0).
 * Every filter is a -D macro too, defined only when the filter is active.
 * socketrace/program.py builds the whole list; `socketrace --ebpf` prints it.
 */
#include "socketrace.h"

/* ---- Tunables (defaults; program.py overrides) ---------------------------- */

/* Filters, each defined only when set:
 *   FILTER_PID, FILTER_NETNS, FILTER_MARK, FILTER_PROTOCOL, FILTER_PORT,
 *   FILTER_INET (drop non-AF_INET/AF_INET6 sockets),
 *   FILTER_ADDR6_0..3 (the address as four u32 in memory order; an IPv4
 *   address in its IPv4-mapped form) and, for IPv4, FILTER_ADDR4. */

/* Extra fields, each defined only when asked for:
 *   OUTPUT_SOCK_INFO, OUTPUT_SOCKET_INFO, OUTPUT_STACK. */

/* TRACK_SOCK: once a socket passes the filters, trace it everywhere.
 * TRACK_FREE_IP: address of the function that frees a sock (__sk_destruct),
 * where tracking ends; kprobe backends only. */
#ifndef CALLS_IN_FLIGHT
#define CALLS_IN_FLIGHT 16384
#endif
/* OUTPUT_RETURN: emit events when functions return, with the return value
 * and the duration (kprobe-multi only). FILTER_ERRORS: only calls that
 * returned a negative errno. REG_RET: pt_regs offset of the return value. */
#ifndef REG_RET
#define REG_RET -1
#endif
#define MAX_ERRNO 4095

#ifndef TRACKED_SOCKS
#define TRACKED_SOCKS 65536
#endif

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024 /* 4 MiB with 4 KiB pages; a power of two */
#endif

/* Entry points, each an X-macro list of integers (see the end of this file):
 *   RAW_TRACEPOINTS  RAWTP(probe_id, arg_index, arg_kind) ...
 *   KPROBES          KPROBE(arg_index, arg_kind) ...   (classic kprobes)
 *   KPROBE_MULTI     defined when the kprobe-multi entry is wanted */

/* pt_regs offsets of the first five argument registers and of the
 * instruction pointer, needed by the kprobe entries only. */
#ifndef REG_ARG0
#define REG_ARG0 -1
#define REG_ARG1 -1
#define REG_ARG2 -1
#define REG_ARG3 -1
#define REG_ARG4 -1
#define REG_IP -1
#endif

/* HAVE_GET_FUNC_IP: bpf_get_func_ip() works in kprobes (5.15+). Without it
 * the classic kprobe entry reports the instruction pointer. */

/* Argument kinds, as socketrace.discovery.ArgKind. */
#define ARG_SOCK 0
#define ARG_SOCKET 1
#define ARG_SKB 2

/* kprobe-multi cookie: probe id << 12 | returns a 32-bit int << 8 | arg kind << 4 | arg index. */
#define COOKIE_PROBE_SHIFT 12
#define COOKIE_RETURNS_INT32 (1 << 8)

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define AF_NETLINK 16
#define AF_PACKET 17

_Static_assert(sizeof(struct event) == EVENT_SIZE, "struct event size changed: update events.py");

/* ---- Maps ---------------------------------------------------------------- */

#ifdef OUTPUT_STACK
struct record {
	struct event event;
	u64 stack[MAX_STACK_DEPTH];
};
#else
struct record {
	struct event event;
};
#endif

/*
 * Per-CPU state, one slot per nesting level: a probe hit in process context
 * can be interrupted by a softirq, a hardirq and an NMI that hit probes of
 * their own on the same CPU. Each level takes the next slot and gives it
 * back, so an interrupting probe never overwrites the one it interrupted.
 */
#define MAX_NESTING 4

/* Which probe fired and with what argument, handed from an entry point to
 * the shared handler across the tail call. */
struct pending {
	u64 arg;
	u64 func_ip;
	u32 probe_id;
	u32 arg_kind;
};

BPF_PERCPU_ARRAY(nesting, u32, 1);
BPF_PERCPU_ARRAY(pending, struct pending, MAX_NESTING);
/* The record is built here, not on the 512-byte BPF stack. */
BPF_PERCPU_ARRAY(scratch, struct record, MAX_NESTING);
BPF_PERCPU_ARRAY(counters, u64, COUNTER_MAX);
#ifdef OUTPUT_RETURN
/* Calls in flight, from entry to return: which socket, since when. A
 * function that recurses on the same thread keeps only its innermost call. */
struct call_key {
	u64 pid_tgid;
	u64 func_ip;
};
struct call {
	u64 sk;
	u64 ts_ns;
};
BPF_HASH(calls, struct call_key, struct call, CALLS_IN_FLIGHT);
#endif
#ifdef TRACK_SOCK
/* Sockets that passed the filters. When full, the least recently seen
 * socket is forgotten: it is traced again once it passes the filters. */
BPF_TABLE("lru_hash", u64, u8, tracked, TRACKED_SOCKS);
#endif
/* Slot 0: the shared handler, loaded by user space for the entries' program type. */
BPF_PROG_ARRAY(handlers, 1);

#ifdef USE_PERF_BUFFER
BPF_PERF_OUTPUT(events);
#else
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#endif

/* ---- Field access -------------------------------------------------------- */

/* Read a scalar field described by "offset,size,shift,bits". */
static inline __attribute__((always_inline))
u64 read_scalar(const void *base, int offset, int size, int shift, int bits)
{
	u64 value = 0;

	if (offset < 0 || !base)
		return 0;
	bpf_probe_read_kernel(&value, size & 0xf, (const char *)base + offset);
	value >>= shift;
	if (bits < 64)
		value &= (1ULL << bits) - 1;
	return value;
}

/* Copy a field of up to 127 bytes (an in6_addr, a unix path) to dst. */
static inline __attribute__((always_inline))
void read_bytes(void *dst, const void *base, int offset, int size, int shift, int bits)
{
	if (offset >= 0 && base)
		bpf_probe_read_kernel(dst, size & 0x7f, (const char *)base + offset);
}

#define EXPAND(macro, ...) macro(__VA_ARGS__)
#define FIELD(base, field) EXPAND(read_scalar, base, field)
#define FIELD_BYTES(dst, base, field) EXPAND(read_bytes, dst, base, field)

static inline __attribute__((always_inline)) u16 swap16(u16 value)
{
	return (value >> 8) | (value << 8);
}

static inline __attribute__((always_inline)) void count(u32 index)
{
	u64 *counter = counters.lookup(&index);

	if (counter)
		*counter += 1;
}

/* ---- Filters ------------------------------------------------------------- */

#ifdef FILTER_ADDR6_0
/* Does either end of the socket have the filtered address? For an IPv4
 * filter, FILTER_ADDR6_* hold its IPv4-mapped form (::ffff:a.b.c.d), which
 * matches AF_INET6 sockets talking IPv4. */
static inline __attribute__((always_inline)) bool addr_matches(const void *sk, u16 family)
{
	u32 local[4] = {}, remote[4] = {};

	if (family == AF_INET) {
#ifdef FILTER_ADDR4
		return FIELD(sk, SK_RCV_SADDR) == FILTER_ADDR4 || FIELD(sk, SK_DADDR) == FILTER_ADDR4;
#else
		return false;
#endif
	}
	FIELD_BYTES(local, sk, SK_V6_RCV_SADDR);
	FIELD_BYTES(remote, sk, SK_V6_DADDR);
	return (local[0] == FILTER_ADDR6_0 && local[1] == FILTER_ADDR6_1 &&
		local[2] == FILTER_ADDR6_2 && local[3] == FILTER_ADDR6_3) ||
	       (remote[0] == FILTER_ADDR6_0 && remote[1] == FILTER_ADDR6_1 &&
		remote[2] == FILTER_ADDR6_2 && remote[3] == FILTER_ADDR6_3);
}
#endif

/* All active filters, cheapest first. Unset filters compile to nothing. */
static inline __attribute__((always_inline)) bool passes_filters(const void *sk)
{
	u16 family = FIELD(sk, SK_FAMILY);

#ifdef FILTER_PID
	if ((bpf_get_current_pid_tgid() >> 32) != FILTER_PID)
		return false;
#endif
#ifdef FILTER_INET
	if (family != AF_INET && family != AF_INET6)
		return false;
#endif
#ifdef FILTER_PROTOCOL
	if (FIELD(sk, SK_PROTOCOL) != FILTER_PROTOCOL)
		return false;
#endif
#ifdef FILTER_MARK
	if (FIELD(sk, SK_MARK) != FILTER_MARK)
		return false;
#endif
#ifdef FILTER_PORT
	if (FIELD(sk, SK_NUM) != FILTER_PORT && swap16(FIELD(sk, SK_DPORT)) != FILTER_PORT)
		return false;
#endif
#ifdef FILTER_NETNS
	const void *net = (const void *)FIELD(sk, SK_NET);

	if (FIELD(net, NET_NS_INUM) != FILTER_NETNS)
		return false;
#endif
#ifdef FILTER_ADDR6_0
	if (!addr_matches(sk, family))
		return false;
#endif
	return true;
}

/* ---- The handler --------------------------------------------------------- */

static inline __attribute__((always_inline)) void fill_addresses(struct event *event, const void *sk)
{
	if (event->family == AF_INET6) {
		FIELD_BYTES(event->saddr, sk, SK_V6_RCV_SADDR);
		FIELD_BYTES(event->daddr, sk, SK_V6_DADDR);
	} else if (event->family == AF_INET) {
		*(u32 *)event->saddr = FIELD(sk, SK_RCV_SADDR);
		*(u32 *)event->daddr = FIELD(sk, SK_DADDR);
	}
}

static inline __attribute__((always_inline)) void fill_socket(struct event *event, const void *sk)
{
	const void *socket = (const void *)FIELD(sk, SK_SOCKET);

	if (!socket)
		return;
	event->flags |= EVENT_HAS_SOCKET;
	event->socket_ino = FIELD(socket, SOCKET_INODE_INO);
#ifdef OUTPUT_SOCKET_INFO
	event->socket_state = FIELD(socket, SOCKET_STATE);
	event->socket_type = FIELD(socket, SOCKET_TYPE);
	event->socket_flags = FIELD(socket, SOCKET_FLAGS);
#endif
}

/* The family's own fields: unix path and peer, netlink ports, packet interface. */
static inline __attribute__((always_inline)) void fill_detail(struct event *event, const void *sk)
{
	if (event->family == AF_UNIX) {
		const void *addr = (const void *)FIELD(sk, UNIX_ADDR);
		s32 len = FIELD(addr, UNIX_ADDRESS_LEN) - 2; /* minus sun_family */

		event->detail.unix_sk.peer = FIELD(sk, UNIX_PEER);
		if (addr && len > 0) {
			event->detail.unix_sk.path_len = len > UNIX_PATH_MAX ? UNIX_PATH_MAX : len;
			FIELD_BYTES(event->detail.unix_sk.path, addr, UNIX_ADDRESS_PATH);
		}
	} else if (event->family == AF_NETLINK) {
		const void *groups = (const void *)FIELD(sk, NETLINK_GROUPS);

		event->detail.netlink.portid = FIELD(sk, NETLINK_PORTID);
		event->detail.netlink.dst_portid = FIELD(sk, NETLINK_DST_PORTID);
		if (groups)
			bpf_probe_read_kernel(&event->detail.netlink.groups, sizeof(u64), groups);
	} else if (event->family == AF_PACKET) {
		event->detail.packet.ifindex = FIELD(sk, PACKET_IFINDEX);
	}
}

/* Turn the traced argument into a struct sock *. */
static inline __attribute__((always_inline)) const void *to_sock(u64 arg, int arg_kind)
{
	if (arg_kind == ARG_SOCKET)
		return (const void *)FIELD((const void *)arg, SOCKET_SK);
	if (arg_kind == ARG_SKB)
		return (const void *)FIELD((const void *)arg, SKB_SK);
	return (const void *)arg;
}

/* Build the event for sk in this nesting level's slot and send it. */
static inline __attribute__((always_inline))
void emit_event(void *ctx, u32 level, const void *sk, u32 probe_id, u64 func_ip, s64 retval, u64 duration_ns,
		u8 flags)
{
	struct record *record = scratch.lookup(&level);
	if (!record)
		return;
	struct event *event = &record->event;
	u64 pid_tgid = bpf_get_current_pid_tgid();
	const void *net = (const void *)FIELD(sk, SK_NET);

	__builtin_memset(event, 0, sizeof(*event));
	event->ts_ns = bpf_ktime_get_ns();
	event->sk = (u64)sk;
	event->func_ip = func_ip;
	event->retval = retval;
	event->duration_ns = duration_ns;
	event->flags = flags;
	event->probe_id = probe_id;
	event->tgid = pid_tgid >> 32;
	event->pid = (u32)pid_tgid;
	event->cpu = bpf_get_smp_processor_id();
	event->netns = FIELD(net, NET_NS_INUM);
	event->mark = FIELD(sk, SK_MARK);
	event->family = FIELD(sk, SK_FAMILY);
	event->protocol = FIELD(sk, SK_PROTOCOL);
	event->type = FIELD(sk, SK_TYPE);
	event->state = FIELD(sk, SK_STATE);
	event->sport = FIELD(sk, SK_NUM);
	event->dport = swap16(FIELD(sk, SK_DPORT));
	fill_addresses(event, sk);
	fill_socket(event, sk);
	fill_detail(event, sk);
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	event->reuseport = FIELD(sk, SK_REUSEPORT);
	event->bound_dev_if = FIELD(sk, SK_BOUND_DEV_IF);
#ifdef OUTPUT_SOCK_INFO
	event->rx_dst_ifindex = FIELD(sk, SK_RX_DST_IFINDEX);
	event->backlog_len = FIELD(sk, SK_BACKLOG_LEN);
	event->rcvbuf = FIELD(sk, SK_RCVBUF);
	event->sndbuf = FIELD(sk, SK_SNDBUF);
	event->priority = FIELD(sk, SK_PRIORITY);
#endif
#ifdef OUTPUT_STACK
	event->stack_bytes = bpf_get_stack(ctx, record->stack, sizeof(record->stack), 0);
	if (event->stack_bytes < 0)
		count(COUNTER_STACK_ERRORS);
#endif

#ifdef USE_PERF_BUFFER
	if (events.perf_submit(ctx, record, sizeof(*record)) != 0)
		count(COUNTER_DROPPED);
#else
	if (events.ringbuf_output(record, sizeof(*record), 0) != 0)
		count(COUNTER_DROPPED);
#endif
}

/* Is this socket wanted: the filters, or tracked from an earlier event? */
static inline __attribute__((always_inline)) bool wanted(const void *sk, u64 func_ip)
{
#ifdef TRACK_SOCK
	u64 key = (u64)sk;

	if (!tracked.lookup(&key)) {
		u8 yes = 1;

		if (!passes_filters(sk))
			return false;
		tracked.update(&key, &yes);
	}
#ifdef TRACK_FREE_IP
	if (func_ip == TRACK_FREE_IP)
		tracked.delete(&key);
#endif
	return true;
#else
	return passes_filters(sk);
#endif
}

/* A probe fired at a function's entry (or a tracepoint): emit the event,
 * or with OUTPUT_RETURN remember the call until the function returns. */
static inline __attribute__((always_inline))
int handle_probe(void *ctx, u32 level, u32 probe_id, u64 func_ip, u64 arg, int arg_kind)
{
	const void *sk = to_sock(arg, arg_kind);

	if (!sk || !wanted(sk, func_ip))
		return 0;
#ifdef OUTPUT_RETURN
	struct call_key key = {.pid_tgid = bpf_get_current_pid_tgid(), .func_ip = func_ip};
	struct call call = {.sk = (u64)sk, .ts_ns = bpf_ktime_get_ns()};

	if (calls.update(&key, &call) != 0)
		count(COUNTER_CALLS_LOST);
#else
	emit_event(ctx, level, sk, probe_id, func_ip, 0, 0, 0);
#endif
	return 0;
}

/* ---- Entry points -------------------------------------------------------- */

/*
 * Raw tracepoints and classic kprobes have many entry points: each stores
 * what it knows in its nesting level's `pending` slot and tail-calls the one
 * shared handler, so the handler is compiled once rather than per entry.
 */
/* Take this CPU's next nesting level for the duration of one program run. */
static inline __attribute__((always_inline)) u32 *enter_level(u32 *slot)
{
	u32 zero = 0;
	u32 *level = nesting.lookup(&zero);

	if (!level || *level >= MAX_NESTING) {
		count(COUNTER_DROPPED);
		return 0;
	}
	*slot = *level;
	*level = *slot + 1;
	return level;
}

static inline __attribute__((always_inline))
int enter(void *ctx, u32 probe_id, u64 func_ip, u64 arg, u32 arg_kind)
{
	u32 slot;
	u32 *level = enter_level(&slot);

	if (!level)
		return 0;
	struct pending *entry = pending.lookup(&slot);
	if (entry) {
		entry->arg = arg;
		entry->func_ip = func_ip;
		entry->probe_id = probe_id;
		entry->arg_kind = arg_kind;
		/* The handler gives the level back; it returns here only if the tail call failed. */
		handlers.call(ctx, 0);
	}
	*level = slot;
	count(COUNTER_DROPPED);
	return 0;
}

#if defined(RAW_TRACEPOINTS) || defined(KPROBES)
/* The tail-call target: handles the newest pending entry of this CPU. */
int shared_handler(void *ctx)
{
	u32 zero = 0;
	u32 *level = nesting.lookup(&zero);

	if (!level || *level == 0)
		return 0;
	u32 slot = *level - 1;
	struct pending *entry = pending.lookup(&slot);
	if (entry)
		handle_probe(ctx, slot, entry->probe_id, entry->func_ip, entry->arg, entry->arg_kind);
	*level = slot;
	return 0;
}
#endif

/* One function per raw tracepoint: the program is the only way to know
 * which tracepoint fired. */
#define RAWTP(probe_id, arg_index, arg_kind)                                    \
	int rawtp_##probe_id(struct bpf_raw_tracepoint_args *ctx)               \
	{                                                                       \
		return enter(ctx, probe_id, 0, ctx->args[arg_index], arg_kind); \
	}
#ifdef RAW_TRACEPOINTS
RAW_TRACEPOINTS
#endif

static inline __attribute__((always_inline)) u64 reg_arg(void *ctx, int arg_index)
{
	int offset = arg_index == 0 ? REG_ARG0 : arg_index == 1 ? REG_ARG1 :
		     arg_index == 2 ? REG_ARG2 : arg_index == 3 ? REG_ARG3 : REG_ARG4;
	u64 value = 0;

	if (offset >= 0)
		bpf_probe_read_kernel(&value, sizeof(value), (const char *)ctx + offset);
	return value;
}

static inline __attribute__((always_inline)) u64 entry_ip(void *ctx)
{
#ifdef HAVE_GET_FUNC_IP
	return bpf_get_func_ip(ctx);
#else
	u64 ip = 0;

	bpf_probe_read_kernel(&ip, sizeof(ip), (const char *)ctx + REG_IP);
	return ip;
#endif
}

/* Classic kprobes: one function per argument position and kind, attached to
 * many functions; user space names the function from its address. */
#define KPROBE(arg_index, arg_kind)                                             \
	int kprobe_arg##arg_index##_kind##arg_kind(void *ctx)                   \
	{                                                                       \
		return enter(ctx, (u32)-1, entry_ip(ctx), reg_arg(ctx, arg_index), arg_kind); \
	}
#ifdef KPROBES
KPROBES
#endif

#ifdef KPROBE_MULTI
/* kprobe-multi: one function for every traced function; the cookie says
 * which function it is and where its socket argument is. It runs the
 * handler itself (a kprobe-multi program may not tail-call a kprobe one). */
int kprobe_multi_entry(void *ctx)
{
	u64 cookie = bpf_get_attach_cookie(ctx);
	u32 slot;
	u32 *level = enter_level(&slot);

	if (!level)
		return 0;
	handle_probe(ctx, slot, cookie >> COOKIE_PROBE_SHIFT, bpf_get_func_ip(ctx),
		     reg_arg(ctx, cookie & 0xf), (cookie >> 4) & 0xf);
	*level = slot;
	return 0;
}

#ifdef OUTPUT_RETURN
/* The same functions' returns: the call remembered at entry, now complete. */
int kprobe_multi_return(void *ctx)
{
	struct call_key key = {.pid_tgid = bpf_get_current_pid_tgid(), .func_ip = bpf_get_func_ip(ctx)};
	struct call *call = calls.lookup(&key);
	u64 now = bpf_ktime_get_ns();
	s64 retval = 0;
	u32 slot;

	if (!call)
		return 0;
	struct call done = *call;

	calls.delete(&key);
	u64 cookie = bpf_get_attach_cookie(ctx);

	bpf_probe_read_kernel(&retval, sizeof(retval), (const char *)ctx + REG_RET);
	if (cookie & COOKIE_RETURNS_INT32)
		retval = (s32)retval; /* the upper half of the register is not part of an int */
#ifdef FILTER_ERRORS
	if (retval >= 0 || retval < -MAX_ERRNO)
		return 0;
#endif
	u32 *level = enter_level(&slot);

	if (!level)
		return 0;
	emit_event(ctx, slot, (const void *)done.sk, cookie >> COOKIE_PROBE_SHIFT, key.func_ip,
		   retval, now - done.ts_ns, EVENT_RETURN);
	*level = slot;
	return 0;
}
#endif
#endif
