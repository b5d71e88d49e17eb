// SPDX-License-Identifier: GPL-2.0
/*
 * socketrace: what the kernel does with sockets, one probe for every function
 * (or raw tracepoint) that takes one.
 *
 * Compiled by BCC at run time with no kernel headers: this file defines no
 * kernel struct. Every struct field it reads is a -D macro of four integers
 * "offset,size,shift,bits" taken from the running kernel's BTF by
 * socketrace/discovery.py (offset -1: the kernel lacks the field, read 0).
 * Every filter is a -D macro too, defined only when the filter is active, and
 * every constant shared with user space (counters, flags, cookie layout, entry
 * names) comes from socketrace/contract.py. socketrace/program.py builds the
 * whole list; `socketrace --ebpf` prints it.
 *
 * Each run of an entry program ends in exactly one counter (see contract.py's
 * Counter): rejected runs as cheaply as possible (filters first, reading only
 * the fields they need, no scratch, no tail call), the rest as an event, a
 * summary count, a remembered call, or a drop by cause.
 */
#include "socketrace.h"

#ifndef __always_inline /* the kernel's compiler.h is not among the stand-in headers */
#define __always_inline inline __attribute__((always_inline))
#endif

/* ---- Tunables (defaults; program.py overrides) ---------------------------- */

/* Filters, each defined only when set:
 *   FILTER_PID, FILTER_NETNS, FILTER_MARK, FILTER_PROTOCOL, FILTER_PORT,
 *   FILTER_INET (drop non-AF_INET/AF_INET6 sockets),
 *   FILTER_ADDR6_0..3 (the address as four u32 in memory order; an IPv4
 *   address in its IPv4-mapped form) and, for IPv4, FILTER_ADDR4. */

/* What to do with a wanted socket, each defined only when asked for:
 *   OUTPUT_SOCK_INFO, OUTPUT_SOCKET_INFO, OUTPUT_STACK: extra event fields;
 *   OUTPUT_SUMMARY: count in maps here instead of sending events;
 *   OUTPUT_RETURN: remember the call, emit at its return (kprobe-multi);
 *   FILTER_ERRORS: only returns of a negative errno or an ERR_PTR. */

/* TRACK_SOCK: once a socket passes the filters, trace it everywhere.
 * TRACK_FREE_PROBE_ID / TRACK_FREE_IP: the probe (kprobe-multi) or the
 * address (classic kprobes) of the function that frees a sock, where
 * tracking ends. */
#ifndef TRACKED_SOCKS
#define TRACKED_SOCKS 65536
#endif
#ifndef CALLS_IN_FLIGHT
#define CALLS_IN_FLIGHT 16384
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024 /* 4 MiB with 4 KiB pages; a power of two */
#endif
/* Wake the reader once per this many events of a CPU; between wakeups it
 * finds the events when its poll times out. */
#ifndef WAKEUP_EVERY
#define WAKEUP_EVERY 64
#endif
/* --summary: one row per probe, and LRU tables of sockets and processes. */
#ifndef SUMMARY_PROBES
#define SUMMARY_PROBES 1
#endif
#ifndef SUMMARY_SOCKS
#define SUMMARY_SOCKS 8192
#endif
#ifndef SUMMARY_TASKS
#define SUMMARY_TASKS 4096
#endif
#define LATENCY_BUCKETS 32 /* log2 of nanoseconds: up to ~4 s */

/* Bytes of a sock copied in one read when an event is built: SK_COMMON_SPAN
 * covers the sock_common fields (valid in every sock, mini ones included),
 * SK_SPAN every field the event shows; SOCKET_SPAN the struct socket fields
 * and the inode number that follows it. Fields past a span are read alone. */
#ifndef SPAN_MAX
#error "SPAN_MAX is defined by socketrace/program.py, which computes the spans within it"
#endif
#ifndef SK_HEAD_SPAN
#define SK_HEAD_SPAN 8 /* family, state, ports and IPv4 addresses: what the cheap filters read */
#endif
#ifndef SK_COMMON_SPAN
#define SK_COMMON_SPAN 8
#endif
#ifndef SK_SPAN
#define SK_SPAN SK_COMMON_SPAN
#endif
#ifndef SOCKET_SPAN
#define SOCKET_SPAN 8
#endif

/* Entry points, each an X-macro list (see the end of this file):
 *   RAW_TRACEPOINTS  RAWTP(name, probe_id, arg_index, arg_kind) ...
 *   KPROBES          KPROBE(name, arg_index, arg_kind) ...   (classic kprobes)
 *   KPROBE_MULTI     defined when the kprobe-multi entry is wanted
 * EMPTY_ENTRIES makes every entry return at once (the benchmarks' floor). */

/* pt_regs offsets of the first five argument registers, the instruction
 * pointer and the return value, for the kprobe entries (from BTF, per
 * architecture). HAVE_GET_FUNC_IP: bpf_get_func_ip() works in kprobes (5.15+);
 * without it classic kprobes report the instruction pointer. */

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define AF_NETLINK 16
#define AF_PACKET 17
#define IPPROTO_TCP 6
#define TCP_TIME_WAIT 6
#define TCP_NEW_SYN_RECV 12
#define MAX_ERRNO 4095
#define BPF_RB_NO_WAKEUP_FLAG 1
#define BPF_RB_FORCE_WAKEUP_FLAG 2

_Static_assert(sizeof(struct event) == EVENT_SIZE, "struct event no longer matches socketrace/contract.py");

/* Helpers newer than some BCC releases' helpers.h, declared by number
 * (include/uapi/linux/bpf.h): get_func_ip (5.15), get_attach_cookie (5.15). */
static u64 (*st_get_func_ip)(void *ctx) = (void *)173;
static u64 (*st_get_attach_cookie)(void *ctx) = (void *)174;

/* ---- Maps ---------------------------------------------------------------- */

/* control[0]: CONTROL_TRACING once everything is attached, until the stop. */
BPF_ARRAY(control, u32, 1);

/*
 * Per-CPU state: the counters, and the nesting level. A probe hit in process
 * context can be interrupted by a softirq, a hardirq and an NMI that hit probes
 * of their own on the same CPU; each takes the next level's slot and gives it
 * back, so an interrupting probe never overwrites the one it interrupted.
 */
#define MAX_NESTING 4

/* A wanted socket, handed from an entry to the shared handler across the tail call. */
struct pending {
	u64 sk;
	u64 func_ip;
	u32 probe_id;
	u32 pad;
};

