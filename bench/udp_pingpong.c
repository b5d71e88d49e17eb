// SPDX-License-Identifier: Apache-2.0
/*
 * The benchmarks' workload: one thread, a UDP ping-pong on loopback (one
 * 64-byte send() and one recv() per iteration) for the given seconds; prints
 * the iterations done. Written in C so the cost of the probes, not of an
 * interpreter, sets the pace.
 *
 *   udp_pingpong SECONDS [PORT]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 3;
	int port = argc > 2 ? atoi(argv[2]) : 0;
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(addr);
	int server = socket(AF_INET, SOCK_DGRAM, 0), client = socket(AF_INET, SOCK_DGRAM, 0);
	char buffer[64] = {0};
	unsigned long iterations = 0;
	double end;

	addr.sin_port = htons(port);
	if (server < 0 || client < 0 || bind(server, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    getsockname(server, (struct sockaddr *)&addr, &len) < 0 ||
	    connect(client, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("udp_pingpong");
		return 1;
	}
	end = now() + seconds;
	while (now() < end) {
		for (int i = 0; i < 64; i++) {
			if (send(client, buffer, sizeof(buffer), 0) != sizeof(buffer) ||
			    recv(server, buffer, sizeof(buffer), 0) != sizeof(buffer)) {
				perror("udp_pingpong");
				return 1;
			}
		}
		iterations += 64;
	}
	printf("%lu\n", iterations);
	return 0;
}
