/* Compiled by tests/unit/test_btf.py with clang -g -target bpf into a small BTF blob. */
struct sock_common {
	union {
		unsigned long long skc_addrpair;
		struct {
			unsigned int skc_daddr;
			unsigned int skc_rcv_saddr;
		};
	};
	unsigned short skc_family;
	unsigned char skc_reuse : 4;
	unsigned char skc_reuseport : 1;
	unsigned char skc_ipv6only : 1;
};
struct sock {
	struct sock_common __sk_common;
	unsigned int sk_mark;
	struct {
		int len;
	} sk_backlog;
};
struct socket {
	short type;
	struct sock *sk;
};
struct other {
	int x;
};
typedef struct sock sock_t;

int takes_sock(struct sock *sk) { return 0; }
int takes_const_sock_second(int flags, const struct sock *sk) { return flags; }
int takes_typedef_third(int a, long b, sock_t *sk) { return a; }
int takes_socket(struct socket *sock) { return 0; }
int takes_both(struct socket *sock, struct sock *sk) { return 0; }
int takes_other(struct other *o) { return 0; }

typedef void (*btf_trace_sock_event)(void *data, int reason, struct sock *sk);
btf_trace_sock_event keep_tracepoint_type;