struct cpu_state {
	u64 counters[COUNTER_MAX];
	struct pending pending[MAX_NESTING];
	u32 nesting;
	u32 pad;
};
BPF_PERCPU_ARRAY(cpu_states, struct cpu_state, 1);

/* Copies of the structs an event is built from, per nesting level. */
struct scratch {
	u8 sock[SPAN_MAX];
	u8 socket[SPAN_MAX];
#ifdef USE_PERF_BUFFER
	struct event event;
	u64 stack[MAX_STACK_DEPTH];
#endif
};

#ifdef OUTPUT_RETURN
/* Calls in flight, from entry to return: which socket, since when. A
 * function that recurses on the same thread keeps only its innermost call. */
struct call_key {
	u64 pid_tgid;
	u64 probe_id;
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

#ifdef OUTPUT_SUMMARY
/* Counts kept here, read by user space every interval: per probe (per CPU, so
 * no two CPUs share a counter; classic kprobes carry no probe id and count per
 * function address), per socket and per process (LRU tables), and with
 * --output-return the latencies per probe. */
#ifdef KPROBES
BPF_HASH(summary_counts, u64, u64, SUMMARY_PROBES);
#else
BPF_PERCPU_ARRAY(summary_counts, u64, SUMMARY_PROBES);
#endif
struct latency_summary {
	u64 total_ns;
	u64 max_ns;
	u64 buckets[LATENCY_BUCKETS]; /* calls by log2(duration in ns) */
};
#ifdef OUTPUT_RETURN
BPF_ARRAY(summary_latency, struct latency_summary, SUMMARY_PROBES);
#endif
struct sock_summary {
	u64 count;
	u32 netns;
	u16 family;
	u16 protocol;
	u16 sport;
	u16 dport;
	u32 pad;
	u8 saddr[16];
	u8 daddr[16];
};
struct task_summary {
	u64 count;
	char comm[EVENT_COMM_LEN];
};
BPF_TABLE("lru_hash", u64, struct sock_summary, summary_socks, SUMMARY_SOCKS);
BPF_TABLE("lru_hash", u32, struct task_summary, summary_tasks, SUMMARY_TASKS);
#else
BPF_PERCPU_ARRAY(scratch_space, struct scratch, MAX_NESTING);
#ifdef USE_PERF_BUFFER
BPF_PERF_OUTPUT(events);
#else
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#endif
#endif

#if defined(RAW_TRACEPOINTS) || defined(KPROBES)
/* Slot 0: the shared handler, loaded by user space for the entries' program type. */
BPF_PROG_ARRAY(handlers, 1);
#endif

/* --filter's port sets (filter_expr.py: a long `or` of ports of one end), filled by
 * program.py before attaching: PORT_SET_<n>_SIZE ports each, looked up by port_in_set_<n>(). */
#ifdef PORT_SET_0_SIZE
BPF_HASH(port_set_0, u16, u8, PORT_SET_0_SIZE);
#endif
#ifdef PORT_SET_1_SIZE
BPF_HASH(port_set_1, u16, u8, PORT_SET_1_SIZE);
#endif
#ifdef PORT_SET_2_SIZE
BPF_HASH(port_set_2, u16, u8, PORT_SET_2_SIZE);
#endif
#ifdef PORT_SET_3_SIZE
BPF_HASH(port_set_3, u16, u8, PORT_SET_3_SIZE);
#endif
/* --filter's prefix sets (a long `or` of prefixes of one end and family): longest-prefix-match
 * tries keyed by the address's network-order bytes, as the u32 loads of the head copy hold them. */
struct prefix4_key {
	u32 prefixlen;
	u32 addr;
};
struct prefix6_key {
	u32 prefixlen;
	u32 addr[4];
};
#ifdef PREFIX4_SET_0_SIZE
BPF_LPM_TRIE(prefix4_set_0, struct prefix4_key, u8, PREFIX4_SET_0_SIZE);
#endif
#ifdef PREFIX4_SET_1_SIZE
BPF_LPM_TRIE(prefix4_set_1, struct prefix4_key, u8, PREFIX4_SET_1_SIZE);
#endif
#ifdef PREFIX6_SET_0_SIZE
BPF_LPM_TRIE(prefix6_set_0, struct prefix6_key, u8, PREFIX6_SET_0_SIZE);
#endif
#ifdef PREFIX6_SET_1_SIZE
BPF_LPM_TRIE(prefix6_set_1, struct prefix6_key, u8, PREFIX6_SET_1_SIZE);
#endif

/*
 * MAPS_ONLY: the maps alone, for a run whose functions come from the compile
 * cache (socketrace/compiled.py): BCC creates the maps from these declarations
 * as always, and the cached instructions are loaded against them.
 */
#ifndef MAPS_ONLY

/* ---- Field access -------------------------------------------------------- */

/* Read a scalar field described by "offset,size,shift,bits" from kernel memory. */
static __always_inline u64 read_scalar(const void *base, int offset, int size, int shift, int bits)
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

/* The same field from a copy of the struct's first span bytes; past the span,
 * from the kernel. Every argument is a constant, so this folds to one load. */
static __always_inline
u64 span_scalar(const u8 *copy, int span, const void *base, int offset, int size, int shift, int bits)
{
	u64 value = 0;

	if (offset < 0)
		return 0;
	if (offset + size > span || offset + size > SPAN_MAX)
		return read_scalar(base, offset, size, shift, bits);
	if (size == 1)
		value = *(const u8 *)(copy + offset);
	else if (size == 2)
		value = *(const u16 *)(copy + offset);
	else if (size == 4)
		value = *(const u32 *)(copy + offset);
	else
		value = *(const u64 *)(copy + offset);
	value >>= shift;
	if (bits < 64)
		value &= (1ULL << bits) - 1;
	return value;
}

#define EXPAND(macro, ...) macro(__VA_ARGS__)
#define FIELD(base, ...) EXPAND(read_scalar, base, __VA_ARGS__)
#define SPAN_FIELD(copy, span, base, ...) EXPAND(span_scalar, copy, span, base, __VA_ARGS__)
#define FIELD_OFFSET_OF(offset, size, shift, bits) (offset)
#define FIELD_OFFSET(...) EXPAND(FIELD_OFFSET_OF, __VA_ARGS__)

static __always_inline u16 swap16(u16 value)
{
	return (value >> 8) | (value << 8);
}

static __always_inline struct cpu_state *this_cpu(void)
{
	u32 zero = 0;

	return cpu_states.lookup(&zero);
}

/* Atomic: a probe in an interrupt may count on this CPU meanwhile. */
#define COUNT(cpu, counter) __sync_fetch_and_add(&(cpu)->counters[counter], 1)

static __always_inline bool tracing(void)
{
	u32 zero = 0;
	u32 *state = control.lookup(&zero);

	return state && *state == CONTROL_TRACING;
}

/* Mini socks (time-wait, request) have only sock_common: the kernel's sk_fullsock(). */
static __always_inline bool full_sock(u8 state)
{
	return state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV;
}

/*
 * The local port in host order, as the kernel reports it: the
 * inet_sock_set_state tracepoint reads inet_sport of a full inet sock,
 * inet_diag (ss) skc_num of any sock, which is the same port while the sock
 * is hashed (the only socks ss lists). skc_num is the key of the bind hash:
 * __inet_put_port() and udp_lib_unhash() zero it when the socket gives its
 * port back, e.g. in tcp_set_state(TCP_CLOSE) before inet_sk_state_store()
 * fires the tracepoint, or in tcp_v4_destroy_sock(); inet_sport keeps the
 * port to the end (tcp_disconnect() leaves it too; __udp_disconnect() and
 * ping_unhash() zero it). A time-wait sock has both copied from its full sock
 * (inet_twsk_alloc()): tw_sport. A request sock has only sock_common: skc_num
 * is its ir_num. Other families, or a kernel without the field: skc_num.
 * `copy` holds the sock's first `span` bytes (family, state, skc_num).
 */
static __always_inline u16 local_port(const u8 *copy, int span, const void *sk)
{
	u16 family = SPAN_FIELD(copy, span, sk, SK_FAMILY);
	u8 state = SPAN_FIELD(copy, span, sk, SK_STATE);
	u16 num = SPAN_FIELD(copy, span, sk, SK_NUM);

	if ((family != AF_INET && family != AF_INET6) || state == TCP_NEW_SYN_RECV)
		return num;
	if (state == TCP_TIME_WAIT)
		return FIELD_OFFSET(TW_SPORT) < 0 ? num : swap16(FIELD(sk, TW_SPORT));
	return FIELD_OFFSET(INET_SPORT) < 0 ? num : swap16(FIELD(sk, INET_SPORT));
}

/* ---- Filters ------------------------------------------------------------- */

#define HEAD(head, sk, ...) SPAN_FIELD(head, SK_HEAD_SPAN, sk, __VA_ARGS__)

#ifdef FILTER_ADDR6_0
/* Does either end of the socket have the filtered address? For an IPv4
 * filter, FILTER_ADDR6_* hold its IPv4-mapped form (::ffff:a.b.c.d), which
 * matches AF_INET6 sockets talking IPv4. */
static __always_inline bool addr_matches(const void *sk, const u8 *head, u16 family)
{
	u32 local[4] = {}, remote[4] = {};

	if (family == AF_INET) {
#ifdef FILTER_ADDR4
		return HEAD(head, sk, SK_RCV_SADDR) == FILTER_ADDR4 || HEAD(head, sk, SK_DADDR) == FILTER_ADDR4;
#else
		return false;
#endif
	}
	if (FIELD_OFFSET(SK_V6_RCV_SADDR) < 0 || FIELD_OFFSET(SK_V6_DADDR) < 0)
		return false; /* a kernel without IPv6 */
	bpf_probe_read_kernel(local, sizeof(local), (const char *)sk + FIELD_OFFSET(SK_V6_RCV_SADDR));
	bpf_probe_read_kernel(remote, sizeof(remote), (const char *)sk + FIELD_OFFSET(SK_V6_DADDR));
	return (local[0] == FILTER_ADDR6_0 && local[1] == FILTER_ADDR6_1 &&
		local[2] == FILTER_ADDR6_2 && local[3] == FILTER_ADDR6_3) ||
	       (remote[0] == FILTER_ADDR6_0 && remote[1] == FILTER_ADDR6_1 &&
		remote[2] == FILTER_ADDR6_2 && remote[3] == FILTER_ADDR6_3);
}
#endif

/* A mini sock (time-wait, request) is TCP's; its sk_protocol would be another
 * object's bytes, so read_protocol is evaluated only for a full sock. */
#define PROTOCOL_OF(state, read_protocol) (full_sock(state) ? (read_protocol) : IPPROTO_TCP)

/* All active filters, cheapest first. The sock's head (family, state, ports,
 * IPv4 addresses: SK_HEAD_SPAN bytes) is copied in one read when any filter
 * needs it; the other fields are read only by the filter that needs them, and
 * only once the cheaper ones have passed. Unset filters compile to nothing. */
#if !defined(FILTERS_READ_HEAD) && (defined(FILTER_INET) || defined(FILTER_PORT) || defined(FILTER_ADDR6_0) || \
				    defined(FILTER_PROTOCOL) || defined(FILTER_MARK))
