/* SPDX-License-Identifier: GPL-2.0 */
/* socketrace stand-in: BCC's ring buffer macro sizes maps in pages;
 * program.py passes the running system's page size. */
#ifndef SOCKETRACE_PAGE_SIZE
#define SOCKETRACE_PAGE_SIZE 4096
#endif
#define PAGE_SIZE SOCKETRACE_PAGE_SIZE