#define FILTERS_READ_HEAD /* program.py also defines it when FILTER_EXPR reads the head */
#endif

#ifdef FILTER_EXPR
/*
 * --filter EXPR: FILTER_EXPR is one C expression (socketrace/filter_expr.py's
 * to_c) over these accessors, made of integers, accessor names and operators
 * only. HAVE_<accessor> says which it reads; program.py then puts every head
 * field it needs, the IPv6 addresses included, into the one head copy
 * (SK_HEAD_SPAN). Fields that cost a read of their own (mark, protocol, netns)
 * are read at most once per run, at the first term that needs them: the
 * expression tests cheap accessors first, so most rejected runs never read
 * them at all.
 */
#define F_PID ((u32)(bpf_get_current_pid_tgid() >> 32))
#define F_FAMILY ((u16)HEAD(head, sk, SK_FAMILY))
#define F_STATE ((u8)HEAD(head, sk, SK_STATE))
#define F_DPORT swap16(HEAD(head, sk, SK_DPORT))
#define F_SPORT expr_sport
#define F_SADDR4 ((u32)HEAD(head, sk, SK_RCV_SADDR))
#define F_DADDR4 ((u32)HEAD(head, sk, SK_DADDR))
#define F_SADDR6(i) head_word(head, sk, FIELD_OFFSET(SK_V6_RCV_SADDR), i)
#define F_DADDR6(i) head_word(head, sk, FIELD_OFFSET(SK_V6_DADDR), i)
/* Read once: `known` says whether `value` holds the field yet. */
#define ONCE(name, read) (name##_known ? name##_value : (name##_known = 1, name##_value = (read)))
#define F_PROTOCOL ONCE(expr_protocol, PROTOCOL_OF(F_STATE, FIELD(sk, SK_PROTOCOL)))
#define F_MARK ONCE(expr_mark, full_sock(F_STATE) ? (u32)FIELD(sk, SK_MARK) : 0)
#define F_NETNS ONCE(expr_netns, (u32)FIELD((const void *)FIELD(sk, SK_NET), NET_NS_INUM))

/* A port's membership of a port set: one hash lookup however long the list. */
#ifdef PORT_SET_0_SIZE
static __always_inline bool port_in_set_0(u16 port) { return port_set_0.lookup(&port) != 0; }
#endif
#ifdef PORT_SET_1_SIZE
static __always_inline bool port_in_set_1(u16 port) { return port_set_1.lookup(&port) != 0; }
#endif
#ifdef PORT_SET_2_SIZE
static __always_inline bool port_in_set_2(u16 port) { return port_set_2.lookup(&port) != 0; }
#endif
#ifdef PORT_SET_3_SIZE
static __always_inline bool port_in_set_3(u16 port) { return port_set_3.lookup(&port) != 0; }
#endif
/* An address's membership of a prefix set: one trie lookup (the longest prefix wins; any will do). */
#ifdef PREFIX4_SET_0_SIZE
static __always_inline bool in_prefix4_set_0(u32 addr)
{
	struct prefix4_key key = {.prefixlen = 32, .addr = addr};

	return prefix4_set_0.lookup(&key) != 0;
}
#endif
#ifdef PREFIX4_SET_1_SIZE
static __always_inline bool in_prefix4_set_1(u32 addr)
{
	struct prefix4_key key = {.prefixlen = 32, .addr = addr};

	return prefix4_set_1.lookup(&key) != 0;
}
#endif
#ifdef PREFIX6_SET_0_SIZE
static __always_inline bool in_prefix6_set_0(u32 w0, u32 w1, u32 w2, u32 w3)
{
	struct prefix6_key key = {.prefixlen = 128, .addr = {w0, w1, w2, w3}};

	return prefix6_set_0.lookup(&key) != 0;
}
#endif
#ifdef PREFIX6_SET_1_SIZE
static __always_inline bool in_prefix6_set_1(u32 w0, u32 w1, u32 w2, u32 w3)
{
	struct prefix6_key key = {.prefixlen = 128, .addr = {w0, w1, w2, w3}};

	return prefix6_set_1.lookup(&key) != 0;
}
#endif

/* Word i (0-3) of a 16-byte field (an IPv6 address) as a u32 load: from the
 * head copy when it is within it (program.py sees to that), else read alone;
 * 0 where the kernel lacks the field. */
static __always_inline u32 head_word(const u8 *head, const void *sk, int offset, int i)
{
	u32 word = 0;

	if (offset < 0)
		return 0;
	offset += 4 * i;
	if (offset + 4 <= SK_HEAD_SPAN && offset + 4 <= SPAN_MAX)
		return *(const u32 *)(head + offset);
	bpf_probe_read_kernel(&word, sizeof(word), (const char *)sk + offset);
	return word;
}

/* The local port local_port() shows. A set skc_num is the port inet_sport
 * holds (see FILTER_PORT below), so the head copy decides; only a sock whose
 * skc_num is 0 costs local_port()'s read. */
static __always_inline u16 expr_local_port(const u8 *head, const void *sk)
{
	u16 num = HEAD(head, sk, SK_NUM);

	return num ? num : local_port(head, SK_HEAD_SPAN, sk);
}
#endif

static __always_inline bool passes_filters(const void *sk)
{
#ifdef FILTER_PID
	if ((bpf_get_current_pid_tgid() >> 32) != FILTER_PID)
		return false;
#endif
#ifdef FILTERS_READ_HEAD
	u8 head[SK_HEAD_SPAN] __attribute__((aligned(8)));

	bpf_probe_read_kernel(head, sizeof(head), sk);
#endif
#ifdef FILTER_PORT
	/* The port local_port() shows, or the remote one. A set skc_num is the
	 * port inet_sport holds (both are set together: __inet_bind(),
	 * inet_autobind(), __inet_hash_connect(), inet_csk_clone_lock()), so the
	 * copy decides; only a sock whose skc_num is 0 (its port given back, or
	 * none yet) costs a read of inet_sport. Inside the bind or connect that
	 * sets them, skc_num is set a moment before inet_sport: a sock matched
	 * there by skc_num shows its inet_sport, still 0 (or the port it had
	 * before a disconnect). */
	u16 num = HEAD(head, sk, SK_NUM);

	if (num != FILTER_PORT && swap16(HEAD(head, sk, SK_DPORT)) != FILTER_PORT &&
	    (num != 0 || local_port(head, SK_HEAD_SPAN, sk) != FILTER_PORT))
		return false;
#endif
#if defined(FILTER_INET) || defined(FILTER_ADDR6_0)
	u16 family = HEAD(head, sk, SK_FAMILY);

	if (family != AF_INET && family != AF_INET6)
		return false;
#endif
#ifdef FILTER_EXPR
	{
#ifdef HAVE_F_SPORT
		u16 expr_sport = expr_local_port(head, sk);
#endif
#ifdef HAVE_F_PROTOCOL
		u16 expr_protocol_value = 0;
		bool expr_protocol_known = false;
#endif
#ifdef HAVE_F_MARK
		u32 expr_mark_value = 0;
		bool expr_mark_known = false;
#endif
#ifdef HAVE_F_NETNS
		u32 expr_netns_value = 0;
		bool expr_netns_known = false;
#endif
		/* `and`ed with the single-value flags: after the cheap ones, before those that read. */
		if (!(FILTER_EXPR))
			return false;
	}
#endif
#ifdef FILTER_PROTOCOL
	if (PROTOCOL_OF(HEAD(head, sk, SK_STATE), FIELD(sk, SK_PROTOCOL)) != FILTER_PROTOCOL)
		return false;
#endif
#ifdef FILTER_MARK
	if (!full_sock(HEAD(head, sk, SK_STATE)) || FIELD(sk, SK_MARK) != FILTER_MARK)
		return false;
#endif
#ifdef FILTER_NETNS
	const void *net = (const void *)FIELD(sk, SK_NET);

	if (FIELD(net, NET_NS_INUM) != FILTER_NETNS)
		return false;
#endif
#ifdef FILTER_ADDR6_0
	if (!addr_matches(sk, head, family))
		return false;
#endif
	return true;
}

static __always_inline u64 entry_ip(void *ctx);

/* Is this the function that frees socks, where tracking ends? */
static __always_inline bool frees_sock(void *ctx, u32 probe_id)
{
#if defined(TRACK_FREE_PROBE_ID)
	return probe_id == TRACK_FREE_PROBE_ID;
#elif defined(TRACK_FREE_IP)
	return entry_ip(ctx) - TRACK_FREE_IP < IP_TOLERANCE; /* the ip may point just past the breakpoint */
#else
	return false;
#endif
}

/* Is this socket wanted: the filters, or tracked since an earlier event? */
static __always_inline bool wanted(void *ctx, const void *sk, u32 probe_id)
{
#ifdef TRACK_SOCK
	u64 key = (u64)sk;

	if (!tracked.lookup(&key)) {
		u8 yes = 1;

		if (!passes_filters(sk))
			return false;
		tracked.update(&key, &yes);
	}
	if (frees_sock(ctx, probe_id))
		tracked.delete(&key);
	return true;
#else
	return passes_filters(sk);
#endif
}

/* Turn the traced argument into a struct sock *. */
static __always_inline const void *to_sock(u64 arg, u32 arg_kind)
{
	if (arg_kind == ARG_SOCKET)
		return (const void *)FIELD((const void *)arg, SOCKET_SK);
	if (arg_kind == ARG_SKB)
		return (const void *)FIELD((const void *)arg, SKB_SK);
	return (const void *)arg;
}

/* The first part of every entry: the wanted socket, or NULL with the run counted. */
static __always_inline
const void *admit(void *ctx, struct cpu_state *cpu, u64 arg, u32 arg_kind, u32 probe_id)
{
	const void *sk;

	if (!tracing()) {
		COUNT(cpu, COUNTER_NOT_TRACING);
		return 0;
	}
	sk = to_sock(arg, arg_kind);
	if (!sk) {
		COUNT(cpu, COUNTER_NO_SOCK);
		return 0;
	}
	if (!wanted(ctx, sk, probe_id)) {
		COUNT(cpu, COUNTER_FILTERED);
		return 0;
	}
	return sk;
}

/* ---- Events -------------------------------------------------------------- */

#define SK(copy, sk, ...) SPAN_FIELD(copy, SK_SPAN, sk, __VA_ARGS__)

static __always_inline void copy_addresses(struct event *event, const u8 *copy, const void *sk)
{
	if (event->family == AF_INET6) {
		if (FIELD_OFFSET(SK_V6_RCV_SADDR) >= 0 && FIELD_OFFSET(SK_V6_RCV_SADDR) + 16 <= SK_COMMON_SPAN)
			__builtin_memcpy(event->saddr, copy + FIELD_OFFSET(SK_V6_RCV_SADDR), 16);
		if (FIELD_OFFSET(SK_V6_DADDR) >= 0 && FIELD_OFFSET(SK_V6_DADDR) + 16 <= SK_COMMON_SPAN)
			__builtin_memcpy(event->daddr, copy + FIELD_OFFSET(SK_V6_DADDR), 16);
	} else if (event->family == AF_INET) {
		*(u32 *)event->saddr = SK(copy, sk, SK_RCV_SADDR);
		*(u32 *)event->daddr = SK(copy, sk, SK_DADDR);
	}
}

/* The struct socket's fields and inode, in one copy. */
static __always_inline void fill_socket(struct event *event, u8 *copy, const void *socket)
{
	if (!socket)
		return;
	event->sock_flags |= SOCK_HAS_SOCKET;
	bpf_probe_read_kernel(copy, SOCKET_SPAN, socket);
	event->socket_ino = SPAN_FIELD(copy, SOCKET_SPAN, socket, SOCKET_INODE_INO);
#ifdef OUTPUT_SOCKET_INFO
	event->socket_state = SPAN_FIELD(copy, SOCKET_SPAN, socket, SOCKET_STATE);
	event->socket_type = SPAN_FIELD(copy, SOCKET_SPAN, socket, SOCKET_TYPE);
	event->socket_flags = SPAN_FIELD(copy, SOCKET_SPAN, socket, SOCKET_FLAGS);
#endif
}

/* The family's own fields: unix path and peer, netlink ports, packet interface. */
static __always_inline void fill_detail(struct event *event, const void *sk)
{
	if (event->family == AF_UNIX) {
		const void *addr = (const void *)FIELD(sk, UNIX_ADDR);
		s32 len = FIELD(addr, UNIX_ADDRESS_LEN) - 2; /* minus sun_family */

		event->detail.unix_sk.peer = FIELD(sk, UNIX_PEER);
		if (addr && len > 0 && FIELD_OFFSET(UNIX_ADDRESS_PATH) >= 0) {
			event->detail.unix_sk.path_len = len > EVENT_UNIX_PATH_MAX ? EVENT_UNIX_PATH_MAX : len;
			bpf_probe_read_kernel(event->detail.unix_sk.path, EVENT_UNIX_PATH_MAX,
					      (const char *)addr + FIELD_OFFSET(UNIX_ADDRESS_PATH));
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

#ifndef OUTPUT_SUMMARY
/* Everything the event shows about sk: one copy of the sock (two reads for a
 * full sock), one of its struct socket, then plain loads from the copies. */
static __always_inline void fill_event(struct event *event, struct scratch *scratch, const void *sk)
{
	u8 *copy = scratch->sock;
	u64 pid_tgid = bpf_get_current_pid_tgid();

	__builtin_memset(event, 0, sizeof(*event));
	event->ts_ns = bpf_ktime_get_ns();
	event->sk = (u64)sk;
	event->tgid = pid_tgid >> 32;
	event->pid = (u32)pid_tgid;
	event->cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(event->comm, sizeof(event->comm));

	bpf_probe_read_kernel(copy, SK_COMMON_SPAN, sk);
	event->state = SK(copy, sk, SK_STATE);
	if (full_sock(event->state)) {
		if (SK_SPAN > SK_COMMON_SPAN)
			bpf_probe_read_kernel(copy + SK_COMMON_SPAN, SK_SPAN - SK_COMMON_SPAN,
					      (const char *)sk + SK_COMMON_SPAN);
	} else if (SK_SPAN > SK_COMMON_SPAN) {
		__builtin_memset(copy + SK_COMMON_SPAN, 0, SK_SPAN - SK_COMMON_SPAN);
	}
	event->family = SK(copy, sk, SK_FAMILY);
	event->protocol = PROTOCOL_OF(event->state, SK(copy, sk, SK_PROTOCOL));
	event->type = SK(copy, sk, SK_TYPE);
	event->sport = local_port(copy, SK_SPAN, sk);
	event->dport = swap16(SK(copy, sk, SK_DPORT));
	event->cookie = SK(copy, sk, SK_COOKIE);
	event->mark = SK(copy, sk, SK_MARK);
	event->reuseport = SK(copy, sk, SK_REUSEPORT);
	event->bound_dev_if = SK(copy, sk, SK_BOUND_DEV_IF);
	event->netns = FIELD((const void *)SK(copy, sk, SK_NET), NET_NS_INUM);
	copy_addresses(event, copy, sk);
#ifdef OUTPUT_SOCK_INFO
	event->rx_dst_ifindex = SK(copy, sk, SK_RX_DST_IFINDEX);
	event->backlog_len = SK(copy, sk, SK_BACKLOG_LEN);
	event->rcvbuf = SK(copy, sk, SK_RCVBUF);
	event->sndbuf = SK(copy, sk, SK_SNDBUF);
	event->priority = SK(copy, sk, SK_PRIORITY);
#endif
	if (full_sock(event->state))
		fill_socket(event, scratch->socket, (const void *)SK(copy, sk, SK_SOCKET));
	fill_detail(event, sk);
}

#ifdef OUTPUT_STACK
#define RECORD_SIZE (sizeof(struct event) + MAX_STACK_DEPTH * sizeof(u64))
#else
#define RECORD_SIZE sizeof(struct event)
#endif

/* Build the event for sk, in the ring buffer's own memory (or in this nesting
 * level's slot for the perf buffer), and send it. */
static __always_inline
void emit_event(void *ctx, struct cpu_state *cpu, u32 level, const void *sk, u32 probe_id, u64 func_ip,
		s64 retval, u64 duration_ns, u32 flags, bool at_return)
{
	struct scratch *scratch = scratch_space.lookup(&level);
	struct event *event;

	if (!scratch)
		return;
#ifdef USE_PERF_BUFFER
	event = &scratch->event;
#else
	event = events.ringbuf_reserve(RECORD_SIZE);
	if (!event) {
		COUNT(cpu, at_return ? COUNTER_RETURN_BUFFER_FULL : COUNTER_BUFFER_FULL);
		return;
	}
#endif
	fill_event(event, scratch, sk);
	event->probe_id = probe_id;
	event->func_ip = func_ip;
	event->retval = retval;
	event->duration_ns = duration_ns;
	event->flags = flags;
#ifdef OUTPUT_STACK
	event->stack_bytes = bpf_get_stack(ctx, (u8 *)event + sizeof(struct event), MAX_STACK_DEPTH * sizeof(u64), 0);
	if (event->stack_bytes < 0)
		COUNT(cpu, COUNTER_STACK_ERRORS);
#endif
#ifdef USE_PERF_BUFFER
	/* scratch->stack follows scratch->event: one record. */
	if (events.perf_submit(ctx, event, RECORD_SIZE) != 0) {
		COUNT(cpu, at_return ? COUNTER_RETURN_BUFFER_FULL : COUNTER_BUFFER_FULL);
		return;
	}
	COUNT(cpu, at_return ? COUNTER_RETURN_EMITTED : COUNTER_EMITTED);
#else
	COUNT(cpu, at_return ? COUNTER_RETURN_EMITTED : COUNTER_EMITTED);
	/* Wake the reader now and then, not per event: a busy producer would pay for each. */
	u64 sent = cpu->counters[COUNTER_EMITTED] + cpu->counters[COUNTER_RETURN_EMITTED];

	events.ringbuf_submit(event, sent % WAKEUP_EVERY ? BPF_RB_NO_WAKEUP_FLAG : BPF_RB_FORCE_WAKEUP_FLAG);
#endif
}
#endif /* !OUTPUT_SUMMARY */

#ifdef OUTPUT_SUMMARY
static __always_inline u32 log2_bucket(u64 value)
{
	u32 bucket = 0;

#pragma unroll
	for (int bit = 32; bit > 0; bit /= 2) {
		if (value >> bit) {
			value >>= bit;
			bucket += bit;
		}
	}
	return bucket < LATENCY_BUCKETS ? bucket : LATENCY_BUCKETS - 1;
}

/* A socket's row: the tuple as it is now (a socket gets its ports and addresses as it goes). */
static __always_inline void label_sock(struct sock_summary *row, const void *sk)
{
	u8 copy[SK_COMMON_SPAN];

	bpf_probe_read_kernel(copy, sizeof(copy), sk);
	row->family = SPAN_FIELD(copy, SK_COMMON_SPAN, sk, SK_FAMILY);
	row->protocol = PROTOCOL_OF(SPAN_FIELD(copy, SK_COMMON_SPAN, sk, SK_STATE), FIELD(sk, SK_PROTOCOL));
	row->sport = local_port(copy, SK_COMMON_SPAN, sk);
	row->dport = swap16(SPAN_FIELD(copy, SK_COMMON_SPAN, sk, SK_DPORT));
	row->netns = FIELD((const void *)SPAN_FIELD(copy, SK_COMMON_SPAN, sk, SK_NET), NET_NS_INUM);
	if (row->family == AF_INET6 && FIELD_OFFSET(SK_V6_RCV_SADDR) >= 0 && FIELD_OFFSET(SK_V6_DADDR) >= 0 &&
	    FIELD_OFFSET(SK_V6_RCV_SADDR) + 16 <= SK_COMMON_SPAN && FIELD_OFFSET(SK_V6_DADDR) + 16 <= SK_COMMON_SPAN) {
		__builtin_memcpy(row->saddr, copy + FIELD_OFFSET(SK_V6_RCV_SADDR), 16);
		__builtin_memcpy(row->daddr, copy + FIELD_OFFSET(SK_V6_DADDR), 16);
	} else {
		*(u32 *)row->saddr = SPAN_FIELD(copy, SK_COMMON_SPAN, sk, SK_RCV_SADDR);
		*(u32 *)row->daddr = SPAN_FIELD(copy, SK_COMMON_SPAN, sk, SK_DADDR);
	}
}

#define RELABEL_EVERY 64 /* events of a socket or task between two refreshes of its label */

/* --summary: count the event in the maps instead of sending it. */
static __always_inline void summarize(struct cpu_state *cpu, const void *sk, u32 probe_id, u64 func_ip,
				      u64 duration_ns, bool at_return)
{
#ifdef KPROBES
	u64 zero_count = 0;
	u64 *count = summary_counts.lookup_or_try_init(&func_ip, &zero_count);
#else
	u32 probe_key = probe_id;
	u64 *count = summary_counts.lookup(&probe_key);
#endif
	if (count)
		__sync_fetch_and_add(count, 1);
#ifdef OUTPUT_RETURN
	struct latency_summary *latency = summary_latency.lookup(&probe_id);

	if (latency && at_return) {
		__sync_fetch_and_add(&latency->total_ns, duration_ns);
		if (duration_ns > latency->max_ns)
			latency->max_ns = duration_ns;
		__sync_fetch_and_add(&latency->buckets[log2_bucket(duration_ns) & (LATENCY_BUCKETS - 1)], 1);
	}
#endif
	u64 sock_key = (u64)sk;
	struct sock_summary *sock = summary_socks.lookup(&sock_key);

	if (!sock) {
		struct sock_summary fresh = {};

		label_sock(&fresh, sk);
		summary_socks.update(&sock_key, &fresh);
		sock = summary_socks.lookup(&sock_key);
	} else if (sock->count % RELABEL_EVERY == 0) {
		label_sock(sock, sk);
	}
	if (sock)
		__sync_fetch_and_add(&sock->count, 1);

	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct task_summary *task = summary_tasks.lookup(&tgid);

	if (!task) {
		struct task_summary fresh = {};

		bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
		summary_tasks.update(&tgid, &fresh);
		task = summary_tasks.lookup(&tgid);
	} else if (task->count % RELABEL_EVERY == 0) {
		bpf_get_current_comm(task->comm, sizeof(task->comm)); /* a task may exec another program */
	}
	if (task)
		__sync_fetch_and_add(&task->count, 1);
	COUNT(cpu, at_return ? COUNTER_RETURN_EMITTED : COUNTER_EMITTED);
}
#endif

/* A wanted socket at a function's entry (or a tracepoint), in nesting level
 * `level`: emit the event, count it in the summary, or remember the call. */
static __always_inline
void handle(void *ctx, struct cpu_state *cpu, u32 level, const void *sk, u32 probe_id, u64 func_ip)
{
#if defined(OUTPUT_RETURN)
	struct call_key key = {.pid_tgid = bpf_get_current_pid_tgid(), .probe_id = probe_id};
	struct call call = {.sk = (u64)sk, .ts_ns = bpf_ktime_get_ns()};

	if (calls.update(&key, &call) != 0)
		COUNT(cpu, COUNTER_CALLS_FULL);
	else
		COUNT(cpu, COUNTER_EMITTED);
#elif defined(OUTPUT_SUMMARY)
	summarize(cpu, sk, probe_id, func_ip, 0, false);
#else
	emit_event(ctx, cpu, level, sk, probe_id, func_ip, 0, 0, 0, false);
#endif
}

/* ---- Entry points -------------------------------------------------------- */

/* Take this CPU's next nesting level; false (the run counted) when all are in use. */
static __always_inline bool enter_level(struct cpu_state *cpu, u32 *level, u32 nested_counter)
{
	*level = cpu->nesting;
	if (*level >= MAX_NESTING) {
		COUNT(cpu, nested_counter);
		return false;
	}
	cpu->nesting = *level + 1;
	return true;
}

#if defined(RAW_TRACEPOINTS) || defined(KPROBES)
/*
 * Raw tracepoints and classic kprobes have many entry points: each filters
 * inline, then hands a wanted socket to the one shared handler with a tail
 * call, so the event-building code is compiled once whatever the number of
 * entries.
 */
static __always_inline int enter(void *ctx, u32 probe_id, bool is_kprobe, u64 arg, u32 arg_kind)
{
	struct cpu_state *cpu = this_cpu();
	const void *sk;
	u32 level;

	if (!cpu)
		return 0;
	sk = admit(ctx, cpu, arg, arg_kind, probe_id);
	if (!sk || !enter_level(cpu, &level, COUNTER_NESTED))
		return 0;
	cpu->pending[level & (MAX_NESTING - 1)].sk = (u64)sk;
	cpu->pending[level & (MAX_NESTING - 1)].func_ip = is_kprobe ? entry_ip(ctx) : 0;
	cpu->pending[level & (MAX_NESTING - 1)].probe_id = probe_id;
	/* The handler gives the level back; it returns here only if the tail call failed. */
	handlers.call(ctx, 0);
	cpu->nesting = level;
	COUNT(cpu, COUNTER_TAIL_CALL);
	return 0;
}

/* The tail-call target: handles the newest pending socket of this CPU. */
int SHARED_HANDLER_NAME(void *ctx)
{
	struct cpu_state *cpu = this_cpu();
	u32 level;

	if (!cpu || cpu->nesting == 0)
		return 0;
	level = (cpu->nesting - 1) & (MAX_NESTING - 1);
	handle(ctx, cpu, level, (const void *)cpu->pending[level].sk, cpu->pending[level].probe_id,
	       cpu->pending[level].func_ip);
	cpu->nesting = level;
	return 0;
}
#endif

#ifdef EMPTY_ENTRIES
#define ENTER(ctx, probe_id, is_kprobe, arg, arg_kind) 0
#else
#define ENTER(ctx, probe_id, is_kprobe, arg, arg_kind) enter(ctx, probe_id, is_kprobe, arg, arg_kind)
#endif

/* An entry point defined by a macro. BCC finds a program by the section it put
 * it in, and BCC before 0.19 puts only the first of the functions that one
 * macro expansion defines there: so each says its section itself. */
#define ENTRY_POINT(name) __attribute__((section(".bpf.fn." #name))) int name

/* One function per raw tracepoint: the program is the only way to know which fired. */
#define RAWTP(name, probe_id, arg_index, arg_kind)                                    \
	ENTRY_POINT(name)(struct bpf_raw_tracepoint_args *ctx)                        \
	{                                                                             \
		return ENTER(ctx, probe_id, false, ctx->args[arg_index], arg_kind);   \
	}
#ifdef RAW_TRACEPOINTS
RAW_TRACEPOINTS
#endif

/* A register of struct pt_regs, read directly from the context. */
#define REG(ctx, offset) (*(const u64 *)((const char *)(ctx) + (offset)))

/* The traced function's address (classic kprobes), or where the breakpoint left the ip. */
static __always_inline u64 entry_ip(void *ctx)
{
#if defined(HAVE_GET_FUNC_IP)
	return st_get_func_ip(ctx);
#elif defined(REG_IP)
	return REG(ctx, REG_IP);
#else
	return 0;
#endif
}

/* Classic kprobes: one function per argument position and kind, attached to
 * many functions; user space names the function from its address. */
#define KPROBE(name, arg_index, arg_kind)                                                     \
	ENTRY_POINT(name)(void *ctx)                                                          \
	{                                                                                     \
		return ENTER(ctx, NO_PROBE_ID, true, REG(ctx, REG_ARG##arg_index), arg_kind);          \
	}
#ifdef KPROBES
KPROBES
#endif

#ifdef KPROBE_MULTI
#define COOKIE(cookie, part) (((cookie) >> COOKIE_##part##_SHIFT) & COOKIE_##part##_MASK)

/* A context register read at a constant offset, written as the instruction
 * itself: as C, clang merges the loads of a switch into one at a computed
 * offset, which the verifier refuses for the context. */
static __always_inline u64 ctx_reg(void *ctx, const int offset)
{
	u64 value;

	asm volatile("%[value] = *(u64 *)(%[ctx] + %[offset])"
		     : [value] "=r"(value)
		     : [ctx] "r"(ctx), [offset] "i"(offset));
	return value;
}

/* The cookie's argument register. */
static __always_inline u64 cookie_arg(void *ctx, u64 cookie)
{
	switch (COOKIE(cookie, ARG_INDEX)) {
	case 0:
		return ctx_reg(ctx, REG_ARG0);
	case 1:
		return ctx_reg(ctx, REG_ARG1);
	case 2:
		return ctx_reg(ctx, REG_ARG2);
	case 3:
		return ctx_reg(ctx, REG_ARG3);
	default:
		return ctx_reg(ctx, REG_ARG4);
	}
}

/* kprobe-multi: one function for every traced function; the cookie says which
 * function it is and where its socket argument is. It runs the handler itself
 * (a kprobe-multi program may not tail-call a kprobe one). */
int KPROBE_MULTI_ENTRY_NAME(void *ctx)
{
#ifdef EMPTY_ENTRIES
	return 0;
#else
	struct cpu_state *cpu = this_cpu();
	u64 cookie = st_get_attach_cookie(ctx);
	u32 probe_id = COOKIE(cookie, PROBE_ID);
	const void *sk;
	u32 level;

	if (!cpu)
		return 0;
	sk = admit(ctx, cpu, cookie_arg(ctx, cookie), COOKIE(cookie, ARG_KIND), probe_id);
	if (!sk)
		return 0;
#ifdef OUTPUT_RETURN
	handle(ctx, cpu, 0, sk, probe_id, 0); /* remembers the call: no nesting level needed */
#else
	if (!enter_level(cpu, &level, COUNTER_NESTED))
		return 0;
	handle(ctx, cpu, level, sk, probe_id, 0);
	cpu->nesting = level;
#endif
	return 0;
#endif
}

#ifdef OUTPUT_RETURN
/* The return register as its BTF type says: extended from its size, bool as 0 or 1. */
static __always_inline s64 return_value(void *ctx, u64 cookie)
{
	u64 raw = REG(ctx, REG_RET);
	u32 kind = COOKIE(cookie, RET_KIND);
	u32 bits = COOKIE(cookie, RET_SIZE) * 8;

	if (kind == RET_VOID)
		return 0;
	if (kind == RET_POINTER || bits >= 64 || bits == 0)
		return raw;
	if (kind == RET_SIGNED)
		return (s64)(raw << (64 - bits)) >> (64 - bits);
	raw &= (1ULL << bits) - 1;
	return kind == RET_BOOL ? raw != 0 : raw;
}

/* A negative errno from an integer, or an ERR_PTR. */
static __always_inline bool is_error(s64 value, u64 cookie)
{
	u32 kind = COOKIE(cookie, RET_KIND);

	return (kind == RET_SIGNED || kind == RET_POINTER) && value < 0 && value >= -MAX_ERRNO;
}

/* The same functions' returns: the call remembered at entry, now complete. */
int KPROBE_MULTI_RETURN_NAME(void *ctx)
{
	struct cpu_state *cpu = this_cpu();
	u64 cookie = st_get_attach_cookie(ctx);
	struct call_key key = {.pid_tgid = bpf_get_current_pid_tgid(), .probe_id = COOKIE(cookie, PROBE_ID)};
	struct call *call;
	struct call done;
	s64 retval;
	u32 level;

	if (!cpu)
		return 0;
	call = calls.lookup(&key);
	if (!call) {
		COUNT(cpu, COUNTER_RETURN_UNMATCHED);
		return 0;
	}
	done = *call;
	calls.delete(&key);
	retval = return_value(ctx, cookie);
	if (!tracing()) {
		COUNT(cpu, COUNTER_RETURN_NOT_TRACING);
		return 0;
	}
#ifdef FILTER_ERRORS
	if (!is_error(retval, cookie)) {
		COUNT(cpu, COUNTER_RETURN_NOT_ERROR);
		return 0;
	}
#endif
#ifdef OUTPUT_SUMMARY
	summarize(cpu, (const void *)done.sk, key.probe_id, 0, bpf_ktime_get_ns() - done.ts_ns, true);
#else
	if (!enter_level(cpu, &level, COUNTER_RETURN_NESTED))
		return 0;
	emit_event(ctx, cpu, level, (const void *)done.sk, key.probe_id, 0, retval,
		   bpf_ktime_get_ns() - done.ts_ns, EVENT_RETURN, true);
	cpu->nesting = level;
#endif
	return 0;
}
#endif
#endif
#endif /* !MAPS_ONLY */
